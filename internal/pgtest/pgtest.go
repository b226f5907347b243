// Package pgtest runs throwaway PostgreSQL servers from the installed binaries for tests: Start
// gives a test a fresh database on a server shared by the test binary, NewServer a server of its
// own (to stop and start again). Servers listen on a Unix socket only, in a temp dir, with trust
// authentication for the bootstrap superuser; under root they run as the postgres (or nobody)
// account, since PostgreSQL refuses to run as root. Without PostgreSQL binaries the test is skipped
// with a message saying what to install.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/internal/pgserver"
)

// Superuser is the bootstrap superuser of the servers.
const Superuser = "ferry"

// port only names the Unix socket file (.s.PGSQL.5432); the servers listen on no TCP port.
const port = 5432

// ErrNoBinaries is returned (wrapped) when no PostgreSQL server binaries are installed.
var ErrNoBinaries = pgserver.ErrNoBinaries

// Server is a running PostgreSQL server.
type Server struct {
	dir, dataDir, sockDir, logFile, binDir string
	acct                                   *pgserver.Account

	version int // server_version_num

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	dbs     atomic.Int64
}

// FindBinDir returns the directory holding initdb and postgres (pgserver.FindBinDir). The error wraps
// ErrNoBinaries.
func FindBinDir() (string, error) { return pgserver.FindBinDir() }

// makeDir makes the server's temp dir; as root under a base the PostgreSQL account can traverse.
func makeDir() (string, error) {
	base := os.TempDir()
	if os.Geteuid() == 0 {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "ferry-pgtest-")
	if err != nil {
		return "", fmt.Errorf("make temp dir: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("make temp dir: %w", err)
	}
	return dir, nil
}

// StartServer runs initdb in a new temp dir and starts the server. Stop it with Close.
func StartServer(ctx context.Context) (*Server, error) {
	if err := supported(); err != nil {
		return nil, err
	}
	binDir, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	acct, err := pgserver.RunAs()
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	dir, err := makeDir()
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	s := &Server{dir: dir, dataDir: filepath.Join(dir, "data"), sockDir: filepath.Join(dir, "sock"),
		logFile: filepath.Join(dir, "postgres.log"), binDir: binDir, acct: acct}
	if err := s.init(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	if err := s.Start(ctx); err != nil {
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

func (s *Server) init(ctx context.Context) error {
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{s.dataDir, 0o700}, {s.sockDir, 0o755}} {
		if err := os.Mkdir(d.path, d.mode); err != nil {
			return err
		}
		if s.acct != nil {
			if err := os.Chown(d.path, int(s.acct.UID), int(s.acct.GID)); err != nil {
				return fmt.Errorf("chown %s to %s: %w", d.path, s.acct.Name, err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	initdb := exec.CommandContext(ctx, filepath.Join(s.binDir, "initdb"), "-D", s.dataDir, "-U", Superuser,
		"-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.Dir, initdb.Env, initdb.SysProcAttr = s.dir, env(), pgserver.SysProcAttr(s.acct)
	var out bytes.Buffer
	initdb.Stdout, initdb.Stderr = &out, &out
	if err := initdb.Run(); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, tail(out.String()))
	}
	return nil
}

// Start starts the server (again, after Stop) and waits until it accepts connections.
func (s *Server) Start(ctx context.Context) error {
	logf, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(s.binDir, "postgres"), "-D", s.dataDir, "-k", s.sockDir, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=", "-c", "unix_socket_permissions=0777", "-c", "fsync=off",
		"-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "shared_buffers=16MB",
		"-c", "max_connections=200", "-c", "dynamic_shared_memory_type=mmap")
	cmd.Dir, cmd.Env, cmd.SysProcAttr = s.dir, env(), pgserver.SysProcAttr(s.acct)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	done := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.waitErr = err
		s.mu.Unlock()
		close(done)
	}()
	if err := s.waitReady(ctx, done); err != nil {
		_ = s.Stop()
		return fmt.Errorf("start PostgreSQL: %w: %s", err, tail(s.log()))
	}
	return nil
}

func (s *Server) waitReady(ctx context.Context, done chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := pgconn.Connect(cctx, s.URL("postgres"))
		ccancel()
		if err == nil {
			_ = c.Close(ctx)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server not ready: %w (last error: %v)", ctx.Err(), err)
		case <-done:
			s.mu.Lock()
			defer s.mu.Unlock()
			return fmt.Errorf("server exited during startup: %v", s.waitErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop shuts the server down (fast shutdown; killed after 10 s). The data stays for Start.
func (s *Server) Stop() error {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	_ = cmd.Process.Signal(interrupt)
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = cmd.Process.Kill()
	select {
	case <-done:
		return errors.New("stop PostgreSQL: killed after fast shutdown timed out")
	case <-time.After(5 * time.Second):
		return errors.New("stop PostgreSQL: process did not exit after SIGKILL")
	}
}

// Close stops the server and removes its files.
func (s *Server) Close() error {
	err := s.Stop()
	if rerr := os.RemoveAll(s.dir); err == nil {
		err = rerr
	}
	return err
}

// SocketDir is the directory of the server's Unix socket.
func (s *Server) SocketDir() string { return s.sockDir }

// URL is a postgres:// URL for database as the superuser over the Unix socket.
func (s *Server) URL(database string) string {
	q := url.Values{"host": {s.sockDir}, "port": {strconv.Itoa(port)}, "sslmode": {"disable"}, "connect_timeout": {"10"}}
	return (&url.URL{Scheme: "postgres", User: url.User(Superuser), Path: "/" + database, RawQuery: q.Encode()}).String()
}

// Exec runs sql as the superuser in the postgres database.
func (s *Server) Exec(ctx context.Context, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connect as superuser: %w", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
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

func (s *Server) log() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

func env() []string {
	e := []string{"LC_ALL=C", "LANG=C", "TZ=UTC"}
	if p := os.Getenv("PATH"); p != "" {
		e = append(e, "PATH="+p)
	}
	return e
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return s
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
