package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/store"
)

// runNode runs ferry-node with args and returns its output and error.
func runNode(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	root := rootCmd()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// newSQLiteCatalog makes a node's SQLite catalog with one user and returns its path.
func newSQLiteCatalog(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ferry.db")
	db, err := store.Open(ctx, store.Options{URL: "sqlite:" + path})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.AddUser(ctx, "admin", true); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCatalogMigrateBadArguments: each wrong source or target gets an error saying what to give,
// before anything is written.
func TestCatalogMigrateBadArguments(t *testing.T) {
	src := newSQLiteCatalog(t)
	missing := filepath.Join(t.TempDir(), "nothing.db")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no target", []string{"--from", "sqlite:" + src}, "--to is required"},
		{"SQLite target", []string{"--from", "sqlite:" + src, "--to", "sqlite:/tmp/x.db"}, "give a PostgreSQL URL"},
		{"no source", []string{"--to", "postgres://h.postgres.database.azure.com/ferry"}, "--from sqlite:PATH or --state DIR is required"},
		{"source without sqlite:", []string{"--from", src, "--to", "postgres://h.postgres.database.azure.com/ferry"}, "give the node's SQLite catalog as sqlite:PATH"},
		{"missing source", []string{"--from", "sqlite:" + missing, "--to", "postgres://h.postgres.database.azure.com/ferry"}, "no such file"},
		{"malformed target", []string{"--from", "sqlite:" + src, "--to", "postgres://h:notaport/ferry"}, "target"},
		{"target host not allowed for a token", []string{"--from", "sqlite:" + src, "--to", "postgres://ferry@db.example.com/ferry"}, "db.example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runNode(t, append([]string{"catalog", "migrate"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want one containing %q", err, tc.want)
			}
		})
	}
}

// TestCatalogMigrateCommand: the command moves a catalog, prints the counts per table and the next
// step; run again, it is refused as the target is not empty.
func TestCatalogMigrateCommand(t *testing.T) {
	srv := pgtest.NewServer(t)
	name, err := srv.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	src := newSQLiteCatalog(t)
	// A password in the URL (the test server trusts the socket, so any works) is never printed.
	withPassword := strings.Replace(srv.URL(name), pgtest.Superuser+"@", pgtest.Superuser+":s3cret-pw@", 1)
	out, err := runNode(t, "catalog", "migrate", "--from", "sqlite:"+src, "--to", withPassword)
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	for _, want := range []string{"users", "audit_queries", `"catalog_url"`, "--join"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "s3cret-pw") {
		t.Errorf("output shows the URL's password:\n%s", out)
	}
	if _, err := runNode(t, "catalog", "migrate", "--from", "sqlite:"+src, "--to", srv.URL(name)); err == nil || !strings.Contains(err.Error(), "not empty") || !strings.Contains(err.Error(), "--into-existing") {
		t.Fatalf("second run: %v; want it refused as not empty", err)
	}
}

// TestCatalogMigrateWithManagedIdentity: with --state, the command reads the node's config (IMDS,
// CA files, host overrides, allowed hosts) and its SQLite catalog, and logs in to the target on the
// (emulated) Azure Database for PostgreSQL server with the --catalog-client-id identity's token,
// which the server validates: the node's first admin arrives there.
func TestCatalogMigrateWithManagedIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	emu := testenv.StartCatalogDB(t)
	state := filepath.Join(t.TempDir(), "node")
	if _, err := node.Init(ctx, state, demo.NodeConfig(emu), "admin"); err != nil {
		t.Fatal(err)
	}
	out, err := runNode(t, "catalog", "migrate", "--state", state, "--to", testenv.CatalogURL(emu), "--catalog-client-id", demo.CatalogIdentity.ClientID)
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	if !testenv.TokenIssued(emu, demo.CatalogIdentity.ClientID) {
		t.Error("no token was asked for the catalog identity")
	}
	if got := testenv.CatalogQuery(t, ctx, emu, `SELECT name FROM users WHERE admin`); len(got) != 1 || got[0] != "admin" {
		t.Fatalf("the node's admins in the target: %q", got)
	}
}
