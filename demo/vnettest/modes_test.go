package vnettest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/vnet"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// vnResource is a second resource on the demo's server, set to virtual networking.
const vnResource = "vn-pg"

// addVNResource adds vnResource beside the demo's loopback resource: the same server, its own
// alias and loopback address. mode "" leaves the org's default to the catalog.
func addVNResource(t *testing.T, ctx context.Context, env *demo.Env, mode string) {
	t.Helper()
	r := resource.New(vnResource)
	r.Hostname = env.Emu.Hostname()
	r.Database, r.Username = demo.Database, demo.Role
	r.ManagedIdentityClientID = demo.ClientID
	r.Subdomain = vnResource
	r.BindInterface = demo.RandomLoopbackIP()
	r.ConnectivityMode = mode
	out, err := env.Daemon.API().AddDatasource(ctx, r)
	if err != nil {
		t.Fatalf("add %s: %v", vnResource, err)
	}
	if out.ConnectivityMode != resource.ModeVirtualNetworking {
		t.Fatalf("%s stored in mode %q, want %s", vnResource, out.ConnectivityMode, resource.ModeVirtualNetworking)
	}
}

// ferryCLI runs this binary as the ferry CLI against the daemon at dirs, inside the namespace n
// when n is not nil, and returns its combined output and error.
func ferryCLI(ctx context.Context, n *vnet.Netns, dirs client.Dirs, prefix []string, args ...string) (string, error) {
	argv := append(append(prefix, os.Args[0]), args...)
	if n != nil {
		argv = append([]string{"ip", "netns", "exec", n.Name}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), vnet.EnvRunCLI+"=1", client.EnvConfigDir+"="+dirs.Config, client.EnvRuntimeDir+"="+dirs.Runtime)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// statusLine returns the line of `ferry status` output about name.
func statusLine(out, name string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, name+" ") {
			return l
		}
	}
	return ""
}

// TestPerResourceModes: one daemon, started without --mode, serves a loopback resource on its
// loopback address and a virtual-networking resource on its alias through the TUN at the same time;
// status says how each is served; psql and pgjdbc (the driver inside DBeaver and DataGrip, with the
// JDBC URL the app copies, as copied) reach both.
func TestPerResourceModes(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	env := startDemo(t)
	addVNResource(t, ctx, env, resource.ModeVirtualNetworking)
	settings, err := env.Daemon.API().Settings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if settings.ConnectivityMode != resource.ModeLoopback {
		t.Fatalf("org default %q, want %s: the virtual-networking resource must be the exception", settings.ConnectivityMode, resource.ModeLoopback)
	}

	n := newNetns(t)
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := n.Login(ctx, env.Node, dirs, node.DefaultAdmin, "netns-modes"); err != nil {
		t.Fatal(err)
	}
	before := n.snapshot(t)
	d := startProcess(t, n, dirs, nil, []string{os.Args[0], "daemon"}, true)
	ctl := client.NewControl(dirs)
	alias := vnResource + "." + settings.DNSDomain

	rows := map[string]client.ResourceStatus{}
	for _, name := range []string{demo.ResourceName, vnResource} {
		r, err := ctl.Connect(ctx, name)
		if err != nil {
			t.Fatalf("connect %s: %v\n%s", name, err, d.Output())
		}
		rows[name] = r
	}
	tests := []struct {
		name, serving, label, address string
	}{
		{demo.ResourceName, client.ModeLoopback, "loopback", env.Resource.LoopbackAddress},
		{vnResource, client.ModeVirtualNetworking, "virtual networking", alias + ":5432"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rows[tc.name]
			if r.Serving != tc.serving || r.Fallback || r.Address != tc.address || client.ModeLabel(r) != tc.label {
				t.Errorf("connect: serving %q fallback %v address %q label %q, want %q, %q, %q", r.Serving, r.Fallback, r.Address, client.ModeLabel(r), tc.serving, tc.address, tc.label)
			}
			host, port, _ := net.SplitHostPort(r.Address)
			out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable", host, port, demo.Database, demo.Role), "select 'both at once'")
			if err != nil || out != "both at once" {
				t.Fatalf("psql at %s: %v: %s\n%s", r.Address, err, out, d.Output())
			}
		})
	}
	st, err := ctl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.VNUnavailable != "" {
		t.Errorf("status says virtual networking is unavailable: %s", st.VNUnavailable)
	}
	out, err := ferryCLI(ctx, n.Netns, dirs, nil, "status")
	if err != nil {
		t.Fatalf("ferry status: %v\n%s", err, out)
	}
	for _, tc := range tests {
		if l := statusLine(out, tc.name); !strings.Contains(l, tc.address) || !strings.Contains(l, "  "+tc.label+"  ") {
			t.Errorf("ferry status line of %s lacks %q and mode %q:\n%s", tc.name, tc.address, tc.label, out)
		}
	}
	t.Run("pgjdbc through the alias and the loopback address, URLs as the app copies them", func(t *testing.T) {
		for _, name := range []string{vnResource, demo.ResourceName} {
			url := client.JDBCURL(rows[name])
			if name == vnResource && !strings.HasPrefix(url, "jdbc:postgresql://"+alias+":5432/") {
				t.Errorf("JDBC URL %q does not name the alias %s", url, alias)
			}
			out := runJDBC(t, ctx, n.Netns, url)
			if !strings.Contains(out, "user="+demo.Role+"\n") || !strings.Contains(out, "db="+demo.Database+"\n") || !strings.Contains(out, "answer=42\n") {
				t.Errorf("pgjdbc with %s: %s", url, out)
			}
		}
	})

	d.stop(t, syscall.SIGTERM)
	if after := n.snapshot(t); after != before {
		t.Fatalf("after exit:\n%s\nbefore:\n%s\ndaemon log:\n%s", after, before, d.Output())
	}
}

