package faults_test

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/resource"
)

// nodeProc is a ferry-node run as a separate process, so the test can SIGKILL it.
type nodeProc struct {
	bin, state string
	cmd        *exec.Cmd
	log        *os.File
	done       chan struct{}
}

func buildNode(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ferry-node")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/ferryhq/ferry/cmd/ferry-node")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ferry-node: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs `ferry-node run` and waits until its enrollment port accepts connections.
func (n *nodeProc) start(t *testing.T, enrollAddr string) {
	t.Helper()
	n.cmd = exec.Command(n.bin, "run", "--state", n.state)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(n.cmd, n.done)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", enrollAddr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-n.done:
			b, _ := os.ReadFile(n.log.Name())
			t.Fatalf("ferry-node exited at start:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("ferry-node did not listen within 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *nodeProc) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Signal(syscall.SIGKILL)
		<-n.done
	}
}

// TestNodeRestart: the node process is SIGKILLed and started again on the same state and ports;
// the client, untouched, refuses connections clearly meanwhile, reports the node unreachable, and
// carries connections again by itself once the node is back.
func TestNodeRestart(t *testing.T) {
	t.Parallel() // after TestLoad, alongside the other fault tests
	needBins(t, "psql", "go")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := buildNode(t)
	emu, err := azureemu.Start(ctx, azureemu.Config{
		Users: []azureemu.Identity{{ClientID: demo.ClientID, ObjectID: demo.ObjectID, DisplayName: demo.IdentityName}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	if err := emu.CreatePrincipal(ctx, demo.Role, demo.ObjectID); err != nil {
		t.Fatal(err)
	}
	if err := emu.CreateDatabase(ctx, demo.Database, demo.Role); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	enroll := "127.0.0.1:" + strconv.Itoa(freePort(t, "tcp"))
	wg := freePort(t, "udp")
	logf, err := os.Create(filepath.Join(dir, "node.log"))
	if err != nil {
		t.Fatal(err)
	}
	n := &nodeProc{bin: bin, state: filepath.Join(dir, "node"), log: logf}
	t.Cleanup(n.kill)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("node log:\n%s", tailLines(string(b), 60))
		}
	})
	out, err := exec.CommandContext(ctx, bin, "init", "--state", n.state, "--public-host", "127.0.0.1",
		"--enroll-listen", enroll, "--wireguard-port", strconv.Itoa(wg), "--metrics-listen", "",
		"--imds-endpoint", emu.IMDSEndpoint(), "--ca-file", emu.CACertFile(),
		"--host-override", emu.Hostname()+"="+emu.Addr()).Output()
	if err != nil {
		t.Fatalf("ferry-node init: %v", err)
	}
	n.start(t, enroll)

	dirs := client.Dirs{Config: filepath.Join(dir, "client"), Runtime: filepath.Join(dir, "run")}
	if _, err := client.Login(ctx, dirs, strings.TrimSpace(string(out)), "test"); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	d, err := client.StartDaemon(ctx, dirs, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	r := resource.New(demo.ResourceName)
	r.Hostname, r.Database, r.Username, r.ManagedIdentityClientID = emu.Hostname(), demo.Database, demo.Role, demo.ClientID
	r.BindInterface = demo.RandomLoopbackIP()
	if _, err := d.API().AddDatasource(ctx, r); err != nil {
		t.Fatal(err)
	}
	rs, err := d.Connect(ctx, demo.ResourceName)
	if err != nil {
		t.Fatal(err)
	}
	conn := client.ConnString(rs)
	if _, err := query(ctx, conn, "SELECT 1"); err != nil {
		t.Fatalf("before the kill: %v", err)
	}

	// Cycle 1: the node stays down while connections are refused and status is read.
	n.kill()
	killed := time.Now()
	for i := range 2 {
		start := time.Now()
		_, err := query(ctx, conn, "SELECT 1")
		took := time.Since(start)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (pgErr.Code != "08001" && pgErr.Code != "08006") {
			t.Fatalf("connection %d while the node is down: %v, want a FATAL 08001 or 08006", i, err)
		}
		t.Logf("while the node is down: %s %q after %v", pgErr.Code, pgErr.Message, took.Round(time.Millisecond))
	}
	start := time.Now()
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	st := d.Status(sctx)
	scancel()
	if st.NodeReachable {
		t.Fatal("status says the node is reachable while it is down")
	}
	t.Logf("status %v after the kill, answered in %v: node_reachable=false, %q", time.Since(killed).Round(time.Millisecond), time.Since(start).Round(time.Millisecond), st.NodeError)
	waitBack(t, ctx, n, enroll, conn, "after being down for "+time.Since(killed).Round(time.Second).String())

	// Cycle 2: killed and started again at once, before the client can notice.
	n.kill()
	waitBack(t, ctx, n, enroll, conn, "after an immediate restart")

	sctx, scancel = context.WithTimeout(ctx, 10*time.Second)
	st = d.Status(sctx)
	scancel()
	if !st.NodeReachable {
		t.Errorf("status after the restart: node unreachable: %s", st.NodeError)
	}
}

// waitBack starts the node again and waits until a connection through the client's unchanged
// loopback address succeeds; it fails the test if that takes more than 10 s.
func waitBack(t *testing.T, ctx context.Context, n *nodeProc, enroll, conn, what string) {
	t.Helper()
	restarted := time.Now()
	n.start(t, enroll)
	listening := time.Since(restarted)
	tries := 0
	for {
		tries++
		_, err := query(ctx, conn, "SELECT 1")
		if err == nil {
			break
		}
		if time.Since(restarted) > 10*time.Second {
			t.Fatalf("%s: no connection through the same address within 10 s of the restart: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%s: node listening %v after its start; a connection through the same address works %v after the start (%d tries)",
		what, listening.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond), tries)
}

func tailLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
