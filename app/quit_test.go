package app_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
)

// startXvfb starts a virtual X server and returns its DISPLAY.
func startXvfb(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("Xvfb"); err != nil {
		t.Skip("Xvfb is not installed (apt-get install xvfb)")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("Xvfb", "-displayfd", "3", "-screen", "0", "1280x800x24", "-nolisten", "tcp")
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start Xvfb: %v", err)
	}
	w.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		t.Fatalf("Xvfb gave no display number: %v", err)
	}
	return ":" + strings.TrimSpace(line)
}

// syncBuffer is a bytes.Buffer safe for the process's output copier and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// watcher is a minimal tray host: it owns org.kde.StatusNotifierWatcher on the session bus and
// accepts item registrations, as a desktop's tray does (StatusNotifierItem specification).
type watcher struct{ items []string }

func (w *watcher) RegisterStatusNotifierItem(service string) *dbus.Error {
	w.items = append(w.items, service)
	return nil
}

func startTrayHost(t *testing.T, addr string) {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatalf("connect to the session bus: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.Export(&watcher{}, "/StatusNotifierWatcher", "org.kde.StatusNotifierWatcher"); err != nil {
		t.Fatal(err)
	}
	if r, err := conn.RequestName("org.kde.StatusNotifierWatcher", dbus.NameFlagDoNotQueue); err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own org.kde.StatusNotifierWatcher: %v %v", r, err)
	}
}

// startSessionBus starts a private D-Bus session bus and returns its address.
func startSessionBus(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		t.Skip("dbus-daemon is not installed (apt-get install dbus)")
	}
	cmd := exec.Command("dbus-daemon", "--session", "--nofork", "--print-address=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dbus-daemon: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon printed no address: %v", err)
	}
	return strings.TrimSpace(addr)
}

func buildFerry(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ferry")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build ferry: %v\n%s", err, out)
	}
	return bin
}

// TestQuitsCleanly runs the real desktop app (the ferry binary without arguments) under Xvfb with and
// without a D-Bus session bus, enrolled (the app starts its own daemon) and not, and checks that
// SIGTERM ends it with exit status 0 and no panic.
func TestQuitsCleanly(t *testing.T) {
	display := startXvfb(t)
	bin := buildFerry(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), NoResource: true})
	enrolled := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	tok, err := env.Node.EnrollToken(ctx, node.DefaultAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Login(ctx, enrolled, tok, "desktop"); err != nil {
		t.Fatal(err)
	}
	fresh := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	bus := startSessionBus(t)
	trayBus := startSessionBus(t)
	startTrayHost(t, trayBus)

	tests := []struct {
		name     string
		bus      string
		dirs     client.Dirs
		enrolled bool
		banner   string
	}{
		{"no session bus, enrolled", "", enrolled, true, "no D-Bus session bus"},
		{"session bus without a tray host, enrolled", bus, enrolled, true, "no StatusNotifierWatcher"},
		{"no session bus, not enrolled", "", fresh, false, "no D-Bus session bus"},
		{"session bus with a tray host, enrolled", trayBus, enrolled, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "DISPLAY=" + display,
				client.EnvConfigDir + "=" + tc.dirs.Config, client.EnvRuntimeDir + "=" + tc.dirs.Runtime}
			if tc.bus != "" {
				cmd.Env = append(cmd.Env, "DBUS_SESSION_BUS_ADDRESS="+tc.bus)
			}
			var out syncBuffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			ready := time.Now().Add(20 * time.Second)
			for time.Now().Before(ready) && !strings.Contains(out.String(), tc.banner) {
				time.Sleep(100 * time.Millisecond)
			}
			if tc.enrolled { // the app started its own daemon: the CLI's control socket answers
				for time.Now().Before(ready) && !client.DaemonRunning(tc.dirs) {
					time.Sleep(100 * time.Millisecond)
				}
				// The daemon reaches the node in the background: poll its status until it has.
				var st client.Status
				var err error
				reach := time.Now().Add(30 * time.Second)
				for {
					sctx, scancel := context.WithTimeout(ctx, 15*time.Second)
					st, err = client.NewControl(tc.dirs).Status(sctx)
					scancel()
					if (err == nil && st.NodeReachable) || !time.Now().Before(reach) {
						break
					}
					time.Sleep(200 * time.Millisecond)
				}
				if err != nil || st.User != node.DefaultAdmin || !st.NodeReachable {
					t.Errorf("the app's daemon: %+v %v", st, err)
				}
			}
			time.Sleep(time.Second)
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("the app did not quit within 20 s of SIGTERM:\n%s", out.String())
			}
			if err != nil || cmd.ProcessState.ExitCode() != 0 || strings.Contains(out.String(), "panic") {
				t.Fatalf("exit %v (%d):\n%s", err, cmd.ProcessState.ExitCode(), out.String())
			}
			if tc.banner == "" && strings.Contains(out.String(), "no system tray") {
				t.Errorf("the app found no tray although a tray host runs:\n%s", out.String())
			}
			if !strings.Contains(out.String(), tc.banner) {
				t.Errorf("the app did not say why it has no tray (%q):\n%s", tc.banner, out.String())
			}
			if tc.enrolled && client.DaemonRunning(tc.dirs) {
				t.Error("the app's daemon still answers after the app quit")
			}
			t.Logf("exit 0; output:\n%s", out.String())
		})
	}
}

// TestQuitWhileThePointerMoves: SIGTERM while the user's pointer moves over the window ends the
// app with status 0. Closing the windows before the event loop stops (fyne's App.Quit) let a
// pointer event already queued reach a closed window, whose handler dereferenced its nil view
// (a panic from cli.Main through the app's Run, seen on a loaded machine).
func TestQuitWhileThePointerMoves(t *testing.T) {
	display := startXvfb(t)
	bin := buildFerry(t)
	p := openPointer(t, display)
	const runs = 15
	for i := range runs {
		home := t.TempDir()
		cmd := exec.Command(bin)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "DISPLAY=" + display, "DBUS_SESSION_BUS_ADDRESS=disabled:",
			client.EnvConfigDir + "=" + filepath.Join(home, "cfg"), client.EnvRuntimeDir + "=" + filepath.Join(home, "run")}
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := time.Now().Add(20 * time.Second)
		for time.Now().Before(ready) && !strings.Contains(out.String(), "no system tray") {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(700 * time.Millisecond) // the window is mapped
		stop := make(chan struct{})
		swept := make(chan struct{})
		go func() { defer close(swept); p.sweep(stop) }()
		time.Sleep(300 * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
		select {
		case err = <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			close(stop)
			<-swept
			t.Fatalf("run %d: the app did not quit within 20 s of SIGTERM:\n%s", i, out.String())
		}
		close(stop)
		<-swept
		if err != nil || strings.Contains(out.String(), "panic") {
			t.Fatalf("run %d: exit %v:\n%s", i, err, out.String())
		}
	}
}
