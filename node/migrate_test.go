package node_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/catalog/migrate"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/resource"
)

// freeUDPPort returns a UDP port free at the time of the call, so a restarted node keeps its
// WireGuard endpoint (the enrolled client's config names it).
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// catalogSnapshot is what a node's catalog and audit hold, as compared across the move.
type catalogSnapshot struct {
	users, devices, resources, roles, stores, tokens, nodes, activity, settings []string
	connections, queries                                                        []string
}

func snapshot(t *testing.T, ctx context.Context, db *store.DB) catalogSnapshot {
	t.Helper()
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	var s catalogSnapshot
	users, err := cat.Users(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range users {
		s.users = append(s.users, strings.Join([]string{u.Name, boolStr(u.Admin), boolStr(u.Suspended)}, " "))
	}
	devs, err := cat.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		s.devices = append(s.devices, d.PublicKey+" "+d.User+" "+d.Address.String()+" "+d.Name)
	}
	rs, err := cat.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		s.resources = append(s.resources, r.Name+" "+r.ID+" "+r.VNAddress+" "+r.LoopbackAddress)
	}
	roles, err := cat.Roles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range roles {
		g := make([]string, len(r.Grants))
		for i, x := range r.Grants {
			g[i] = string(x)
		}
		s.roles = append(s.roles, r.Name+" "+strings.Join(g, ",")+" "+strings.Join(r.Users, ","))
	}
	sts, err := cat.SecretStores(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range sts {
		s.stores = append(s.stores, st.ID+" "+st.Name+" "+st.VaultURI)
	}
	toks, err := cat.PendingEnrollTokens(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range toks {
		s.tokens = append(s.tokens, tk.ID+" "+tk.User)
	}
	ns, err := cat.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		s.nodes = append(s.nodes, n.ID+" "+n.Name+" "+n.WireGuardPublicKey)
	}
	acts, err := cat.Activities(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range acts {
		s.activity = append(s.activity, a.Time.String()+" "+a.Actor+" "+a.Action+" "+a.Target+" "+a.Detail)
	}
	for _, k := range []string{catalog.SettingVNSubnet, catalog.SettingDNSDomain, "migrate_test"} {
		v, err := cat.Setting(ctx, k, "-")
		if err != nil {
			t.Fatal(err)
		}
		s.settings = append(s.settings, k+"="+v)
	}
	l, err := audit.OpenStore(ctx, db, audit.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	conns, err := l.Connections(ctx, audit.ConnectionFilter{})
	if err != nil {
		t.Fatal(err)
	}
	recs := map[int64]string{}
	for _, c := range conns {
		recs[c.ID] = c.RecordID
		s.connections = append(s.connections, c.RecordID+" "+c.User+" "+c.Resource+" "+c.Start.String()+" "+c.End.String()+" "+c.Outcome)
	}
	qs, err := l.Queries(ctx, audit.QueryFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		s.queries = append(s.queries, q.RecordID+" conn="+recs[q.ConnectionID]+" "+q.SQL+" "+q.Time.String())
	}
	for _, l := range [][]string{s.users, s.devices, s.resources, s.roles, s.stores, s.tokens, s.nodes, s.activity, s.connections, s.queries} {
		slices.Sort(l)
	}
	return s
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func (s catalogSnapshot) compare(t *testing.T, o catalogSnapshot) {
	t.Helper()
	for what, p := range map[string][2][]string{
		"users": {s.users, o.users}, "devices": {s.devices, o.devices}, "resources": {s.resources, o.resources},
		"roles": {s.roles, o.roles}, "secret stores": {s.stores, o.stores}, "enrollment tokens": {s.tokens, o.tokens},
		"nodes": {s.nodes, o.nodes}, "admin activity": {s.activity, o.activity}, "settings": {s.settings, o.settings},
		"audit connections": {s.connections, o.connections}, "audit queries": {s.queries, o.queries},
	} {
		if !slices.Equal(p[0], p[1]) {
			t.Errorf("%s differ:\n source %q\n target %q", what, p[0], p[1])
		}
	}
}

// TestCatalogMigrate: a single node's SQLite catalog with every kind of row, built through the node
// and its catalog, and audit records (one from before record IDs) moves into a PostgreSQL catalog:
// refused while the node runs; then every table arrives as it was (same resource IDs and addresses,
// devices, audit record IDs); a second run is refused as the target is not empty, and with
// --into-existing writes nothing twice; the node started on the target serves the device enrolled
// before (its key is the same) and lists the same users and resources.
func TestCatalogMigrate(t *testing.T) {
	srv := pgtest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b := &bareNode{dir: filepath.Join(t.TempDir(), "node"), log: &syncBuffer{}, cfg: node.Config{
		PublicHost:    "127.0.0.1",
		EnrollListen:  "127.0.0.1:0",
		WireGuardPort: freeUDPPort(t),
		IMDSEndpoint:  "http://127.0.0.1:9",
		DNSServer:     "127.0.0.1:9",
	}}
	if _, err := node.Init(ctx, b.dir, b.cfg, node.DefaultAdmin); err != nil {
		t.Fatal(err)
	}
	b.start(t)
	admin := loginDaemon(t, b.token(t, node.DefaultAdmin))
	if _, err := enroll(t, b.token(t, "alice"), newPublicKey(t), "alice's laptop"); err != nil {
		t.Fatal(err)
	}
	cat := b.Catalog()
	r := resource.New("pg-prod")
	r.Hostname, r.Database, r.Username = "mypg.postgres.database.azure.com", "production", "mi_user"
	if _, err := cat.AddResource(ctx, r); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"add a secret store", func() error {
			_, err := cat.AddSecretStore(ctx, resource.SecretStore{Name: "kv", Type: resource.SecretStoreTypeAzureKeyVault, VaultURI: "https://kvtest.vault.azure.net/"})
			return err
		}},
		{"add bob", func() error { return cat.AddUser(ctx, "bob", false) }},
		{"suspend bob", func() error { return cat.SetSuspended(ctx, "bob", true) }},
		{"add a role", func() error { return cat.AddRole(ctx, "readers") }},
		{"grant", func() error { return cat.GrantToRole(ctx, "readers", catalog.Grant("pg-prod")) }},
		{"assign", func() error { return cat.AssignRole(ctx, "readers", "alice") }},
		{"setting", func() error { return cat.SetSetting(ctx, "migrate_test", "kept") }},
		{"activity", func() error {
			return cat.RecordActivity(ctx, catalog.Activity{Time: time.Unix(1700000000, 0), Actor: "admin", Action: "test.migrate", Target: "everything"})
		}},
		{"pending token", func() error { _, err := cat.CreateEnrollToken(ctx, "bob", time.Hour); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
	}
	l := b.Audit()
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	cid, err := l.StartConnection(ctx, audit.Connection{Start: start, User: "alice", Resource: "pg-prod", ClientAddr: "100.64.0.5:40000", Database: "production"})
	if err != nil {
		t.Fatal(err)
	}
	rec := l.Recorder(cid, nil)
	for _, q := range []string{"SELECT 1", "SELECT 'bad \x00 byte'", "BEGIN"} {
		if err := rec.Record(ctx, audit.Query{Time: start, User: "alice", Resource: "pg-prod", SQL: q}); err != nil {
			t.Fatal(err)
		}
	}
	rec.Close(ctx)
	if err := l.EndConnection(ctx, cid, start.Add(time.Second), audit.ConnectionEnd{Outcome: audit.OutcomeOK}); err != nil {
		t.Fatal(err)
	}

	target, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	targetURL := srv.URL(target)
	run := func(opts migrate.Options) (migrate.Result, error) {
		t.Helper()
		src, err := node.OpenCatalogURL(ctx, "sqlite:"+filepath.Join(b.dir, "ferry.db"), node.Config{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		dst, err := node.OpenCatalogURL(ctx, targetURL, node.Config{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer dst.Close()
		return migrate.Run(ctx, src, dst, opts)
	}

	// While the node runs: refused, naming it.
	if _, err := run(migrate.Options{}); !errors.Is(err, migrate.ErrSourceInUse) || !strings.Contains(err.Error(), b.ID()) || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("migrate while the node runs: %v; want it refused naming the node", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// A connection and its query from before record IDs (record_id NULL), as older releases left them.
	src, err := store.Open(ctx, store.Options{URL: "sqlite:" + filepath.Join(b.dir, "ferry.db")})
	if err != nil {
		t.Fatal(err)
	}
	res, err := src.ExecContext(ctx, `INSERT INTO audit_connections(start_time, user_name, resource, client_addr, database) VALUES('2020-01-01T00:00:00.000000000Z', 'alice', 'pg-prod', '100.64.0.5:1', 'production')`)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := res.LastInsertId()
	if _, err := src.ExecContext(ctx, `INSERT INTO audit_queries(connection_id, time, user_name, resource, sql) VALUES(?, '2020-01-01T00:00:01.000000000Z', 'alice', 'pg-prod', 'SELECT legacy')`, old); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, ctx, src)
	src.Close()

	got, err := run(migrate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"users": 3, "roles": 1, "role_grants": 1, "user_roles": 1, "devices": 2, "resources": 1, "secret_stores": 1, "nodes": 1, "audit_connections": 2, "audit_queries": 4}
	for _, c := range got.Counts {
		if n, ok := want[c.Table]; ok && c.Copied != n || c.Skipped != 0 {
			t.Errorf("%s: moved %d, skipped %d; want %d moved", c.Table, c.Copied, c.Skipped, n)
		}
		if (c.Table == "enroll_tokens" || c.Table == "admin_activity" || c.Table == "settings") && c.Copied < 1 {
			t.Errorf("%s: moved %d", c.Table, c.Copied)
		}
	}

	dst, err := store.Open(ctx, store.Options{URL: targetURL})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	after := snapshot(t, ctx, dst)
	// NUL is not text on PostgreSQL: the audit log writes U+FFFD there, and so does the move.
	for i, q := range before.queries {
		before.queries[i] = strings.ReplaceAll(q, "\x00", "\uFFFD")
	}
	// Records from before record IDs have none in the source and a derived one ("m-…") in the target.
	legacyID := regexp.MustCompile(`m-[0-9a-f]{32}`)
	moved := after
	moved.connections, moved.queries = nil, nil
	for _, c := range after.connections {
		moved.connections = append(moved.connections, legacyID.ReplaceAllString(c, ""))
	}
	for _, q := range after.queries {
		moved.queries = append(moved.queries, legacyID.ReplaceAllString(q, ""))
	}
	slices.Sort(moved.connections)
	slices.Sort(moved.queries)
	before.compare(t, moved)
	var legacy string
	if err := dst.QueryRowContext(ctx, `SELECT record_id FROM audit_queries WHERE sql = 'SELECT legacy'`).Scan(&legacy); err != nil || !strings.HasPrefix(legacy, "m-") {
		t.Errorf("record ID of a query from before record IDs: %q, %v", legacy, err)
	}

	// Again: refused (not empty), naming what the target holds; merged: nothing written twice.
	if _, err := run(migrate.Options{}); !errors.Is(err, migrate.ErrNotEmpty) || !strings.Contains(err.Error(), "users: 3") || !strings.Contains(err.Error(), "--into-existing") {
		t.Fatalf("second run: %v; want it refused as not empty", err)
	}
	got, err = run(migrate.Options{IntoExisting: true})
	if err != nil {
		t.Fatalf("second run --into-existing: %v", err)
	}
	for _, c := range got.Counts {
		if c.Copied != 0 {
			t.Errorf("second run --into-existing moved %d rows of %s; want none", c.Copied, c.Table)
		}
	}
	snapshot(t, ctx, dst).compare(t, after)

	// The node on the target: the same device still connects (its key is the same), sees the same
	// resources and users.
	b.cfg.CatalogURL = targetURL
	b.start(t)
	var me error
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		var m interface{}
		m, me = admin.API().Me(cctx)
		ccancel()
		if me == nil {
			_ = m
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if me != nil {
		t.Fatalf("the device enrolled before the move, through the node on the target: %v", me)
	}
	rs, err := admin.API().Resources(ctx)
	if err != nil || len(rs) != 1 || rs[0].Name != "pg-prod" {
		t.Fatalf("resources through the node on the target: %+v, %v", rs, err)
	}
	if b.Catalog().DB().Dialect() != store.Postgres {
		t.Fatal("the restarted node is not on the PostgreSQL catalog")
	}
}

// TestCatalogMigrateIntoExistingRefusesClashes: merging into a deployment whose catalog has a
// resource of the same name (other content) and a user of the same name with other flags is
// refused, naming both, and moves nothing.
func TestCatalogMigrateIntoExistingRefusesClashes(t *testing.T) {
	srv := pgtest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	src, err := store.Open(ctx, store.Options{URL: "sqlite:" + filepath.Join(dir, "ferry.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	name, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := store.Open(ctx, store.Options{URL: srv.URL(name)})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	for i, db := range []*store.DB{src, dst} {
		cat, err := catalog.Open(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		r := resource.New("pg-prod")
		r.Hostname, r.Database, r.Username = "mypg.postgres.database.azure.com", "production", "mi_user"
		if _, err := cat.AddResource(ctx, r); err != nil {
			t.Fatal(err)
		}
		if err := cat.AddUser(ctx, "carol", i == 0); err != nil {
			t.Fatal(err)
		}
		// The same role on both sides, made at other times: no clash.
		if _, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO roles(name, created_at) VALUES('ops', ?)`), 1000+i); err != nil {
			t.Fatal(err)
		}
		if err := cat.AddUser(ctx, "only-"+string(rune('a'+i)), false); err != nil {
			t.Fatal(err)
		}
	}
	_, err = migrate.Run(ctx, src, dst, migrate.Options{IntoExisting: true})
	if !errors.Is(err, migrate.ErrConflict) || !strings.Contains(err.Error(), `resources "pg-prod"`) || !strings.Contains(err.Error(), `users "carol": the target's differs in admin`) {
		t.Fatalf("merge with clashes: %v; want it refused naming the resource and the user", err)
	}
	if strings.Contains(err.Error(), `roles "ops"`) {
		t.Errorf("a role made at another time on each side is named as a clash: %v", err)
	}
	var n int
	if err := dst.QueryRowContext(ctx, `SELECT count(*) FROM users WHERE name = 'only-a'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a refused merge moved rows: %d, %v", n, err)
	}
}
