package store_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// backends lists a fresh database URL per backend: a SQLite file and a PostgreSQL database.
func backends(t *testing.T) map[string]func(t *testing.T) string {
	return map[string]func(t *testing.T) string{
		"sqlite":   func(t *testing.T) string { return "sqlite:" + filepath.Join(t.TempDir(), "ferry.db") },
		"postgres": func(t *testing.T) string { return pgtest.Start(t) },
	}
}

func open(t *testing.T, url string) *store.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := store.Open(ctx, store.Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

var testMigration = store.Migration{
	Name:     "test",
	SQLite:   []string{`CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, parent INTEGER REFERENCES t(id))`, `CREATE TABLE u (x INTEGER)`},
	Postgres: []string{`CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE, parent BIGINT REFERENCES t(id))`, `CREATE TABLE u (x BIGINT)`},
}

func TestErrorsByCode(t *testing.T) {
	for name, newURL := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			db := open(t, newURL(t))
			if err := db.Migrate(ctx, testMigration); err != nil {
				t.Fatal(err)
			}
			ins := db.Rebind(`INSERT INTO t(id, name, parent) VALUES(?, ?, ?)`)
			if _, err := db.ExecContext(ctx, ins, 1, "a", nil); err != nil {
				t.Fatal(err)
			}
			_, err := db.ExecContext(ctx, ins, 2, "a", nil)
			if !store.IsConflict(err) || store.IsForeignKeyViolation(err) {
				t.Errorf("same name: %v: IsConflict %v, want true", err, store.IsConflict(err))
			}
			_, err = db.ExecContext(ctx, ins, 1, "b", nil)
			if !store.IsConflict(err) {
				t.Errorf("same primary key: %v: IsConflict false, want true", err)
			}
			_, err = db.ExecContext(ctx, ins, 3, "c", 99)
			if !store.IsForeignKeyViolation(err) || store.IsConflict(err) {
				t.Errorf("missing parent: %v: IsForeignKeyViolation false, want true", err)
			}
			if store.IsConflict(errors.New("UNIQUE constraint failed")) {
				t.Error("IsConflict matched message text")
			}
		})
	}
}

func TestRebind(t *testing.T) {
	cases := []struct{ in, want string }{
		{`SELECT ? , ?`, `SELECT $1 , $2`},
		{`SELECT '?' , "a?" , ? -- why?` + "\n" + `, ?`, `SELECT '?' , "a?" , $1 -- why?` + "\n" + `, $2`},
		{`no placeholders`, `no placeholders`},
	}
	db := open(t, pgtest.Start(t))
	for _, c := range cases {
		if got := db.Rebind(c.in); got != c.want {
			t.Errorf("Rebind(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	sq := open(t, filepath.Join(t.TempDir(), "x.db"))
	if got := sq.Rebind(`SELECT ?`); got != `SELECT ?` || sq.Dialect() != store.SQLite {
		t.Errorf("SQLite Rebind = %q, dialect %s", got, sq.Dialect())
	}
}

func TestMigrateRefusesNewerSchema(t *testing.T) {
	for name, newURL := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			url := newURL(t)
			db := open(t, url)
			if err := db.Migrate(ctx, testMigration); err != nil {
				t.Fatal(err)
			}
			if v, err := db.SchemaVersion(ctx, "test"); err != nil || v != 2 {
				t.Fatalf("version %d, %v; want 2", v, err)
			}
			// Run again: nothing to do.
			if err := db.Migrate(ctx, testMigration); err != nil {
				t.Fatal(err)
			}
			older := testMigration
			older.SQLite, older.Postgres = older.SQLite[:1], older.Postgres[:1]
			err := db.Migrate(ctx, older)
			if err == nil || !strings.Contains(err.Error(), "newer than this ferry-node knows") {
				t.Fatalf("older binary: %v, want a refusal", err)
			}
		})
	}
}

// Three nodes start at once on an empty PostgreSQL database: all succeed and each step runs once
// (a second run of CREATE TABLE would fail).
func TestMigrateConcurrentNodes(t *testing.T) {
	url := pgtest.Start(t)
	ctx := context.Background()
	dbs := []*store.DB{open(t, url), open(t, url), open(t, url)}
	var wg sync.WaitGroup
	errs := make([]error, len(dbs))
	for i, db := range dbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = db.Migrate(ctx, testMigration)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d: %v", i, err)
		}
	}
	var n int
	if err := dbs[0].QueryRowContext(ctx, `SELECT count(*) FROM schema_versions WHERE name = 'test' AND version = 2`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("schema_versions rows %d, %v; want 1", n, err)
	}
}