// TestVNFallbackWithoutTUN: with the org's default set to virtual networking, a client that can
// have no TUN (an ordinary user, no helper) still starts, serves the resource on its loopback
// address, and says so once: the status row's mode, the status's message with the helper command
// (which the app shows as its banner and notification), and `ferry status`.
func TestVNFallbackWithoutTUN(t *testing.T) {
	var asUser []string // the daemon and the CLI run as nobody when this test runs as root
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("setpriv"); err != nil {
			t.Skipf("fallback test skipped: running as root, it needs setpriv (util-linux) to run the client as an ordinary user")
		}
		asUser = []string{"setpriv", "--reuid", fmt.Sprint(nobody), "--regid", fmt.Sprint(nobody), "--clear-groups"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := startDemo(t)
	if _, err := env.Daemon.API().UpdateSettings(ctx, apiSettings(resource.ModeVirtualNetworking)); err != nil {
		t.Fatal(err)
	}
	addVNResource(t, ctx, env, "") // virtual networking by the org's default

	// Everything the client touches must be reachable by its user.
	shared, err := os.MkdirTemp("", "ferry-fallback-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	dirs := client.Dirs{Config: filepath.Join(shared, "cfg"), Runtime: filepath.Join(shared, "run")}
	tok, err := env.Node.EnrollToken(ctx, node.DefaultAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Login(ctx, dirs, tok, "no-tun"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dirs.Runtime, 0o700); err != nil {
		t.Fatal(err)
	}
	if asUser != nil {
		sh(t, "chown", "-R", "65534", dirs.Config, dirs.Runtime)
	}
	bin := filepath.Join(shared, "ferry")
	sh(t, "cp", os.Args[0], bin)
	// The helper's socket does not exist: no helper runs.
	daemon := exec.CommandContext(ctx, bin, "daemon")
	if asUser != nil {
		daemon = exec.CommandContext(ctx, asUser[0], append(asUser[1:], bin, "daemon")...)
	}
	daemon.Env = append(os.Environ(), vnet.EnvRunCLI+"=1", client.EnvConfigDir+"="+dirs.Config, client.EnvRuntimeDir+"="+dirs.Runtime,
		client.EnvVNetHelper+"="+filepath.Join(shared, "no-helper.sock"), client.EnvMode+"=")
	var log syncBuf
	daemon.Stdout, daemon.Stderr = &log, &log
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = daemon.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = daemon.Process.Kill()
		<-exited
	})

	cli := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, args...)
		if asUser != nil {
			cmd = exec.CommandContext(ctx, asUser[0], append(asUser[1:], append([]string{bin}, args...)...)...)
		}
		cmd.Env = append(os.Environ(), vnet.EnvRunCLI+"=1", client.EnvConfigDir+"="+dirs.Config, client.EnvRuntimeDir+"="+dirs.Runtime)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	var addr string
	for deadline := time.Now().Add(60 * time.Second); ; {
		out, err := cli("connect", vnResource)
		if err == nil {
			addr = strings.TrimSpace(out)
			break
		}
		select {
		case <-exited:
			t.Fatalf("the daemon failed to start without a TUN: %v\n%s", exitErr, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ferry connect %s: %v: %s\ndaemon:\n%s", vnResource, err, out, log.String())
		}
		time.Sleep(300 * time.Millisecond)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		t.Fatalf("ferry connect printed %q, want the resource's loopback address", addr)
	}
	out, err := exec.CommandContext(ctx, "psql", fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable connect_timeout=10", host, port, demo.Database, demo.Role),
		"-X", "-A", "-t", "-c", "select 'fallback'").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "fallback" {
		t.Fatalf("psql at the fallback address %s: %v: %s", addr, err, out)
	}

	out2, err := cli("status")
	if err != nil {
		t.Fatalf("ferry status: %v\n%s", err, out2)
	}
	if l := statusLine(out2, vnResource); !strings.Contains(l, addr) || !strings.Contains(l, "loopback (no TUN helper)") {
		t.Errorf("ferry status line of %s lacks %s and mode \"loopback (no TUN helper)\":\n%s", vnResource, addr, out2)
	}
	if l := statusLine(out2, demo.ResourceName); !strings.Contains(l, "  loopback  ") {
		t.Errorf("ferry status line of %s lacks mode \"loopback\":\n%s", demo.ResourceName, out2)
	}
	if c := strings.Count(out2, "sudo ferry vnet-helper"); c != 1 {
		t.Errorf("ferry status names the helper command %d times, want once:\n%s", c, out2)
	}
	if c := strings.Count(log.String(), "Virtual networking is not available"); c != 1 {
		t.Errorf("the daemon said %d times that virtual networking is unavailable, want once:\n%s", c, log.String())
	}
}

func apiSettings(mode string) api.Settings { return api.Settings{ConnectivityMode: mode} }

// syncBuf is a bytes.Buffer safe for a process's output and the test reading it.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// jdbcJar is pgjdbc as Debian installs it (libpostgresql-jdbc-java).
const jdbcJar = "/usr/share/java/postgresql.jar"

// runJDBC connects pgjdbc with url, exactly as given, from inside the namespace n and returns what
// testdata/JdbcAlias.java printed. It skips the test when pgjdbc or a JDK is missing.
func runJDBC(t *testing.T, ctx context.Context, n *vnet.Netns, url string) string {
	t.Helper()
	if _, err := os.Stat(jdbcJar); err != nil {
		t.Skipf("pgjdbc test skipped: %s missing (apt-get install libpostgresql-jdbc-java default-jdk-headless)", jdbcJar)
	}
	if _, err := exec.LookPath("javac"); err != nil {
		t.Skip("pgjdbc test skipped: javac is not installed (apt-get install default-jdk-headless)")
	}
	dir := t.TempDir()
	if out, err := exec.CommandContext(ctx, "javac", "-d", dir, "-cp", jdbcJar, filepath.Join("testdata", "JdbcAlias.java")).CombinedOutput(); err != nil {
		t.Fatalf("javac: %v\n%s", err, out)
	}
	out, err := n.Command(ctx, "java", "-cp", jdbcJar+":"+dir, "JdbcAlias", url).CombinedOutput()
	if err != nil {
		t.Fatalf("java JdbcAlias %s: %v\n%s", url, err, out)
	}
	return string(out)
}

// TestFallbackThenHelper: an ordinary user's client with no helper serves a virtual-networking
// resource on loopback; once root starts the helper, connecting the resource again (what the
// message says to do) moves it to its alias through the TUN.
func TestFallbackThenHelper(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	u := setUpUser(t, ctx, "ferry-fallback-helper-", "netns-fallback")
	settings, n, shared, bin, dirs, sock := u.settings, u.n, u.shared, u.bin, u.dirs, u.sock
	asNobody := []string{"setpriv", "--reuid", fmt.Sprint(nobody), "--regid", fmt.Sprint(nobody), "--clear-groups", bin}
	d := startProcess(t, n, dirs, []string{client.EnvVNetHelper + "=" + sock}, append(asNobody, "daemon"), false)
	cli := func(args ...string) (string, error) {
		out, err := n.Command(ctx, append(asNobody, args...)...).CombinedOutput()
		return string(out), err
	}
	// n.Command's environment is this process's: point the CLI at the client's directories.
	t.Setenv(client.EnvConfigDir, dirs.Config)
	t.Setenv(client.EnvRuntimeDir, dirs.Runtime)
	t.Setenv(vnet.EnvRunCLI, "1")

	var out string
	var err error
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		if out, err = cli("connect", vnResource); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect without a helper: %v: %s\ndaemon:\n%s", err, out, d.Output())
		}
	}
	if host, _, err := net.SplitHostPort(strings.TrimSpace(out)); err != nil || !net.ParseIP(host).IsLoopback() {
		t.Fatalf("without a helper, connect printed %q, want the loopback address", out)
	}

	helper := startProcess(t, n, dirs, nil, []string{bin, "vnet-helper", "--user", fmt.Sprint(nobody),
		"--subnet", settings.VNSubnet, "--domain", settings.DNSDomain, "--allow-resolv-conf", "--socket", sock, "--state", filepath.Join(shared, "helper-state")}, false)
	alias := vnResource + "." + settings.DNSDomain
	// Connecting again tries the TUN (at most every 10 s) and the resource moves to its alias.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Second) {
		_, _ = cli("connect", vnResource)
		st, _ := cli("status")
		if l := statusLine(st, vnResource); strings.Contains(l, alias+":5432") && strings.Contains(l, "  virtual networking  ") && !strings.Contains(st, "not available") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the helper started, the resource stayed on loopback:\n%s\ndaemon:\n%s\nhelper:\n%s", st, d.Output(), helper.Output())
		}
	}
	if out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=5432 dbname=%s user=%s sslmode=disable", alias, demo.Database, demo.Role), "select 'moved'"); err != nil || out != "moved" {
		t.Fatalf("psql through the alias after the helper started: %v: %s\ndaemon:\n%s", err, out, d.Output())
	}
	d.stop(t, syscall.SIGKILL)
	helper.stop(t, syscall.SIGTERM)
}
