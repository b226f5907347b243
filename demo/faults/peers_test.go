package faults_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/tunnel"
)

// deadClientTimeout is the node's dead-client detection time in these tests (default 2 minutes).
const deadClientTimeout = 4 * time.Second

// backendAlive reports whether a backend with pid is in pg_stat_activity.
func backendAlive(t *testing.T, env *demo.Env, pid uint32) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, env.Emu.SuperuserConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = "+strconv.Itoa(int(pid))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return string(res[0].Rows[0][0]) != "0"
}

// waitGone waits until the backend has left pg_stat_activity and returns how long that took
// from since; it fails the test after limit.
func waitGone(t *testing.T, env *demo.Env, pid uint32, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	for backendAlive(t, env, pid) {
		if time.Since(since) > limit {
			t.Fatalf("backend %d still in pg_stat_activity %v later", pid, time.Since(since).Round(time.Millisecond))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(since)
}

// pgPID opens a session with c and returns its upstream backend PID (the proxy gives the client
// its own BackendKeyData, so ask the server).
func pgPID(ctx context.Context, c *pgconn.PgConn) (uint32, error) {
	res, err := c.Exec(ctx, "SELECT pg_backend_pid()").ReadAll()
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(string(res[0].Rows[0][0]))
	return uint32(pid), err
}

// TestPeersAndRestarts: clients that vanish (psql killed, a whole client gone silent), a client
// daemon restart and an upstream PostgreSQL restart, against one installation whose node detects
// dead clients after 4 s.
func TestPeersAndRestarts(t *testing.T) {
	t.Parallel() // after TestLoad, alongside the other fault tests
	needBins(t, "psql")
	env := startEnv(t, demo.Options{NodeConfig: func(c *node.Config) { c.DeadClientTimeout = node.Duration(deadClientTimeout) }})
	ctx := context.Background()
	conn := client.ConnString(env.Resource)

	t.Run("long error message from the server", func(t *testing.T) {
		// FuzzRelay's crash, end to end: an ErrorResponse above 1 KiB used to panic the node.
		_, err := query(ctx, conn, "DO $$BEGIN RAISE EXCEPTION '%', repeat('x', 3000); END$$")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "P0001" || len(pgErr.Message) != 3000 {
			t.Fatalf("RAISE EXCEPTION with 3000 characters: %v", err)
		}
		if _, err := query(ctx, conn, "SELECT 1"); err != nil {
			t.Fatalf("the node after a long error message: %v", err)
		}
	})

	t.Run("psql killed mid-session", func(t *testing.T) {
		cmd := exec.Command("psql", conn, "-X", "-A", "-t", "-q", "-f", "-")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		if _, err := io.WriteString(stdin, "SELECT pg_backend_pid();\n"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := stdout.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
		if err != nil {
			t.Fatalf("psql printed %q", buf[:n])
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		killed := time.Now()
		_ = cmd.Wait()
		took := waitGone(t, env, uint32(pid), killed, deadClientTimeout+5*time.Second)
		t.Logf("psql SIGKILLed: backend %d gone after %v", pid, took.Round(time.Millisecond))
	})

	t.Run("client vanishes silently", func(t *testing.T) {
		// A second device of the admin, with a tunnel of its own that the test can drop without
		// a FIN or RST reaching the node, as when a client process is SIGKILLed (its TCP lives in
		// userspace) or a laptop sleeps.
		tok, err := env.Node.EnrollToken(ctx, node.DefaultAdmin)
		if err != nil {
			t.Fatal(err)
		}
		dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "c2"), Runtime: filepath.Join(t.TempDir(), "r2")}
		st, err := client.Login(ctx, dirs, tok, "vanishing")
		if err != nil {
			t.Fatal(err)
		}
		tun := clientTunnel(t, st)
		dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
			return tun.Stack().DialContext(ctx, "tcp", env.Resource.VNAddress)
		}
		cfg, err := pgconn.ParseConfig("host=ferry dbname=" + demo.Database + " user=" + demo.Role + " sslmode=disable connect_timeout=20")
		if err != nil {
			t.Fatal(err)
		}
		cfg.DialFunc = dial
		cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		c, err := pgconn.ConnectConfig(cctx, cfg)
		if err != nil {
			t.Fatalf("session through the second device: %v", err)
		}
		pid, err := pgPID(cctx, c)
		if err != nil {
			t.Fatal(err)
		}
		tun.Close() // wireguard first, then the stack: nothing more reaches the node
		vanished := time.Now()
		took := waitGone(t, env, pid, vanished, deadClientTimeout+5*time.Second)
		t.Logf("client vanished silently: backend %d gone after %v (configured detection %v)", pid, took.Round(time.Millisecond), deadClientTimeout)
	})

	t.Run("client daemon restart restores connected resources", func(t *testing.T) {
		before := env.Resource.Address
		if err := env.Daemon.Close(); err != nil {
			t.Fatal(err)
		}
		d, err := client.StartDaemon(ctx, env.Dirs, nil)
		if err != nil {
			t.Fatalf("restart the daemon: %v", err)
		}
		env.Daemon = d
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st := d.Status(sctx)
		cancel()
		found := false
		for _, r := range st.Resources {
			if r.Name == demo.ResourceName {
				found = true
				if !r.Connected || r.Address != before {
					t.Fatalf("after the restart %s is connected=%v at %s, want connected at %s", r.Name, r.Connected, r.Address, before)
				}
			}
		}
		if !found {
			t.Fatalf("status after the restart lacks %s: %+v", demo.ResourceName, st)
		}
		if _, err := query(ctx, conn, "SELECT 1"); err != nil {
			t.Fatalf("psql through the restored address: %v", err)
		}
	})

	t.Run("upstream restart", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		c, err := pgconn.Connect(cctx, conn+" connect_timeout=20")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(cctx, "SELECT 1").ReadAll(); err != nil {
			t.Fatal(err)
		}
		if err := env.Emu.StopPostgres(); err != nil {
			t.Fatal(err)
		}
		restarted := false
		defer func() {
			if !restarted {
				_ = env.Emu.StartPostgres(context.Background())
			}
		}()
		_, err = c.Exec(cctx, "SELECT 1").ReadAll()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
			t.Fatalf("open session after the server stopped: %v, want FATAL 57P01", err)
		}
		t.Logf("open session: %s %s", pgErr.Code, pgErr.Message)
		_, err = query(ctx, conn, "SELECT 1")
		if !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Code, "08") {
			t.Fatalf("new connection while the server is down: %v, want a FATAL 08xxx", err)
		}
		t.Logf("new connection while down: %s %s", pgErr.Code, pgErr.Message)
		if err := env.Emu.StartPostgres(ctx); err != nil {
			t.Fatal(err)
		}
		restarted = true
		if _, err := query(ctx, conn, "SELECT 1"); err != nil {
			t.Fatalf("new connection after the server is back: %v", err)
		}
	})
}

// clientTunnel brings up a client's WireGuard tunnel to the node from its enrolled state.
func clientTunnel(t *testing.T, st client.State) *tunnel.Tunnel {
	t.Helper()
	key, err := tunnel.ParseKey(st.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	nodeKey, err := tunnel.ParseKey(st.NodePublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := netip.ParseAddrPort(st.WireGuardEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := netip.ParseAddr(st.DeviceAddress)
	if err != nil {
		t.Fatal(err)
	}
	allowed := []netip.Prefix{api.TunnelSubnet, netip.MustParsePrefix(st.VNSubnet)}
	tun, err := tunnel.New(context.Background(), tunnel.Config{
		PrivateKey: key, Addresses: []netip.Addr{addr},
		Peers: []tunnel.Peer{{PublicKey: nodeKey, AllowedIPs: allowed, Endpoint: ep, PersistentKeepalive: client.PersistentKeepalive}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tun.Close() })
	return tun
}
