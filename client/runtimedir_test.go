//go:build unix

package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferryhq/ferry/tunnel"
)

// otherUID is a uid no one on the test machine logs in as: what "another local user" owns here.
const otherUID = 12345

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another uid (os.Chown)")
	}
}

// TestFallbackRuntimeDir: without XDG_RUNTIME_DIR the runtime directory is TMPDIR/ferry-<uid>; it is
// created 0700 and used again while it is the user's own with mode 0700, and refused with what to do
// when another user made it first, when it is a symbolic link, not a directory, or open to others.
// TMPDIR is a temp dir of the test: the real /tmp/ferry-* are never touched.
func TestFallbackRuntimeDir(t *testing.T) {
	name := "ferry-" + strconv.Itoa(os.Getuid())
	tests := []struct {
		name    string
		root    bool                         // needs root (chown)
		plant   func(t *testing.T, p string) // what is at TMPDIR/ferry-<uid> before
		wantErr string                       // "" = accepted
	}{
		{"fresh", false, func(*testing.T, string) {}, ""},
		{"ours from an earlier run", false, func(t *testing.T, p string) { mkdir(t, p, 0o700) }, ""},
		{"planted by another uid", true, func(t *testing.T, p string) {
			mkdir(t, p, 0o700)
			if err := os.Chown(p, otherUID, otherUID); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 12345, not by you"},
		{"planted world-writable by another uid", true, func(t *testing.T, p string) {
			mkdir(t, p, 0o777)
			if err := os.Chown(p, otherUID, otherUID); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 12345"},
		{"ours but open to others", false, func(t *testing.T, p string) { mkdir(t, p, 0o755) }, "its mode is 0755, not 0700"},
		{"symbolic link to our own directory", false, func(t *testing.T, p string) {
			target := filepath.Join(t.TempDir(), "elsewhere")
			mkdir(t, target, 0o700)
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
		}, "it is a symbolic link"},
		{"a file", false, func(t *testing.T, p string) {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "it is not a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				needRoot(t)
			}
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			t.Setenv("XDG_RUNTIME_DIR", "")
			t.Setenv(EnvRuntimeDir, "")
			t.Setenv(EnvConfigDir, filepath.Join(tmp, "cfg"))
			p := filepath.Join(tmp, name)
			tc.plant(t, p)
			d, err := DefaultDirs()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("DefaultDirs: %v", err)
				}
				if d.Runtime != p {
					t.Fatalf("runtime dir = %s, want %s", d.Runtime, p)
				}
				fi, err := os.Lstat(p)
				if err != nil {
					t.Fatalf("runtime dir after DefaultDirs: %v", err)
				}
				if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
					t.Fatalf("runtime dir after DefaultDirs has mode %v, want a directory 0700", fi.Mode())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "XDG_RUNTIME_DIR") {
				t.Fatalf("DefaultDirs = %+v, %v; want an error saying %q and what to do", d, err, tc.wantErr)
			}
		})
	}
}

// plantedSocket serves HTTP on a unix socket at path owned by otherUID (another local user posing as
// the daemon) and counts the connections it gets.
func plantedSocket(t *testing.T, path string) *atomic.Int32 {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chown(path, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int32
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"user":"mallory"}`)) }),
		ConnState: func(_ net.Conn, s http.ConnState) { conns.Add(map[bool]int32{true: 1}[s == http.StateNew]) },
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return &conns
}

// testDaemonDirs returns private dirs holding an enrolled state for a node that need not exist (the
// daemon starts in loopback mode without asking the node anything).
func testDaemonDirs(t *testing.T) Dirs {
	t.Helper()
	root := t.TempDir()
	d := Dirs{Config: filepath.Join(root, "cfg"), Runtime: filepath.Join(root, "run")}
	key, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	nodeKey, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	st := State{PrivateKey: key.String(), DeviceAddress: "100.64.0.9", NodePublicKey: nodeKey.PublicKey().String(),
		WireGuardEndpoint: "127.0.0.1:9", User: "u"}
	if err := SaveState(d, st); err != nil {
		t.Fatal(err)
	}
	mkdir(t, d.Runtime, 0o700)
	return d
}

// TestPlantedControlSocket: a control socket that another user owns is never dialled by the CLI or
// the desktop app, never taken over or removed by the daemon, and the daemon removes on exit only
// the socket it made itself.
func TestPlantedControlSocket(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("clients refuse it", func(t *testing.T) {
		d := testDaemonDirs(t)
		conns := plantedSocket(t, d.Socket())
		_, err := NewControl(d).Status(ctx)
		if err == nil || !strings.Contains(err.Error(), "belongs to uid 12345") {
			t.Errorf("Status through a planted socket: %v, want a refusal naming its owner", err)
		}
		if _, err := NewControl(d).API().Me(ctx); err == nil || !strings.Contains(err.Error(), "belongs to uid 12345") {
			t.Errorf("API through a planted socket: %v, want a refusal naming its owner", err)
		}
		if DaemonRunning(d) {
			t.Error("DaemonRunning = true for another user's socket")
		}
		if n := conns.Load(); n != 0 {
			t.Errorf("the planted socket got %d connections, want none", n)
		}
	})
	t.Run("daemon refuses to start and leaves it", func(t *testing.T) {
		d := testDaemonDirs(t)
		conns := plantedSocket(t, d.Socket())
		dm, err := StartDaemon(ctx, d, slog.New(slog.DiscardHandler), WithMode(ModeLoopback))
		if err == nil {
			dm.Close()
			t.Fatal("StartDaemon over another user's socket succeeded")
		}
		if !strings.Contains(err.Error(), "belongs to uid 12345") {
			t.Errorf("StartDaemon: %v, want a refusal naming the socket's owner", err)
		}
		if _, err := os.Lstat(d.Socket()); err != nil {
			t.Errorf("the other user's socket was removed: %v", err)
		}
		if n := conns.Load(); n != 0 {
			t.Errorf("the planted socket got %d connections, want none", n)
		}
	})
	t.Run("daemon refuses another user's runtime directory", func(t *testing.T) {
		d := testDaemonDirs(t)
		if err := os.Chown(d.Runtime, otherUID, otherUID); err != nil {
			t.Fatal(err)
		}
		dm, err := StartDaemon(ctx, d, slog.New(slog.DiscardHandler), WithMode(ModeLoopback))
		if err == nil {
			dm.Close()
			t.Fatal("StartDaemon in another user's runtime directory succeeded")
		}
		if !strings.Contains(err.Error(), "owned by uid 12345") {
			t.Errorf("StartDaemon: %v, want a refusal naming the directory's owner", err)
		}
	})
	t.Run("daemon removes only its own socket", func(t *testing.T) {
		d := testDaemonDirs(t)
		dm, err := StartDaemon(ctx, d, slog.New(slog.DiscardHandler), WithMode(ModeLoopback))
		if err != nil {
			t.Fatal(err)
		}
		// The daemon's socket is replaced while it runs (here by root, posing as another user).
		if err := os.Remove(d.Socket()); err != nil {
			t.Fatal(err)
		}
		plantedSocket(t, d.Socket())
		dm.Close()
		if _, err := os.Lstat(d.Socket()); err != nil {
			t.Errorf("the daemon removed a socket it did not make: %v", err)
		}
	})
	t.Run("daemon replaces its own stale socket", func(t *testing.T) {
		d := testDaemonDirs(t)
		ln, err := net.Listen("unix", d.Socket())
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close() // a daemon that died: its socket stays, no one answers
		dm, err := StartDaemon(ctx, d, slog.New(slog.DiscardHandler), WithMode(ModeLoopback))
		if err != nil {
			t.Fatal(err)
		}
		if !DaemonRunning(d) {
			t.Error("DaemonRunning = false after the daemon replaced its stale socket")
		}
		dm.Close()
		if _, err := os.Lstat(d.Socket()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the daemon's own socket after Close: %v, want it removed", err)
		}
	})
}

func mkdir(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// Environment of the helper process that TestSocketPeerOtherUser runs as another uid.
const (
	envServeSocket = "FERRY_TEST_SERVE_SOCKET" // serve HTTP on this unix socket until killed
	envDialSocket  = "FERRY_TEST_DIAL_SOCKET"  // GET /local/v1/status through this socket, print the outcome
	envFakeHelper  = "FERRY_TEST_FAKE_HELPER"  // answer as the VN helper on this socket, handing over /dev/null
)

// TestHelperProcess is not a test: TestSocketPeerOtherUser runs the test binary with it as another
// uid, to serve or dial a socket as another local user would.
func TestHelperProcess(t *testing.T) {
	switch {
	case os.Getenv(envServeSocket) != "":
		ln, err := net.Listen("unix", os.Getenv(envServeSocket))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		_ = os.Chmod(os.Getenv(envServeSocket), 0o666)
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"user":"mallory"}`)) }))
		os.Exit(0)
	case os.Getenv(envFakeHelper) != "":
		serveFakeHelper(os.Getenv(envFakeHelper))
		os.Exit(0)
	case os.Getenv(envDialSocket) != "":
		c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", os.Getenv(envDialSocket))
		}}}
		resp, err := c.Get("http://ferry/local/v1/status")
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(0)
		}
		fmt.Println("status:", resp.StatusCode)
		os.Exit(0)
	default:
		t.Skip("helper process of TestSocketPeerOtherUser")
	}
}

