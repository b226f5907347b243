package azureemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/internal/pgserver"
)

// superuser is the name of the real server's bootstrap superuser; Azure
// Database for PostgreSQL reserves the same name for Microsoft's own superuser.
const superuser = "azuresu"

// pgPort only names the unix socket file (.s.PGSQL.5432): the server listens
// on no TCP port, and each emulator has its own socket directory.
const pgPort = 5432

// postgres is a real PostgreSQL server run from the installed binaries, in a
// data dir under the emulator's temp dir, reachable only by its unix socket.
type postgres struct {
	log     *slog.Logger
	dataDir string
	sockDir string
	logFile string
	binDir  string
	acct    *pgserver.Account
	maxConn int
	dir     string

	mu      sync.Mutex // guards cmd, done, waitErr across restarts
	cmd     *exec.Cmd
	done    chan struct{} // closed when the server process has exited
	waitErr error
}

// makeTempDir makes the emulator's temp dir. As root it picks a base that an
// unprivileged account can traverse (falling back to /tmp) and makes the dir
// itself world-traversable, so PostgreSQL can reach its data and socket dirs.
func makeTempDir() (string, error) {
	base := os.TempDir()
	if os.Geteuid() == 0 && !worldTraversable(base) {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "azureemu-")
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

// findPGBinDir returns the directory holding initdb and postgres: dir if given, else
// pgserver.FindBinDir's.
func findPGBinDir(dir string) (string, error) {
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
			return "", fmt.Errorf("find PostgreSQL binaries in %s: %w", dir, err)
		}
		return dir, nil
	}
	d, err := pgserver.FindBinDir()
	if err != nil {
		return "", fmt.Errorf("%w, or set Config.PGBinDir", err)
	}
	return d, nil
}

func startPostgres(ctx context.Context, log *slog.Logger, binDir, dir string, maxConn int) (*postgres, error) {
	binDir, err := findPGBinDir(binDir)
	if err != nil {
		return nil, err
	}
	acct, err := pgserver.RunAs()
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	pg := &postgres{
		log:     log,
		dataDir: filepath.Join(dir, "data"),
		sockDir: filepath.Join(dir, "sock"),
		logFile: filepath.Join(dir, "postgres.log"),
		binDir:  binDir,
		acct:    acct,
		maxConn: maxConn,
		dir:     dir,
	}
	if pg.maxConn <= 0 {
		pg.maxConn = 100
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{pg.dataDir, 0o700}, {pg.sockDir, 0o755}} {
		if err := os.Mkdir(d.path, d.mode); err != nil {
			return nil, fmt.Errorf("start PostgreSQL: %w", err)
		}
		if acct != nil {
			if err := os.Chown(d.path, int(acct.UID), int(acct.GID)); err != nil {
				return nil, fmt.Errorf("start PostgreSQL: chown %s to %s: %w", d.path, acct.Name, err)
			}
		}
	}

	// initdb: trust auth (the front authenticates), no fsync (throwaway data).
	initCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	initdb := exec.CommandContext(initCtx, filepath.Join(binDir, "initdb"),
		"-D", pg.dataDir, "-U", superuser, "-A", "trust", "-E", "UTF8", "--locale=C",
		"--no-sync", "--no-instructions")
	initdb.Dir = dir
	initdb.Env = pgEnv()
	initdb.SysProcAttr = pgserver.SysProcAttr(acct)
	var out bytes.Buffer
	initdb.Stdout, initdb.Stderr = &out, &out
	t0 := time.Now()
	if err := initdb.Run(); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: initdb: %w: %s", err, tail(out.String()))
	}

	log.Debug("initdb done", "took", time.Since(t0))
	if err := pg.launch(ctx); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	log.Debug("PostgreSQL started", "bin", binDir, "socket_dir", pg.sockDir)
	return pg, nil
}

// launch starts the server process on the existing data dir and waits until it accepts connections.
func (pg *postgres) launch(ctx context.Context) error {
	logf, err := os.OpenFile(pg.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(pg.binDir, "postgres"),
		"-D", pg.dataDir,
		"-k", pg.sockDir,
		"-p", strconv.Itoa(pgPort),
		"-c", "listen_addresses=",
		"-c", "unix_socket_permissions=0777",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "shared_buffers=16MB",
		"-c", "max_connections="+strconv.Itoa(pg.maxConn),
		"-c", "dynamic_shared_memory_type=mmap",
	)
	cmd.Dir = pg.dir
	cmd.Env = pgEnv()
	cmd.SysProcAttr = pgserver.SysProcAttr(pg.acct)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	pg.mu.Lock()
	pg.cmd, pg.done = cmd, done
	pg.mu.Unlock()
	go func() {
		err := cmd.Wait()
		pg.mu.Lock()
		pg.waitErr = err
		pg.mu.Unlock()
		close(done)
	}()
	if err := pg.waitReady(ctx, 30*time.Second); err != nil {
		_ = pg.stop()
		return fmt.Errorf("%w: %s", err, tail(pg.readLog()))
	}
	return nil
}

// process returns the current server process and its exit channel.
func (pg *postgres) process() (*exec.Cmd, chan struct{}) {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	return pg.cmd, pg.done
}

func (pg *postgres) waitReady(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	_, done := pg.process()
	for {
		select {
		case <-done:
			return fmt.Errorf("server exited during startup: %v", pg.exitErr())
		default:
		}
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := pgconn.Connect(cctx, pg.connString("postgres"))
		ccancel()
		if err == nil {
			_ = c.Close(ctx)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server not ready: %w (last error: %v)", ctx.Err(), err)
		case <-done:
			return fmt.Errorf("server exited during startup: %v", pg.exitErr())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// socketPath is the path of the server's unix socket.
func (pg *postgres) socketPath() string {
	return filepath.Join(pg.sockDir, ".s.PGSQL."+strconv.Itoa(pgPort))
}

func (pg *postgres) connString(database string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=10", pg.sockDir, pgPort, superuser, database)
}

func (pg *postgres) exec(ctx context.Context, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, pg.connString("postgres"))
	if err != nil {
		return fmt.Errorf("connect as superuser: %w", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("exec as superuser: %w", err)
	}
	return nil
}

// stop asks for a fast shutdown (SIGINT) and kills the server if it has not
// exited within 10 s.
func (pg *postgres) stop() error {
	cmd, done := pg.process()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
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

func (pg *postgres) exitErr() error {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	return pg.waitErr
}

func (pg *postgres) readLog() string {
	b, _ := os.ReadFile(pg.logFile)
	return string(b)
}

func pgEnv() []string {
	env := []string{"LC_ALL=C", "LANG=C", "TZ=UTC"}
	if p := os.Getenv("PATH"); p != "" {
		env = append(env, "PATH="+p)
	}
	return env
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return s
}
