package pgserver

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// newServer is an initialised, not yet started server in a temp dir, stopped and removed by
// t.Cleanup; it skips t without PostgreSQL.
func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	dir, err := MakeTempDir("ferry-pgserver-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.Dir = dir
	s, err := New(cfg)
	if errors.Is(err, ErrNoBinaries) {
		t.Skipf("no PostgreSQL installed: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	if err := s.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStartStop: a server initialised with a pg_hba.conf of the caller's starts with the caller's
// settings, refuses a second Start while it runs, stops, and starts again on its data.
func TestStartStop(t *testing.T) {
	ctx := context.Background()
	s := newServer(t, Config{Superuser: "boss", MaxConnections: 7, Settings: []string{"application_name=pgserver_test"}})
	if err := s.WriteDataFile("pg_hba.conf", []byte("local all boss trust\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("second Start: %v, want it is running", err)
	}
	c, err := pgconn.Connect(ctx, s.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Exec(ctx, "SHOW max_connections; SHOW fsync").ReadAll()
	c.Close(ctx)
	if err != nil || string(res[0].Rows[0][0]) != "7" || string(res[1].Rows[0][0]) != "off" {
		t.Fatalf("settings: %v, %v", res, err)
	}
	if err := s.Exec(ctx, "CREATE DATABASE kept"); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.SocketPath()); !os.IsNotExist(err) {
		t.Fatalf("socket after Stop: %v", err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := pgconn.Connect(ctx, s.ConnString("kept")); err != nil {
		t.Fatalf("the data did not survive a restart: %v", err)
	} else {
		c.Close(ctx)
	}
	// The caller's pg_hba.conf is the one in force: another role is refused.
	if err := s.Exec(ctx, "CREATE ROLE other LOGIN"); err != nil {
		t.Fatal(err)
	}
	_, err = pgconn.Connect(ctx, strings.Replace(s.ConnString("postgres"), "user=boss", "user=other", 1))
	if err == nil || !strings.Contains(err.Error(), "pg_hba.conf") {
		t.Fatalf("login of a role pg_hba.conf does not list: %v", err)
	}
}

// TestNewChecksConfig: a missing directory or superuser and a bin dir without postgres are refused.
func TestNewChecksConfig(t *testing.T) {
	for _, cfg := range []Config{{Superuser: "x"}, {Dir: t.TempDir()}, {Dir: t.TempDir(), Superuser: "x", BinDir: t.TempDir()}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
