package cli

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
)

// syncBuffer is a log sink safe for the daemon's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRefusedDaemonLeavesRunningTunnel: a second `ferry daemon` while one already serves the
// socket is refused before it brings up a tunnel, so the node sees no new handshake from the
// device, the running daemon's session keeps working and it never has to reconnect.
func TestRefusedDaemonLeavesRunningTunnel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var logs syncBuffer
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), LoopbackIP: demo.RandomLoopbackIP(),
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	t.Setenv(client.EnvConfigDir, env.Dirs.Config)
	t.Setenv(client.EnvRuntimeDir, env.Dirs.Runtime)

	conn, err := pgx.Connect(ctx, client.ConnString(env.Resource))
	if err != nil {
		t.Fatalf("connect through the running daemon: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	ctl := client.NewControl(env.Dirs)
	st, err := ctl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	handshake := func() time.Time {
		t.Helper()
		ds, err := ctl.API().Devices(ctx, st.User)
		if err != nil || len(ds) != 1 {
			t.Fatalf("devices of %s: %v, %v", st.User, ds, err)
		}
		return ds[0].LastHandshake
	}
	before := handshake()

	out, err := run(t, "daemon")
	if err == nil || !strings.Contains(err.Error(), "another ferry daemon already serves") {
		t.Fatalf("second daemon: %v:\n%s", err, out)
	}
	if after := handshake(); !after.Equal(before) {
		t.Errorf("the refused daemon handshook with the node as this device (last handshake %v -> %v)", before, after)
	}
	qctx, qcancel := context.WithTimeout(ctx, 20*time.Second)
	defer qcancel()
	var one int
	if err := conn.QueryRow(qctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("the running daemon's session after the refused start: %v", err)
	}
	if l := logs.String(); strings.Contains(l, "reconnecting") {
		t.Errorf("the running daemon had to reconnect:\n%s", l)
	}
}

// TestSimultaneousDaemonsOneStarts: daemons of one device started at the same moment (the app
// and `ferry daemon`, or two terminals), over the stale socket of a crashed one, are refused before
// their tunnels come up, with the same message as a start while one already runs; exactly one
// starts and keeps its socket.
func TestSimultaneousDaemonsOneStarts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), LoopbackIP: demo.RandomLoopbackIP()})
	st, err := client.NewControl(env.Dirs).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := env.Node.EnrollToken(ctx, st.User)
	if err != nil {
		t.Fatal(err)
	}
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := client.Login(ctx, dirs, tok, "second-laptop"); err != nil {
		t.Fatal(err)
	}

	// A daemon that crashed left its socket behind: nothing answers on it.
	if err := os.MkdirAll(dirs.Runtime, 0o700); err != nil {
		t.Fatal(err)
	}
	stale, err := net.Listen("unix", dirs.Socket())
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	const n = 4
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		daemons [n]*client.Daemon
		errs    [n]error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			daemons[i], errs[i] = client.StartDaemon(ctx, dirs, slog.New(slog.DiscardHandler))
		}()
	}
	close(start)
	wg.Wait()
	started := 0
	for i := range n {
		if errs[i] == nil {
			started++
			t.Cleanup(func() { daemons[i].Close() })
			continue
		}
		if !strings.Contains(errs[i].Error(), "another ferry daemon already serves") {
			t.Errorf("daemon %d: %v, want the refusal that another daemon serves the socket", i, errs[i])
		}
	}
	if started != 1 {
		t.Fatalf("%d daemons started, want exactly one", started)
	}
	if !client.DaemonRunning(dirs) {
		t.Error("the started daemon's socket does not answer after the others were refused")
	}
}
