package pgtest_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/ferryhq/ferry/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestStartGivesFreshDatabases: two Starts give two empty databases on one server, each reachable
// with its URL; a server of a test's own stops and starts again with its data.
func TestStartGivesFreshDatabases(t *testing.T) {
	ctx := context.Background()
	a, b := pgtest.Start(t), pgtest.Start(t)
	if a == b {
		t.Fatalf("one database twice: %s", a)
	}
	for _, url := range []string{a, b} {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("tables in a fresh database: %d, %v", n, err)
		}
		c.Close(ctx)
	}
	s := pgtest.NewServer(t)
	if err := s.Exec(ctx, `CREATE DATABASE kept`); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, `SELECT 1`); err == nil {
		t.Fatal("a stopped server answered")
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := pgx.Connect(ctx, s.URL("kept"))
	if err != nil {
		t.Fatalf("the database did not survive a restart: %v", err)
	}
	c.Close(ctx)
}
