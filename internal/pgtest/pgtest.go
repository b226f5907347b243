// Package pgtest runs throwaway PostgreSQL servers from the installed binaries for tests: Start
// gives a test a fresh database on a server shared by the test binary, NewServer a server of its
// own (to stop and start again). Servers listen on a Unix socket only, in a temp dir, with trust
// authentication for the bootstrap superuser; under root they run as the postgres (or nobody)
// account, since PostgreSQL refuses to run as root. Without PostgreSQL binaries the test is skipped
// with a message saying what to install.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/internal/pgserver"
)

// Superuser is the bootstrap superuser of the servers.
const Superuser = "ferry"

// ErrNoBinaries is returned (wrapped) when no PostgreSQL server binaries are installed.
var ErrNoBinaries = pgserver.ErrNoBinaries

// Server is a running PostgreSQL server (internal/pgserver) in a temp dir of its own.
type Server struct {
	*pgserver.Server
	dir     string
	version int // server_version_num
	dbs     atomic.Int64
}

// FindBinDir returns the directory holding initdb and postgres (pgserver.FindBinDir). The error
// wraps ErrNoBinaries.
func FindBinDir() (string, error) { return pgserver.FindBinDir() }

// StartServer runs initdb in a new temp dir and starts the server. Stop it with Close.
func StartServer(ctx context.Context) (*Server, error) {
	if err := supported(); err != nil {
		return nil, err
	}
	dir, err := pgserver.MakeTempDir("ferry-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	srv, err := pgserver.New(pgserver.Config{Dir: dir, Superuser: Superuser, MaxConnections: 200})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{Server: srv, dir: dir}
	if err := srv.Init(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	if err := srv.Start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := s.readVersion(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	return s, nil
}

func (s *Server) readVersion(ctx context.Context) error {
	c, err := pgconn.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, "SHOW server_version_num").ReadAll()
	if err != nil {
		return err
	}
	if len(res) == 1 && len(res[0].Rows) == 1 {
		s.version, _ = strconv.Atoi(string(res[0].Rows[0][0]))
	}
	return nil
}

// Close stops the server and removes its files.
func (s *Server) Close() error {
	err := s.Stop()
	if rerr := os.RemoveAll(s.dir); err == nil {
		err = rerr
	}
	return err
}

// URL is a postgres:// URL for database as the superuser over the Unix socket.
func (s *Server) URL(database string) string {
	q := url.Values{"host": {s.SocketDir()}, "port": {strconv.Itoa(s.Port())}, "sslmode": {"disable"}, "connect_timeout": {"10"}}
	return (&url.URL{Scheme: "postgres", User: url.User(Superuser), Path: "/" + database, RawQuery: q.Encode()}).String()
}

// Exec runs sql as the superuser in the postgres database; the error quotes sql.
func (s *Server) Exec(ctx context.Context, sql string) error {
	if err := s.Server.Exec(ctx, sql); err != nil {
		return fmt.Errorf("run %q: %w", sql, err)
	}
	return nil
}

// NewDatabase creates an empty database and returns its name.
func (s *Server) NewDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("test_%d_%d", os.Getpid(), s.dbs.Add(1))
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if s.version >= 150000 {
		sql += " STRATEGY FILE_COPY" // faster than WAL_LOG for an empty template
	}
	if err := s.Exec(ctx, sql); err != nil {
		return "", fmt.Errorf("create database: %w", err)
	}
	return name, nil
}

// DropDatabase drops a database, ending its sessions first.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	return s.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

// shared is the server Start hands out databases of: one per test binary, started by the first
// Start, stopped by Main (or, without Main, killed with the test process).
var shared struct {
	mu  sync.Mutex
	srv *Server
	err error
}

// Start returns the URL of a fresh, empty database (as the superuser, over the Unix socket) on the
// test binary's shared server, dropped by t.Cleanup. It skips t when no PostgreSQL is installed.
func Start(t testing.TB) string {
	t.Helper()
	shared.mu.Lock()
	if shared.srv == nil && shared.err == nil {
		shared.srv, shared.err = StartServer(context.Background())
	}
	srv, err := shared.srv, shared.err
	shared.mu.Unlock()
	if errors.Is(err, ErrNoBinaries) || errors.Is(err, errUnsupported) {
		t.Skipf("PostgreSQL tests skipped: %v", err)
	}
	if err != nil {
		t.Fatalf("start the shared test PostgreSQL: %v", err)
	}
	ctx := context.Background()
	name, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.DropDatabase(context.Background(), name); err != nil {
			t.Errorf("drop test database: %v", err)
		}
	})
	return srv.URL(name)
}

// NewServer starts a server of the test's own (to stop and start again), closed by t.Cleanup. It
// skips t when no PostgreSQL is installed.
func NewServer(t testing.TB) *Server {
	t.Helper()
	s, err := StartServer(context.Background())
	if errors.Is(err, ErrNoBinaries) || errors.Is(err, errUnsupported) {
		t.Skipf("PostgreSQL tests skipped: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("stop test PostgreSQL: %v", err)
		}
	})
	return s
}

// Main runs the tests and then stops the shared server and removes its files:
// func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }.
func Main(m *testing.M) int {
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		if err := shared.srv.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
		shared.srv = nil
	}
	return code
}
