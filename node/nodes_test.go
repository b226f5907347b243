package node_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/store"
)

// TestNodeRegistersItself: a started node's record is in the catalog, online, with its WireGuard
// key and endpoint, its enrollment URL and certificate fingerprint (those tokens pin) and its
// version; a clean stop shows it offline at once; a restart keeps its ID and is online again.
func TestNodeRegistersItself(t *testing.T) {
	b := startBareNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if !api.ValidNodeID(b.ID()) {
		t.Fatalf("node ID %q", b.ID())
	}
	rec, err := b.Catalog().Node(ctx, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := api.ParseEnrollToken(b.token(t, node.DefaultAdmin))
	if err != nil {
		t.Fatal(err)
	}
	_, enrollPort, _ := net.SplitHostPort(b.EnrollAddr().String())
	for what, pair := range map[string][2]string{
		"state":          {rec.State(time.Now()), api.NodeOnline},
		"kind":           {rec.Kind, api.NodeKindGateway},
		"public key":     {rec.WireGuardPublicKey, b.PublicKey().String()},
		"endpoint":       {rec.WireGuardEndpoint, "127.0.0.1:" + strconv.Itoa(int(b.WireGuardPort()))},
		"enroll URL":     {rec.EnrollURL, "https://127.0.0.1:" + enrollPort},
		"enroll URL tok": {rec.EnrollURL, tok.URL},
		"fingerprint":    {rec.EnrollCertSHA256, tok.CertSHA256},
	} {
		if pair[0] != pair[1] {
			t.Errorf("record's %s = %q, want %q", what, pair[0], pair[1])
		}
	}
	if rec.Version == "" || rec.Name == "" || api.ValidateNodeName(rec.Name) != nil {
		t.Errorf("record's version %q, name %q", rec.Version, rec.Name)
	}
	id := b.ID()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile(filepath.Join(b.dir, "node.json"))
	if err != nil || !strings.Contains(string(js), id) {
		t.Fatalf("node.json: %s, %v", js, err)
	}
	db, err := store.Open(ctx, store.Options{URL: "sqlite:" + filepath.Join(b.dir, "ferry.db")})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err = cat.Node(ctx, id); err != nil || rec.Online(time.Now()) || rec.StoppedAt.IsZero() {
		t.Fatalf("record after a clean stop %+v, %v; want offline", rec, err)
	}
	db.Close()
	b.start(t)
	if b.ID() != id {
		t.Fatalf("ID after restart %s, want %s", b.ID(), id)
	}
	if rec, err = b.Catalog().Node(ctx, id); err != nil || !rec.Online(time.Now()) {
		t.Fatalf("record after restart %+v, %v", rec, err)
	}
	if ns, err := b.Catalog().Nodes(ctx); err != nil || len(ns) != 1 {
		t.Fatalf("nodes after restart %+v, %v; want the one record", ns, err)
	}
}

// TestNodesAPI: the admin lists, shows, re-tags and deletes nodes; deleting the running node is
// refused (409) naming it; a device that is not an admin's gets 403 from every admin node route,
// yet reads the client node list (endpoint, key, tags, state), which holds nothing else.
func TestNodesAPI(t *testing.T) {
	b := startBareNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := loginDaemon(t, b.token(t, node.DefaultAdmin)).API()
	eng := loginDaemon(t, b.token(t, "engineer")).API()
	// A second node that stopped a minute ago, as another host's would be.
	k := newPublicKey(t)
	old := time.Now().Add(-time.Minute)
	gone, err := b.Catalog().RegisterNode(ctx, catalog.Node{ID: catalog.NewNodeID(), Name: "gw-old", Tags: map[string]string{"region": "northeurope"},
		WireGuardPublicKey: k.String(), WireGuardEndpoint: "gw-old.example:51820", EnrollURL: "https://gw-old.example:8443",
		EnrollCertSHA256: strings.Repeat("0f", 32), Version: "v0.9.0", StartedAt: old, LastHeartbeat: old})
	if err != nil {
		t.Fatal(err)
	}
	self, err := b.Catalog().Node(ctx, b.ID())
	if err != nil {
		t.Fatal(err)
	}

	ns, err := admin.Nodes(ctx)
	if err != nil || len(ns) != 2 {
		t.Fatalf("admin Nodes = %+v, %v", ns, err)
	}
	states := map[string]string{}
	for _, x := range ns {
		states[x.Name] = x.State
	}
	if states[self.Name] != api.NodeOnline || states["gw-old"] != api.NodeOffline {
		t.Fatalf("states %v", states)
	}
	x, err := admin.Node(ctx, "gw-old")
	if err != nil || x.ID != gone.ID || x.Version != "v0.9.0" || x.HeartbeatAgeSeconds < 59 || x.EnrollCertSHA256 == "" {
		t.Fatalf("admin Node(gw-old) = %+v, %v", x, err)
	}
	_, err = admin.Node(ctx, "nope")
	wantStatus(t, "show an unknown node", err, http.StatusNotFound, "nope")
	x, err = admin.UpdateNodeTags(ctx, self.ID, map[string]string{"region": "westeurope", "env": "prod"})
	if err != nil || api.FormatNodeTags(x.Tags) != "env=prod,region=westeurope" {
		t.Fatalf("UpdateNodeTags = %+v, %v", x, err)
	}
	_, err = admin.UpdateNodeTags(ctx, self.ID, map[string]string{"env": "pro d"})
	wantStatus(t, "bad tags", err, http.StatusBadRequest, "invalid")
	err = admin.DeleteNode(ctx, self.Name)
	wantStatus(t, "delete the running node", err, http.StatusConflict, "node "+self.Name+" is online (last heartbeat")

	// A non-admin device: 403 from every admin route, and it changed nothing.
	for what, call := range map[string]func() error{
		"list":   func() error { _, err := eng.Nodes(ctx); return err },
		"show":   func() error { _, err := eng.Node(ctx, "gw-old"); return err },
		"update": func() error { _, err := eng.UpdateNodeTags(ctx, "gw-old", map[string]string{"x": "y"}); return err },
		"delete": func() error { return eng.DeleteNode(ctx, "gw-old") },
	} {
		wantStatus(t, "non-admin "+what, call(), http.StatusForbidden, "not an administrator")
	}
	if x, err := b.Catalog().Node(ctx, "gw-old"); err != nil || api.FormatNodeTags(x.Tags) != "region=northeurope" {
		t.Fatalf("gw-old after the non-admin's calls = %+v, %v", x, err)
	}
	gw, err := eng.GatewayNodes(ctx)
	if err != nil || len(gw) != 2 {
		t.Fatalf("GatewayNodes = %+v, %v", gw, err)
	}
	for _, g := range gw {
		want := map[string]api.GatewayNode{
			self.Name: {ID: self.ID, Name: self.Name, WireGuardEndpoint: self.WireGuardEndpoint, WireGuardPublicKey: self.WireGuardPublicKey, State: api.NodeOnline},
			"gw-old":  {ID: gone.ID, Name: "gw-old", WireGuardEndpoint: "gw-old.example:51820", WireGuardPublicKey: k.String(), State: api.NodeOffline},
		}[g.Name]
		tags := api.FormatNodeTags(g.Tags)
		g.Tags = nil
		if g.ID != want.ID || g.Name != want.Name || g.WireGuardEndpoint != want.WireGuardEndpoint || g.WireGuardPublicKey != want.WireGuardPublicKey ||
			g.State != want.State || (g.Name == "gw-old" && tags != "region=northeurope") {
			t.Errorf("client node %+v, want %+v", g, want)
		}
	}

	if err := admin.DeleteNode(ctx, "gw-old"); err != nil {
		t.Fatalf("delete the stopped node: %v", err)
	}
	err = admin.DeleteNode(ctx, "gw-old")
	wantStatus(t, "delete twice", err, http.StatusNotFound, "gw-old")
	acts, err := admin.Activities(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range acts {
		seen[a.Action+" "+a.Target] = true
	}
	if !seen["node.delete gw-old"] || !seen["node.update "+self.Name] {
		t.Errorf("activities lack the node changes: %+v", acts)
	}

	// A suspended user's device, and then a deleted user's, learn nothing of the nodes: the node
	// drops them as WireGuard peers (and the API would answer 403).
	for _, step := range []struct {
		what   string
		change func() error
	}{
		{"a suspended user's device", func() error { return admin.SuspendUser(ctx, "engineer", true) }},
		{"a deleted user's device", func() error { return admin.DeleteUser(ctx, "engineer") }},
	} {
		what := step.what
		if err := step.change(); err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		gw, err := eng.GatewayNodes(short)
		cancel()
		if err == nil {
			t.Errorf("%s read the node list: %+v", what, gw)
		}
	}
}

// TestInitJoin: `init --join` makes a node of an existing deployment: keys, certificate, ID and
// config, no catalog file and no user of its own; both nodes run on the one catalog and list each
// other online, the joined one with its name and tags. Joining a catalog without a deployment, or
// one that is not there, fails leaving no files; a plain init on a catalog that holds a deployment
// is refused pointing at --join; a joining node whose name is taken does not start.
func TestInitJoin(t *testing.T) {
	a := startBareNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	shared := "sqlite:" + filepath.Join(a.dir, "ferry.db")
	cfg := a.cfg
	cfg.CatalogURL, cfg.Name, cfg.Tags = shared, "gw-b", map[string]string{"region": "westeurope", "env": "prod"}
	dirB := filepath.Join(t.TempDir(), "b")
	if err := node.Join(ctx, dirB, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dirB, "ferry.db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("join made a catalog file of its own: %v", err)
	}
	users, err := a.Catalog().Users(ctx)
	if err != nil || len(users) != 1 {
		t.Fatalf("users after join %+v, %v; want the first admin only", users, err)
	}
	saved, err := node.LoadConfig(filepath.Join(dirB, node.ConfigFile))
	if err != nil || saved.CatalogURL != shared || saved.Name != "gw-b" {
		t.Fatalf("joined config %+v, %v", saved, err)
	}
	nb := &bareNode{dir: dirB, cfg: saved, log: &syncBuffer{}}
	nb.start(t)
	ns, err := a.Catalog().Nodes(ctx)
	if err != nil || len(ns) != 2 {
		t.Fatalf("nodes %+v, %v", ns, err)
	}
	for _, x := range ns {
		if !x.Online(time.Now()) {
			t.Errorf("node %s is %s", x.Name, x.State(time.Now()))
		}
		if x.ID == nb.ID() && (x.Name != "gw-b" || api.FormatNodeTags(x.Tags) != "env=prod,region=westeurope") {
			t.Errorf("joined node's record %+v", x)
		}
	}
	// An enrollment token from the joined node names the joined node and a user of the deployment.
	if _, err := nb.EnrollToken(ctx, node.DefaultAdmin); err != nil {
		t.Fatalf("token from the joined node: %v", err)
	}

	empty := filepath.Join(t.TempDir(), "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Another application's database: joining it must not write Ferry's schema into it.
	foreign := filepath.Join(t.TempDir(), "orders.db")
	fdb, err := store.Open(ctx, store.Options{URL: "sqlite:" + foreign})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fdb.ExecContext(ctx, `CREATE TABLE orders (id INTEGER PRIMARY KEY, users TEXT)`); err != nil {
		t.Fatal(err)
	}
	fdb.Close()
	for _, tc := range []struct {
		name, url string
		join      bool
		want      string
	}{
		{"join an empty catalog", "sqlite:" + empty, true, "holds no deployment yet"},
		{"join another application's database", "sqlite:" + foreign, true, "it is not a Ferry catalog; nothing was written to it"},
		{"join a missing catalog", "sqlite:" + filepath.Join(t.TempDir(), "none.db"), true, "no such file"},
		{"join without a URL", "", true, "give the catalog's URL"},
		{"join a relative path", "sqlite:ferry.db", true, "absolute path"},
		{"join an unknown scheme", "mysql://x/y", true, "use sqlite:"},
		{"init on a deployment", shared, false, "already holds a deployment; add this node to it with `ferry-node init --join " + shared},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := a.cfg
			c.CatalogURL, c.Name = tc.url, "gw-c"
			dir := filepath.Join(t.TempDir(), "c")
			var err error
			if tc.join {
				err = node.Join(ctx, dir, c)
			} else {
				_, err = node.Init(ctx, dir, c, node.DefaultAdmin)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("a failed init left %d files", len(entries))
			}
			for _, f := range []string{empty, foreign} {
				if path := strings.TrimPrefix(tc.url, "sqlite:"); path != f {
					continue
				}
				db, err := store.Open(ctx, store.Options{URL: tc.url})
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				var tables string
				if err := db.QueryRowContext(ctx, `SELECT coalesce(group_concat(name), '') FROM sqlite_master WHERE type = 'table'`).Scan(&tables); err != nil {
					t.Fatal(err)
				}
				if want := map[string]string{empty: "", foreign: "orders"}[f]; tables != want {
					t.Errorf("the failed join changed the database: tables %q, want %q", tables, want)
				}
			}
		})
	}

	// A joining node with the name of a running one does not start.
	c := cfg
	c.Name = a.cfgName(t)
	dirC := filepath.Join(t.TempDir(), "c")
	if err := node.Join(ctx, dirC, c); err != nil {
		t.Fatal(err)
	}
	if n, err := node.Start(ctx, dirC, c, nil); err == nil || !errors.Is(err, catalog.ErrConflict) || !strings.Contains(err.Error(), "is held by node "+a.ID()) {
		if n != nil {
			n.Close()
		}
		t.Fatalf("start with a taken name: %v", err)
	}
}

// TestNodeHeartbeat: a running node's heartbeat brings its record back online after it aged, and
// re-registers the node when its record was deleted while it looked offline.
func TestNodeHeartbeat(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := &bareNode{dir: filepath.Join(t.TempDir(), "node"), log: &syncBuffer{}, cfg: node.Config{
		PublicHost: "127.0.0.1", EnrollListen: "127.0.0.1:0", IMDSEndpoint: "http://127.0.0.1:9", DNSServer: "127.0.0.1:9",
		Name: "gw-beat", HeartbeatTestInterval: 50 * time.Millisecond,
	}}
	if _, err := node.Init(ctx, b.dir, b.cfg, node.DefaultAdmin); err != nil {
		t.Fatal(err)
	}
	b.start(t)
	cat := b.Catalog()
	old := time.Now().Add(-catalog.NodeOfflineAfter - time.Minute)
	if err := cat.Heartbeat(ctx, b.ID(), old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the heartbeat to bring the node back online", func() bool {
		x, err := cat.Node(ctx, b.ID())
		return err == nil && x.Online(time.Now())
	})
	// Deleted while it looked offline (the heartbeat may win the race: then try again).
	waitFor(t, "the node's record to be deleted while it looks offline", func() bool {
		if err := cat.Heartbeat(ctx, b.ID(), old); err != nil {
			return false
		}
		_, err := cat.DeleteNode(ctx, b.ID())
		return err == nil
	})
	waitFor(t, "the node to register again", func() bool {
		x, err := cat.Node(ctx, b.ID())
		return err == nil && x.Online(time.Now()) && x.Name == "gw-beat"
	})
}

