// Package pgserver runs a real PostgreSQL server from the installed binaries: the part shared by
// the Azure emulator's server (azureemu, also the demo's) and the tests' throwaway servers
// (internal/pgtest, the pgproxy tests). It finds the binaries (FindBinDir), runs initdb, starts
// the server with throwaway-data settings (no fsync), waits until it accepts connections, and
// stops it (fast shutdown, then SIGKILL). PostgreSQL refuses to run as root, so under root initdb
// and the server run as the postgres (or nobody) account (RunAs), in a directory that account can
// reach (MakeTempDir). Every server listens on a Unix socket in its own directory; a TCP listen
// address is optional. What differs per user (pg_hba.conf, TLS files, roles, databases) the user
// writes or runs itself between Init and Start, or after Start.
package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultPort names the Unix socket file (.s.PGSQL.5432) of a server without Config.Port.
const DefaultPort = 5432

// Config says how to run a server.
type Config struct {
	Dir       string // the server's directory (it must exist): data/, sock/ and postgres.log go there
	BinDir    string // where initdb and postgres are; empty: FindBinDir
	Superuser string // the bootstrap superuser initdb creates (trusted on the Unix socket)
	// Port is the TCP port when ListenAddresses is set, and names the Unix socket file either
	// way; 0 is DefaultPort.
	Port int
	// ListenAddresses is PostgreSQL's listen_addresses; empty: the Unix socket only.
	ListenAddresses string
	// MaxConnections is max_connections; 0 is 100.
	MaxConnections int
	// Settings are more "name=value" settings passed as -c, after (so over) the defaults.
	Settings []string
}

// Server is one PostgreSQL server: its data dir, made by Init, and its process, run by Start.
type Server struct {
	cfg                               Config
	dataDir, sockDir, logFile, binDir string
	acct                              *Account

	mu      sync.Mutex // guards cmd, done and waitErr across restarts
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error
}

// New checks cfg and finds the binaries and the account to run them as. It starts nothing.
func New(cfg Config) (*Server, error) {
	if cfg.Dir == "" || cfg.Superuser == "" {
		return nil, errors.New("new PostgreSQL server: Config.Dir and Config.Superuser are required")
	}
	binDir := cfg.BinDir
	if binDir == "" {
		d, err := FindBinDir()
		if err != nil {
			return nil, err
		}
		binDir = d
	} else if _, err := os.Stat(filepath.Join(binDir, "postgres")); err != nil {
		return nil, fmt.Errorf("find PostgreSQL binaries in %s: %w", binDir, err)
	}
	acct, err := RunAs()
	if err != nil {
		return nil, fmt.Errorf("new PostgreSQL server: %w", err)
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = 100
	}
	return &Server{cfg: cfg, binDir: binDir, acct: acct,
		dataDir: filepath.Join(cfg.Dir, "data"), sockDir: filepath.Join(cfg.Dir, "sock"),
		logFile: filepath.Join(cfg.Dir, "postgres.log")}, nil
}