// asOtherUser prepares the test binary so that otherUID can run it, and a directory it may write.
func asOtherUser(t *testing.T) (run func(ctx context.Context, env string) *exec.Cmd, dir string) {
	t.Helper()
	shared, err := os.MkdirTemp("", "ferry-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(shared, "client.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(shared, "run")
	mkdir(t, dir, 0o755)
	if err := os.Chown(dir, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	return func(ctx context.Context, env string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, bin, "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), env)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: otherUID, Gid: otherUID}}
		return cmd
	}, dir
}

// TestSocketPeerOtherUser: the process at the other end of the control socket is checked too
// (SO_PEERCRED), not only the socket file's owner. A daemon impostor run by another user behind a
// socket file that looks like root's is refused by the CLI; a connection from another user to the
// daemon's socket (made reachable on purpose here) is closed unanswered.
func TestSocketPeerOtherUser(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run, dir := asOtherUser(t)

	t.Run("impostor daemon", func(t *testing.T) {
		d := Dirs{Config: t.TempDir(), Runtime: dir}
		srv := run(ctx, envServeSocket+"="+d.Socket())
		var out strings.Builder
		srv.Stderr = &out
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
		for i := 0; !DaemonRunningUnchecked(d); i++ {
			if i > 200 {
				t.Fatalf("the impostor did not start: %s", out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := os.Lchown(d.Socket(), 0, 0); err != nil { // the file now looks like root's
			t.Fatal(err)
		}
		if _, err := NewControl(d).Status(ctx); err == nil || !strings.Contains(err.Error(), "runs as uid 12345") {
			t.Errorf("Status through another user's impostor: %v, want a refusal naming its uid", err)
		}
		if DaemonRunning(d) {
			t.Error("DaemonRunning = true for another user's impostor")
		}
	})
	t.Run("daemon refuses other users", func(t *testing.T) {
		d := testDaemonDirs(t)
		dm, err := StartDaemon(ctx, d, slog.New(slog.DiscardHandler), WithMode(ModeLoopback))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dm.Close() })
		// Open the way on purpose: only the peer check is left.
		for _, p := range []string{filepath.Dir(filepath.Dir(d.Runtime)), filepath.Dir(d.Runtime), d.Runtime} {
			if err := os.Chmod(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(d.Socket(), 0o666); err != nil {
			t.Fatal(err)
		}
		out, err := run(ctx, envDialSocket+"="+d.Socket()).Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(out), "error:") || strings.Contains(string(out), "permission denied") {
			t.Errorf("another user's request to the daemon: %s, want the connection closed", out)
		}
	})
}

// DaemonRunningUnchecked reports whether anything answers on d's socket, whoever runs it.
func DaemonRunningUnchecked(d Dirs) bool {
	c, err := net.DialTimeout("unix", d.Socket(), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