// cfgName is the running node's name as registered.
func (b *bareNode) cfgName(t *testing.T) string {
	t.Helper()
	x, err := b.Catalog().Node(context.Background(), b.ID())
	if err != nil {
		t.Fatal(err)
	}
	return x.Name
}

// TestConfigTagsOnlyFirst: config.json's tags are a new node's first tags; after an admin changed
// them in the catalog, a restart keeps the catalog's and logs that config.json's do not apply.
func TestConfigTagsOnlyFirst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := &bareNode{dir: filepath.Join(t.TempDir(), "node"), log: &syncBuffer{}, cfg: node.Config{
		PublicHost: "127.0.0.1", EnrollListen: "127.0.0.1:0", IMDSEndpoint: "http://127.0.0.1:9", DNSServer: "127.0.0.1:9",
		Name: "gw-tags", Tags: map[string]string{"region": "westeurope"},
	}}
	if _, err := node.Init(ctx, b.dir, b.cfg, node.DefaultAdmin); err != nil {
		t.Fatal(err)
	}
	b.start(t)
	if strings.Contains(b.log.String(), "tags are not this node's tags") {
		t.Fatalf("first start warned about its own tags:\n%s", b.log.String())
	}
	if _, err := b.Catalog().UpdateNodeTags(ctx, "gw-tags", map[string]string{"region": "northeurope"}); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b.start(t)
	x, err := b.Catalog().Node(ctx, "gw-tags")
	if err != nil || api.FormatNodeTags(x.Tags) != "region=northeurope" {
		t.Fatalf("tags after restart %v, %v; want the catalog's", x.Tags, err)
	}
	if log := b.log.String(); !strings.Contains(log, "tags are not this node's tags") || !strings.Contains(log, "ferry admin nodes update gw-tags") {
		t.Errorf("no warning that config.json's tags do not apply:\n%s", log)
	}
}