func TestMigrateAdoptsLegacyVersion(t *testing.T) {
	ctx := context.Background()
	db := open(t, filepath.Join(t.TempDir(), "ferry.db"))
	// An earlier release made table t and recorded version 1 in a table of its own.
	if _, err := db.ExecContext(ctx, testMigration.SQLite[0]+`; CREATE TABLE legacy_version (v INTEGER); INSERT INTO legacy_version VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	m := testMigration
	m.Adopt = func(ctx context.Context, tx *sql.Tx) (int, error) {
		var v int
		err := tx.QueryRowContext(ctx, `SELECT v FROM legacy_version`).Scan(&v)
		return v, err
	}
	if err := db.Migrate(ctx, m); err != nil {
		t.Fatal(err)
	}
	if v, err := db.SchemaVersion(ctx, "test"); err != nil || v != 2 {
		t.Fatalf("version %d, %v; want 2", v, err)
	}
}

// A change committed through one node wakes a watcher on another; a rolled-back one does not.
func TestWatchAcrossHandles(t *testing.T) {
	for name, newURL := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			url := newURL(t)
			a := open(t, url)
			b := a
			if name == "postgres" {
				b = open(t, url)
			}
			if err := a.Migrate(ctx, testMigration); err != nil {
				t.Fatal(err)
			}
			ch, err := b.Watch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			write := func(id int, commit bool) {
				t.Helper()
				tx, err := a.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.ExecContext(ctx, a.Rebind(`INSERT INTO t(id, name) VALUES(?, ?)`), id, "n"+string(rune('a'+id))); err != nil {
					t.Fatal(err)
				}
				if err := tx.Notify(ctx); err != nil {
					t.Fatal(err)
				}
				if commit {
					err = tx.Commit()
				} else {
					err = tx.Rollback()
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			write(1, false)
			write(2, true)
			select {
			case <-ch:
			case <-ctx.Done():
				t.Fatal("no wake-up after a committed change")
			}
			// The rolled-back write sent nothing: after the one wake-up the channel stays empty
			// until the next change.
			select {
			case <-ch:
				t.Fatal("a second wake-up for one committed change (the rolled-back one announced itself)")
			default:
			}
			write(3, true)
			select {
			case <-ch:
			case <-ctx.Done():
				t.Fatal("no wake-up after the second change")
			}
		})
	}
}

// The watcher's connection is killed: it reconnects and signals once, then hears changes again.
func TestWatchReconnects(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := pgtest.Start(t)
	db := open(t, url)
	if err := db.Migrate(ctx, testMigration); err != nil {
		t.Fatal(err)
	}
	ch, err := db.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatal("no signal after the feed's connection was lost")
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Notify(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatal("no wake-up after reconnecting")
	}
	db.Close()
	select {
	case _, ok := <-ch:
		for ok {
			_, ok = <-ch
		}
	case <-ctx.Done():
		t.Fatal("the feed's channel stayed open after Close")
	}
}

// A token login never goes to a server that is not verified, nor to a host the node does not allow.
func TestTokenLoginNeedsVerifiedTLS(t *testing.T) {
	token := func(context.Context) (string, error) { return "secret-token", nil }
	cases := []struct {
		name, url string
		allow     func(string) error
		want      string
	}{
		{"require", "postgres://mi@db.example.com/catalog?sslmode=require", nil, "verify-full"},
		{"verify-ca", "postgres://mi@db.example.com/catalog?sslmode=verify-ca", nil, "verify-full"},
		{"disable", "host=db.example.com user=mi dbname=catalog sslmode=disable", nil, "verify-full"},
		{"prefer", "postgresql://mi@db.example.com/catalog?sslmode=prefer", nil, "verify-full"},
		{"not allowed", "postgres://mi@db.example.com/catalog", func(h string) error { return errors.New("not in allowed_server_hosts") }, "allowed_server_hosts"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			db, err := store.Open(ctx, store.Options{URL: c.url, Password: token, AllowHost: c.allow})
			if err == nil {
				db.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "secret-token") {
				t.Fatalf("error %q, want one naming %s (and never the token)", err, c.want)
			}
		})
	}
}

func TestSQLiteFileIsPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry.db")
	db := open(t, "sqlite:"+path)
	if _, err := db.ExecContext(context.Background(), `CREATE TABLE x (a INTEGER)`); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
}

// TestIsUnavailable tells a database that went away from one that refused a statement.
func TestIsUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := pgtest.NewServer(t)
	name, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	db := open(t, srv.URL(name))
	_, err = db.ExecContext(ctx, `SELECT * FROM no_such_table`)
	if err == nil || store.IsUnavailable(err) {
		t.Fatalf("a refused statement: %v, IsUnavailable %v", err, store.IsUnavailable(err))
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	_, err = db.ExecContext(ctx, `SELECT 1`)
	if err == nil || !store.IsUnavailable(err) {
		t.Fatalf("a stopped server: %v, IsUnavailable false", err)
	}
	_, err = db.ExecContext(ctx, `SELECT 1`)
	if !store.IsUnavailable(err) {
		t.Fatalf("a stopped server, next try: %v, IsUnavailable false", err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `SELECT 1`); err != nil {
		t.Fatalf("after the server returned: %v", err)
	}
}
