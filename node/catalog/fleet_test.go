package catalog

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/store/storetest"
	"github.com/ferryhq/ferry/resource"
)

// fleet opens n catalogs on one fresh PostgreSQL database, each with a pool of its own (n nodes),
// opening them at once as nodes starting together would.
func fleet(t *testing.T, n int) []*Catalog {
	t.Helper()
	url := pgtest.Start(t)
	cs := make([]*Catalog, n)
	errs := make([]error, n)
	dbs := make([]*store.DB, n)
	for i := range dbs {
		dbs[i] = storetest.Open(t, url)
	}
	var wg sync.WaitGroup
	for i := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs[i], errs[i] = Open(context.Background(), dbs[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node %d: open catalog: %v", i, err)
		}
	}
	return cs
}

// TestFleetOpensAtOnce: three nodes open the same empty PostgreSQL catalog at once; all succeed and
// the schema is applied once.
func TestFleetOpensAtOnce(t *testing.T) {
	cs := fleet(t, 3)
	ctx := context.Background()
	for i, c := range cs {
		if v, err := c.DB().SchemaVersion(ctx, "catalog"); err != nil || v != len(migration(store.Postgres).Postgres) {
			t.Fatalf("node %d: schema version %d, %v", i, v, err)
		}
	}
}

// TestFleetConcurrentAdds: 20 adds (resources with the same and different names, DNS names and
// addresses, users, device enrollments with the same key and a shared token) spread over three
// nodes at once: exactly the unique ones succeed, the others are refused with ErrConflict (or
// ErrTokenUsed for a token's second use), and no two resources or devices share an address.
func TestFleetConcurrentAdds(t *testing.T) {
	cs := fleet(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cs[0].AddUser(ctx, "devowner", false); err != nil {
		t.Fatal(err)
	}
	tokens := make([]string, 5)
	for i := range tokens {
		var err error
		if tokens[i], err = cs[0].CreateEnrollToken(ctx, "devowner", time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	withLoopback := func(name, addr string) resource.Resource {
		r := res(name)
		r.LoopbackAddress = addr
		return r
	}
	withSubdomain := func(name, sub string) resource.Resource {
		r := res(name)
		r.Subdomain = sub
		return r
	}
	type op struct {
		group string // ops of one group: exactly one succeeds
		do    func(c *Catalog) error
	}
	addRes := func(r resource.Resource) func(c *Catalog) error {
		return func(c *Catalog) error { _, err := c.AddResource(ctx, r); return err }
	}
	addUser := func(name string) func(c *Catalog) error {
		return func(c *Catalog) error { return c.AddUser(ctx, name, false) }
	}
	enroll := func(token, key string) func(c *Catalog) error {
		return func(c *Catalog) error { _, _, err := c.Enroll(ctx, token, key, "laptop", nil); return err }
	}
	ops := []op{
		{"res r1", addRes(res("r1"))}, {"res r1", addRes(res("r1"))}, {"res r1", addRes(res("r1"))},
		{"res r2", addRes(res("r2"))}, {"res r3", addRes(res("r3"))}, {"res r4", addRes(res("r4"))},
		{"loopback 127.0.0.5", addRes(withLoopback("r5", "127.0.0.5:15432"))}, {"loopback 127.0.0.5", addRes(withLoopback("r6", "127.0.0.5:15432"))},
		{"subdomain orders", addRes(withSubdomain("r7", "orders"))}, {"subdomain orders", addRes(withSubdomain("r8", "orders"))},
		{"user alice", addUser("alice")}, {"user alice", addUser("alice")}, {"user alice", addUser("alice")},
		{"user bob", addUser("bob")},
		{"key k1", enroll(tokens[0], "k1")}, {"key k1", enroll(tokens[1], "k1")},
		{"key k2", enroll(tokens[2], "k2")}, {"key k3", enroll(tokens[3], "k3")},
		{"token 4", enroll(tokens[4], "k4")}, {"token 4", enroll(tokens[4], "k5")},
	}
	if len(ops) != 20 {
		t.Fatalf("%d ops", len(ops))
	}
	errs := make([]error, len(ops))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, o := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = o.do(cs[i%len(cs)])
		}()
	}
	close(start)
	wg.Wait()
	won := map[string]int{}
	for i, o := range ops {
		switch err := errs[i]; {
		case err == nil:
			won[o.group]++
		case o.group == "token 4" && errors.Is(err, ErrTokenUsed):
		case errors.Is(err, ErrConflict):
		default:
			t.Errorf("op %d (%s) on node %d: %v, want success or ErrConflict", i, o.group, i%len(cs), err)
		}
	}
	for _, o := range ops {
		if won[o.group] != 1 {
			t.Errorf("%s: %d succeeded, want exactly 1", o.group, won[o.group])
		}
	}
	rs, err := cs[1].Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 6 {
		t.Errorf("%d resources stored, want 6: %+v", len(rs), rs)
	}
	vn, lb := map[string]string{}, map[string]string{}
	for _, r := range rs {
		if other, ok := vn[r.VNAddress]; ok {
			t.Errorf("resources %s and %s share VN address %s", other, r.Name, r.VNAddress)
		}
		if other, ok := lb[r.LoopbackAddress]; ok {
			t.Errorf("resources %s and %s share loopback address %s", other, r.Name, r.LoopbackAddress)
		}
		vn[r.VNAddress], lb[r.LoopbackAddress] = r.Name, r.Name
	}
	ds, err := cs[2].Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 4 {
		t.Errorf("%d devices stored, want 4: %+v", len(ds), ds)
	}
	addrs := map[string]string{}
	for _, d := range ds {
		if other, ok := addrs[d.Address.String()]; ok {
			t.Errorf("devices %s and %s share address %s", other, d.PublicKey, d.Address)
		}
		addrs[d.Address.String()] = d.PublicKey
	}
}

// TestWatchSeesEveryAuthorisationChange: each write that changes what authorisation depends on,
// made through node A, wakes a Watch on node B (on SQLite, one process: the same handle).
func TestWatchSeesEveryAuthorisationChange(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		a := openCatalogOn(t, db)
		b := a
		if db.Dialect() == store.Postgres {
			b = openCatalogOn(t, storetest.Open(t, pgURL(t, db)))
		}
		ch, err := b.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var secret string
		var storeID string
		writes := []struct {
			name string
			do   func() error
		}{
			{"add user", func() error { return a.AddUser(ctx, "alice", false) }},
			{"add role", func() error { return a.AddRole(ctx, "dev") }},
			{"grant", func() error { return a.GrantToRole(ctx, "dev", "r1") }},
			{"assign role", func() error { return a.AssignRole(ctx, "dev", "alice") }},
			{"add resource", func() error { _, err := a.AddResource(ctx, res("r1")); return err }},
			{"update resource", func() error {
				_, _, err := a.UpdateResource(ctx, "r1", func(r *resource.Resource) { r.Database = "other" })
				return err
			}},
			{"enroll", func() error {
				var err error
				if secret, err = a.CreateEnrollToken(ctx, "alice", time.Hour); err != nil {
					return err
				}
				_, _, err = a.Enroll(ctx, secret, "key1", "laptop", nil)
				return err
			}},
			{"suspend", func() error { return a.SetSuspended(ctx, "alice", true) }},
			{"reinstate", func() error { return a.SetSuspended(ctx, "alice", false) }},
			{"revoke", func() error { return a.RevokeFromRole(ctx, "dev", "r1") }},
			{"unassign role", func() error { return a.UnassignRole(ctx, "dev", "alice") }},
			{"delete device", func() error { return a.DeleteDevice(ctx, "key1") }},
			{"delete resource", func() error { return a.DeleteResource(ctx, "r1") }},
			{"settings", func() error {
				_, err := a.UpdateSettings(ctx, Settings{ConnectivityMode: resource.ModeVirtualNetworking})
				return err
			}},
			{"add secret store", func() error {
				s, err := a.AddSecretStore(ctx, resource.SecretStore{Name: "kv", Type: resource.SecretStoreTypeAzureKeyVault, VaultURI: "https://kvtest.vault.azure.net/"})
				storeID = s.ID
				return err
			}},
			{"delete secret store", func() error { _, err := a.DeleteSecretStore(ctx, storeID); return err }},
			{"add proxy cluster", func() error { _, err := a.AddCluster(ctx, "prod", ""); return err }},
			{"delete proxy cluster", func() error { _, err := a.DeleteCluster(ctx, "prod"); return err }},
			{"delete role", func() error { return a.DeleteRole(ctx, "dev") }},
			{"delete user", func() error { return a.DeleteUser(ctx, "alice") }},
		}
		for _, w := range writes {
			// Drain a wake-up left by an earlier write (settings may write more than once).
			select {
			case <-ch:
			default:
			}
			if err := w.do(); err != nil {
				t.Fatalf("%s: %v", w.name, err)
			}
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no wake-up on the other node within 10 s", w.name)
			}
		}
	})
}