// MakeTempDir makes a temp dir for a server. As root it picks a base that the account PostgreSQL
// runs as can traverse (falling back to /tmp) and makes the dir itself world-traversable, so
// PostgreSQL can reach its data and socket dirs.
func MakeTempDir(prefix string) (string, error) {
	base := os.TempDir()
	if os.Geteuid() == 0 && !worldTraversable(base) {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, prefix)
	if err != nil {
		return "", fmt.Errorf("make temp dir: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("make temp dir: %w", err)
	}
	return dir, nil
}

func worldTraversable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// Init makes the data and socket dirs (owned by the account PostgreSQL runs as) and runs initdb:
// trust authentication (callers that need more write their own pg_hba.conf with WriteDataFile),
// UTF8, C locale, no sync (throwaway data).
func (s *Server) Init(ctx context.Context) error {
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{s.dataDir, 0o700}, {s.sockDir, 0o755}} {
		if err := os.Mkdir(d.path, d.mode); err != nil {
			return fmt.Errorf("init PostgreSQL: %w", err)
		}
		if err := s.chown(d.path); err != nil {
			return fmt.Errorf("init PostgreSQL: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	initdb := exec.CommandContext(ctx, filepath.Join(s.binDir, "initdb"), "-D", s.dataDir, "-U", s.cfg.Superuser,
		"-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.Dir, initdb.Env, initdb.SysProcAttr = s.cfg.Dir, env(), SysProcAttr(s.acct)
	var out bytes.Buffer
	initdb.Stdout, initdb.Stderr = &out, &out
	if err := initdb.Run(); err != nil {
		return fmt.Errorf("init PostgreSQL: initdb: %w: %s", err, Tail(out.String()))
	}
	return nil
}

// WriteDataFile writes a file into the data dir (pg_hba.conf, a TLS key), readable only by the
// account PostgreSQL runs as.
func (s *Server) WriteDataFile(name string, content []byte) error {
	p := filepath.Join(s.dataDir, name)
	if err := os.WriteFile(p, content, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := s.chown(p); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func (s *Server) chown(path string) error {
	if s.acct == nil {
		return nil
	}
	if err := os.Chown(path, int(s.acct.UID), int(s.acct.GID)); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, s.acct.Name, err)
	}
	return nil
}

// args are the server's command-line arguments: throwaway-data settings, then Config.Settings.
func (s *Server) args() []string {
	a := []string{"-D", s.dataDir, "-k", s.sockDir, "-p", strconv.Itoa(s.cfg.Port),
		"-c", "listen_addresses=" + s.cfg.ListenAddresses,
		"-c", "unix_socket_permissions=0777",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "shared_buffers=16MB",
		"-c", "max_connections=" + strconv.Itoa(s.cfg.MaxConnections),
		"-c", "dynamic_shared_memory_type=mmap",
	}
	for _, kv := range s.cfg.Settings {
		a = append(a, "-c", kv)
	}
	return a
}

// Start starts the server on the data dir Init made (again, after Stop) and waits up to 30 s
// until it accepts connections.
func (s *Server) Start(ctx context.Context) error {
	if cmd, done := s.Process(); cmd != nil {
		select {
		case <-done:
		default:
			return errors.New("start PostgreSQL: it is running")
		}
	}
	logf, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(s.binDir, "postgres"), s.args()...)
	cmd.Dir, cmd.Env, cmd.SysProcAttr = s.cfg.Dir, env(), SysProcAttr(s.acct)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	done := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.done, s.waitErr = cmd, done, nil
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
		return fmt.Errorf("start PostgreSQL: %w: %s", err, Tail(s.Log()))
	}
	return nil
}

func (s *Server) waitReady(ctx context.Context, done chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := pgconn.Connect(cctx, s.ConnString("postgres"))
		ccancel()
		if err == nil {
			_ = c.Close(ctx)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server not ready: %w (last error: %v)", ctx.Err(), err)
		case <-done:
			return fmt.Errorf("server exited during startup: %v", s.exitErr())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Process returns the current server process (nil before Start) and a channel closed when it
// has exited.
func (s *Server) Process() (*exec.Cmd, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd, s.done
}

func (s *Server) exitErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waitErr
}

// Stop shuts the server down (fast shutdown: sessions end with FATAL 57P01; killed after 10 s).
// The data stays for Start.
func (s *Server) Stop() error {
	cmd, done := s.Process()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	_ = cmd.Process.Signal(os.Interrupt)
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

// DataDir is the server's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// SocketDir is the directory of the server's Unix socket.
func (s *Server) SocketDir() string { return s.sockDir }

// SocketPath is the path of the server's Unix socket.
func (s *Server) SocketPath() string {
	return filepath.Join(s.sockDir, ".s.PGSQL."+strconv.Itoa(s.cfg.Port))
}

// Port is the server's port (the TCP port with ListenAddresses; the socket file's number).
func (s *Server) Port() int { return s.cfg.Port }

// ConnString is a libpq keyword/value connection string for database as the superuser over the
// Unix socket.
func (s *Server) ConnString(database string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=10",
		s.sockDir, s.cfg.Port, s.cfg.Superuser, database)
}

// Exec runs sql as the superuser in the postgres database. The error does not quote sql (it may
// hold a password).
func (s *Server) Exec(ctx context.Context, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, s.ConnString("postgres"))
	if err != nil {
		return fmt.Errorf("connect as superuser: %w", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("exec as superuser: %w", err)
	}
	return nil
}

// Log is the server's log so far.
func (s *Server) Log() string {
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

// Tail is the last 2,000 characters of s, for error messages.
func Tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return s
}
