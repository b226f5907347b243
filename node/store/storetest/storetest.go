// Package storetest runs a test against every store backend: a SQLite file and a PostgreSQL
// database (internal/pgtest), so that the catalog and the audit log pass one suite on both.
package storetest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node/store"
)

// Each runs f as the subtests "sqlite" and "postgres", each with an empty database of its own. The
// PostgreSQL subtest skips when no PostgreSQL is installed.
func Each(t *testing.T, f func(t *testing.T, db *store.DB)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) { f(t, SQLite(t)) })
	t.Run("postgres", func(t *testing.T) { f(t, Postgres(t)) })
}

// SQLite opens an empty SQLite database in t's temp dir, closed by t.Cleanup.
func SQLite(t testing.TB) *store.DB {
	t.Helper()
	return Open(t, "sqlite:"+filepath.Join(t.TempDir(), "ferry.db"))
}

// Postgres opens an empty PostgreSQL database (pgtest.Start), closed by t.Cleanup.
func Postgres(t testing.TB) *store.DB {
	t.Helper()
	return Open(t, pgtest.Start(t))
}

// Open opens url, closed by t.Cleanup.
func Open(t testing.TB, url string) *store.DB {
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