// pgURL is the URL a storetest PostgreSQL handle was opened with, for a second node.
func pgURL(t *testing.T, db *store.DB) string {
	t.Helper()
	cfg := db.Pool().Config().ConnConfig
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", cfg.Host, cfg.Port, cfg.User, cfg.Database)
}

// TestOpensEarlierSQLiteFile: a catalog file of an earlier release (schema version 2 in its own
// catalog_schema table) opens with its data and is brought to this binary's version; one of a
// newer release (a version past this binary's steps) is refused.
func TestOpensEarlierSQLiteFile(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		version int
		wantErr bool
	}{{2, false}, {len(migration(store.SQLite).SQLite) + 1, true}} {
		t.Run(fmt.Sprint("version ", tc.version), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ferry.db")
			raw, err := store.OpenSQLite(path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = raw.ExecContext(ctx, schema+secretStoresSchema+`CREATE TABLE catalog_schema (version INTEGER NOT NULL);
				INSERT INTO users(name, admin, created_at) VALUES('alice', 1, 1700000000);`)
			if err == nil {
				_, err = raw.ExecContext(ctx, `INSERT INTO catalog_schema(version) VALUES(?)`, tc.version)
			}
			raw.Close()
			if err != nil {
				t.Fatal(err)
			}
			db := storetest.Open(t, path)
			c, err := Open(ctx, db)
			if tc.wantErr {
				if err == nil {
					t.Fatal("opened a catalog newer than this binary")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			u, err := c.UserInfo(ctx, "alice")
			if err != nil || !u.Admin || u.CreatedAt.Unix() != 1700000000 {
				t.Fatalf("alice after the upgrade: %+v, %v", u, err)
			}
			if v, err := db.SchemaVersion(ctx, "catalog"); err != nil || v != len(migration(store.SQLite).SQLite) {
				t.Fatalf("schema version %d, %v; want %d", v, err, len(migration(store.SQLite).SQLite))
			}
		})
	}
}
