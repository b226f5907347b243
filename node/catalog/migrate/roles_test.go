package migrate_test

import (
	"context"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/catalog/migrate"
	"github.com/ferryhq/ferry/node/store"
)

// asRole is u with its user replaced by role.
func asRole(t *testing.T, u, role string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	p.User = url.User(role)
	return p.String()
}

// TestOneRolePerNode is the README's fleet setup ("Run a fleet in Azure"): one login role per
// node, each a member of the NOLOGIN role ferry_fleet that owns the catalog database and is each
// node role's default role (ALTER ROLE … SET role). The migration, run as node-1, leaves tables
// owned by ferry_fleet; node-2 then brings the schema forward, changes a table's shape as a later
// release's migration step would, and reads and writes the catalog and the audit log.
func TestOneRolePerNode(t *testing.T) {
	srv := pgtest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, q := range []string{
		`CREATE ROLE ferry_fleet NOLOGIN`,
		`CREATE ROLE "node-1" LOGIN`, `CREATE ROLE "node-2" LOGIN`,
		`GRANT ferry_fleet TO "node-1"`, `GRANT ferry_fleet TO "node-2"`,
		`ALTER ROLE "node-1" SET role = 'ferry_fleet'`, `ALTER ROLE "node-2" SET role = 'ferry_fleet'`,
		`CREATE DATABASE ferrycatalog OWNER ferry_fleet`,
	} {
		if err := srv.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	base := srv.URL("ferrycatalog")

	src, err := store.Open(ctx, store.Options{URL: "sqlite:" + filepath.Join(t.TempDir(), "ferry.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cat, err := catalog.Open(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.AddUser(ctx, "admin", true); err != nil {
		t.Fatal(err)
	}
	n1, err := store.Open(ctx, store.Options{URL: asRole(t, base, "node-1")})
	if err != nil {
		t.Fatal(err)
	}
	defer n1.Close()
	if _, err := migrate.Run(ctx, src, n1, migrate.Options{}); err != nil {
		t.Fatalf("migrate as node-1: %v", err)
	}
	var owner string
	if err := n1.QueryRowContext(ctx, `SELECT tableowner FROM pg_tables WHERE tablename = 'users'`).Scan(&owner); err != nil || owner != "ferry_fleet" {
		t.Fatalf("owner of users: %q, %v; want ferry_fleet", owner, err)
	}

	n2, err := store.Open(ctx, store.Options{URL: asRole(t, base, "node-2")})
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	cat2, err := catalog.Open(ctx, n2)
	if err != nil {
		t.Fatalf("node-2 opens the catalog: %v", err)
	}
	if err := cat2.AddUser(ctx, "bob", false); err != nil {
		t.Fatalf("node-2 writes the catalog: %v", err)
	}
	if us, err := cat2.Users(ctx); err != nil || len(us) != 2 {
		t.Fatalf("node-2 reads users: %+v, %v", us, err)
	}
	if _, err := n2.ExecContext(ctx, `ALTER TABLE users ADD COLUMN later_release TEXT`); err != nil {
		t.Fatalf("node-2 changes a table node-1 made, as a later release's migration would: %v", err)
	}
	l, err := audit.OpenStore(ctx, n2, audit.Options{})
	if err != nil {
		t.Fatalf("node-2 opens the audit log: %v", err)
	}
	defer l.Close()
	if _, err := l.StartConnection(ctx, audit.Connection{User: "bob", Resource: "r", ClientAddr: "100.64.0.9:1", Database: "d"}); err != nil {
		t.Fatalf("node-2 writes the audit log: %v", err)
	}
}