// TestInitTakesCatalogURLFromEnvWithClientIDFlag: FERRY_NODE_CATALOG_URL applies to init when the
// flags set only the catalog's client ID, so init on a catalog that holds a deployment is refused
// (pointing at --join) rather than making a deployment of its own in the state directory.
func TestInitTakesCatalogURLFromEnvWithClientIDFlag(t *testing.T) {
	a := startBareNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t.Setenv("FERRY_NODE_CATALOG_URL", "sqlite:"+filepath.Join(a.dir, "ferry.db"))
	c := a.cfg
	c.Name, c.CatalogClientID = "gw-env", "11111111-2222-3333-4444-555555555555"
	dir := filepath.Join(t.TempDir(), "c")
	if _, err := node.Init(ctx, dir, c, node.DefaultAdmin); err == nil || !strings.Contains(err.Error(), "already holds a deployment") {
		t.Fatalf("init with the catalog URL in the environment: %v; want it refused as the catalog holds a deployment", err)
	}
}

// TestReRegisterKeepsCatalogTags: a node whose record was deleted while it looked offline registers
// again with the tags it last had in the catalog, not config.json's first ones: an admin who moved
// it out of an egress filter (`ferry admin nodes update --tags`) does not see it back in.
func TestReRegisterKeepsCatalogTags(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := &bareNode{dir: filepath.Join(t.TempDir(), "node"), log: &syncBuffer{}, cfg: node.Config{
		PublicHost: "127.0.0.1", EnrollListen: "127.0.0.1:0", IMDSEndpoint: "http://127.0.0.1:9", DNSServer: "127.0.0.1:9",
		Name: "gw-moved", Tags: map[string]string{"env": "prod"}, HeartbeatTestInterval: 50 * time.Millisecond,
	}}
	if _, err := node.Init(ctx, b.dir, b.cfg, node.DefaultAdmin); err != nil {
		t.Fatal(err)
	}
	b.start(t)
	cat := b.Catalog()
	if _, err := cat.UpdateNodeTags(ctx, "gw-moved", map[string]string{"env": "dev"}); err != nil {
		t.Fatal(err)
	}
	// A heartbeat after the change (the node saw its record since).
	old := time.Now().Add(-catalog.NodeOfflineAfter - time.Minute)
	if err := cat.Heartbeat(ctx, b.ID(), old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a heartbeat after the tag change", func() bool {
		x, err := cat.Node(ctx, b.ID())
		return err == nil && x.Online(time.Now())
	})
	waitFor(t, "the node's record to be deleted while it looks offline", func() bool {
		if err := cat.Heartbeat(ctx, b.ID(), old); err != nil {
			return false
		}
		_, err := cat.DeleteNode(ctx, b.ID())
		return err == nil
	})
	var x catalog.Node
	waitFor(t, "the node to register again", func() bool {
		var err error
		x, err = cat.Node(ctx, b.ID())
		return err == nil && x.Online(time.Now())
	})
	if got := api.FormatNodeTags(x.Tags); got != "env=dev" {
		t.Fatalf("tags after registering again: %s, want the catalog's last env=dev (config.json says env=prod)", got)
	}
}
