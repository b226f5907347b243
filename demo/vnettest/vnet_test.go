// Package vnettest is the end-to-end test of virtual networking mode: the client daemon runs inside
// a network namespace of its own with a real TUN device, the node and the Azure emulator outside it.
// It lives in its own test binary because MSAL caches managed-identity tokens per process.
package vnettest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/vnet"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

func TestMain(m *testing.M) {
	vnet.RunCLIIfAsked() // the daemon in the namespace is this binary acting as the ferry CLI
	runAttackIfAsked()   // or an attacker of the helper (helper_test.go)
	os.Exit(m.Run())
}

func need(t *testing.T) {
	t.Helper()
	if err := vnet.Check("psql", "dig"); err != nil {
		t.Skipf("virtual networking end-to-end test skipped: %v (run as root with iproute2, postgresql-client and dnsutils to include it)", err)
	}
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// netns is vnet.Netns with test helpers that fail the test.
type netns struct{ *vnet.Netns }

func newNetns(t *testing.T) *netns {
	t.Helper()
	n, err := vnet.NewNetns(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &netns{n}
}

func (n *netns) exec(t *testing.T, args ...string) string {
	t.Helper()
	out, err := n.Exec(context.Background(), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (n *netns) snapshot(t *testing.T) string {
	t.Helper()
	s, err := n.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// daemon is a ferry CLI process (daemon or helper) inside the namespace.
type daemon struct{ *vnet.Process }

func startDaemon(t *testing.T, n *netns, dirs client.Dirs) *daemon {
	t.Helper()
	p, err := n.StartDaemon(context.Background(), dirs)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{p}
	t.Cleanup(func() { d.stop(t, syscall.SIGKILL) })
	return d
}

// startProcess runs argv (a binary acting as the ferry CLI) in the namespace; with wait, until the
// daemon at dirs answers.
func startProcess(t *testing.T, n *netns, dirs client.Dirs, env, argv []string, wait bool) *daemon {
	t.Helper()
	p, err := n.Start(dirs, env, argv)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{p}
	t.Cleanup(func() { d.stop(t, syscall.SIGKILL) })
	if wait {
		if err := p.WaitReady(context.Background(), dirs, 60*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func (d *daemon) stop(t *testing.T, sig syscall.Signal) {
	if err := d.Stop(sig, 20*time.Second); err != nil {
		t.Error(err)
	}
}

func TestVirtualNetworking(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{LoopbackIP: demo.RandomLoopbackIP(), NodeConfig: func(c *node.Config) {
		c.AllowedServerHosts = append(c.AllowedServerHosts, "127.0.0.1") // dead-pg and idle-pg below
	}})

	// A resource whose server never answers (a listener nobody accepts from), and one that stays
	// disconnected.
	blackhole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blackhole.Close() })
	api := env.Daemon.API()
	for _, name := range []string{"dead-pg", "idle-pg"} {
		r := resource.New(name)
		r.Hostname = "127.0.0.1"
		r.Port = blackhole.Addr().(*net.TCPAddr).Port
		r.Database, r.Username = demo.Database, demo.Role
		r.ManagedIdentityClientID = demo.ClientID
		r.Subdomain = name
		r.BindInterface = demo.RandomLoopbackIP()
		if _, err := api.AddDatasource(ctx, r); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
	}
	settings, err := api.Settings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := api.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vn := map[string]string{}
	for _, r := range rs {
		vn[r.Name] = r.VNAddress
	}

	// A second device of the admin, for the daemon in the namespace: it reaches the node's
	// WireGuard port through the veth pair.
	n := newNetns(t)
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := n.Login(ctx, env.Node, dirs, node.DefaultAdmin, "netns"); err != nil {
		t.Fatal(err)
	}

	before := n.snapshot(t)
	d := startDaemon(t, n, dirs)
	ctl := client.NewControl(dirs)
	domain := settings.DNSDomain
	alias := demo.ResourceName + "." + domain

	t.Run("connect prints alias:port", func(t *testing.T) {
		rsc, err := ctl.Connect(ctx, demo.ResourceName)
		if err != nil {
			t.Fatal(err)
		}
		_, vnPort, _ := net.SplitHostPort(vn[demo.ResourceName])
		if want := net.JoinHostPort(alias, vnPort); rsc.Address != want {
			t.Errorf("address %q, want %q", rsc.Address, want)
		}
		if _, err := ctl.Connect(ctx, "dead-pg"); err != nil {
			t.Fatal(err)
		}
		ferry := func(args ...string) string {
			cmd := exec.CommandContext(ctx, os.Args[0], args...)
			cmd.Env = append(os.Environ(), vnet.EnvRunCLI+"=1", client.EnvConfigDir+"="+dirs.Config, client.EnvRuntimeDir+"="+dirs.Runtime)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("ferry %v: %v\n%s", args, err, out)
			}
			return string(out)
		}
		if out := ferry("status"); !strings.Contains(out, alias+":5432") {
			t.Errorf("ferry status does not show %s:5432:\n%s", alias, out)
		}
		if out := ferry("connect", demo.ResourceName, "--env"); !strings.Contains(out, "export PGHOST="+alias+"\n") || !strings.Contains(out, "export PGPORT=5432\n") {
			t.Errorf("ferry connect --env:\n%s", out)
		}
		status, err := ctl.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range status.Resources {
			_, idlePort, _ := net.SplitHostPort(vn["idle-pg"])
			if r.Name == "idle-pg" && (r.Connected || r.Address != net.JoinHostPort("idle-pg."+domain, idlePort)) {
				t.Errorf("status of idle-pg: %+v", r)
			}
		}
	})

	t.Run("psql by VN IP", func(t *testing.T) {
		host, p, _ := net.SplitHostPort(vn[demo.ResourceName])
		out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable", host, p, demo.Database, demo.Role), "select current_user || '@' || current_database()")
		if err != nil || out != demo.Role+"@"+demo.Database {
			t.Fatalf("psql: %v: %s", err, out)
		}
	})

	t.Run("psql by alias through the OS resolver configuration", func(t *testing.T) {
		out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=5432 dbname=%s user=%s sslmode=disable", alias, demo.Database, demo.Role), "select 40 + 2")
		if err != nil || out != "42" {
			t.Fatalf("psql: %v: %s", err, out)
		}
		// getent uses the same libc path as psql: the answer came from Ferry's resolver.
		got := n.exec(t, "getent", "ahostsv4", alias)
		if host, _, _ := net.SplitHostPort(vn[demo.ResourceName]); !strings.HasPrefix(got, host+" ") {
			t.Errorf("getent %s: %q", alias, got)
		}
	})

	resolverIP := resource.ResolverAddress(mustPrefix(t, settings.VNSubnet)).String()
	t.Run("dig against the resolver on the TUN", func(t *testing.T) {
		tests := []struct {
			args   []string
			status string
			want   string
		}{
			{[]string{alias, "A"}, "NOERROR", "ANSWER: 1,"},
			{[]string{alias, "AAAA"}, "NOERROR", "ANSWER: 0, AUTHORITY: 1"},
			{[]string{"nosuch." + domain, "A"}, "NXDOMAIN", "AUTHORITY: 1"},
			{[]string{strings.ToUpper(alias[:5]) + alias[5:], "A"}, "NOERROR", "\n" + strings.ToUpper(alias[:5]) + alias[5:] + ". 5 IN\tA"},
			{[]string{"+tcp", alias, "A"}, "NOERROR", "ANSWER: 1,"},
			{[]string{"+bufsize=1232", alias, "A"}, "NOERROR", "; EDNS: version: 0"},
		}
		for _, tc := range tests {
			out := n.exec(t, append([]string{"dig", "@" + resolverIP, "+time=2", "+tries=1"}, tc.args...)...)
			if !strings.Contains(out, "status: "+tc.status) || !strings.Contains(out, tc.want) {
				t.Errorf("dig %v: want %s and %q\n%q", tc.args, tc.status, tc.want, out)
			}
		}
	})

	t.Run("disconnected resource answers RST", func(t *testing.T) {
		host, p, _ := net.SplitHostPort(vn["idle-pg"])
		start := time.Now()
		out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=%s dbname=x user=x sslmode=disable", host, p), "select 1")
		if err == nil || !strings.Contains(out, "Connection refused") {
			t.Fatalf("psql to a disconnected resource: %v: %s (want Connection refused: a RST)", err, out)
		}
		t.Logf("refused after %v", time.Since(start))
	})

	t.Run("100 attempts to a dead server leave a healthy resource alone", func(t *testing.T) {
		host, p, _ := net.SplitHostPort(vn["dead-pg"])
		stuck := exec.CommandContext(ctx, "ip", "netns", "exec", n.Name, "bash", "-c",
			fmt.Sprintf(`for i in $(seq 100); do (exec 3<>/dev/tcp/%s/%s; printf '\0\0\0\x08\x04\xd2\x16\x2f' >&3; sleep 20) 2>/dev/null & done; wait`, host, p))
		if err := stuck.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = stuck.Process.Kill(); _ = stuck.Wait() })
		// Let the attempts land first.
		for i := 0; ; i++ {
			est := n.exec(t, "ss", "-Htn", "state", "established", "dst", host)
			c := strings.Count(est, "\n")
			if c >= 100 {
				break
			}
			if i == 100 {
				t.Fatalf("only %d of 100 connections to the dead server are established:\n%s", c, est)
			}
			time.Sleep(100 * time.Millisecond)
		}
		start := time.Now()
		out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=5432 dbname=%s user=%s sslmode=disable", alias, demo.Database, demo.Role), "select 7")
		if err != nil || out != "7" {
			t.Fatalf("psql beside 100 stuck connections: %v: %s", err, out)
		}
		t.Logf("healthy psql took %v beside 100 connections to a dead server", time.Since(start))
	})

	t.Run("exit restores routes and DNS", func(t *testing.T) {
		d.stop(t, syscall.SIGTERM)
		if after := n.snapshot(t); after != before {
			t.Fatalf("after exit:\n%s\nbefore:\n%s\ndaemon log:\n%s", after, before, d.Output())
		}
	})

	t.Run("kill -9 then a new start restores them", func(t *testing.T) {
		d := startDaemon(t, n, dirs)
		if rc, _ := os.ReadFile(n.ResolvConfPath); !strings.Contains(string(rc), "nameserver "+resolverIP) {
			t.Fatalf("resolv.conf not managed while running:\n%s", rc)
		}
		d.stop(t, syscall.SIGKILL)
		rc, _ := os.ReadFile(n.ResolvConfPath)
		t.Logf("after kill -9 (the TUN and its route vanish with the process; resolv.conf still edited):\n%s", rc)
		if routes := n.exec(t, "ip", "-4", "route", "show", "table", "all"); strings.Contains(routes, "ferry0") {
			t.Errorf("route left after kill -9:\n%s", routes)
		}
		d = startDaemon(t, n, dirs)
		// The restored connection still works after the restart.
		out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=5432 dbname=%s user=%s sslmode=disable", alias, demo.Database, demo.Role), "select 1")
		if err != nil || out != "1" {
			t.Errorf("psql after restart: %v: %s\n%s", err, out, d.Output())
		}
		d.stop(t, syscall.SIGTERM)
		if after := n.snapshot(t); after != before {
			t.Fatalf("after kill -9, restart and exit:\n%s\nbefore:\n%s\ndaemon log:\n%s", after, before, d.Output())
		}
	})

	t.Run("unprivileged client through vnet-helper", func(t *testing.T) {
		// Everything the unprivileged daemon touches must be reachable by its user.
		shared, bin, udirs := sharedDir(t, "ferry-vnet-helper-")
		ust, err := n.Login(ctx, env.Node, udirs, node.DefaultAdmin, "netns-user")
		if err != nil {
			t.Fatal(err)
		}
		ust.Connected = []string{demo.ResourceName}
		if err := client.SaveState(udirs, ust); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(udirs.Runtime, 0o700); err != nil {
			t.Fatal(err)
		}
		sh(t, "chown", "-R", fmt.Sprint(nobody), udirs.Config, udirs.Runtime)
		sock := filepath.Join(shared, "helper", "vnet.sock")
		helper := startProcess(t, n, udirs, nil, []string{bin, "vnet-helper", "--user", fmt.Sprint(nobody),
			"--subnet", settings.VNSubnet, "--domain", settings.DNSDomain, "--allow-resolv-conf", "--socket", sock, "--state", filepath.Join(shared, "helper-state")}, false)
		for i := 0; ; i++ {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if i > 100 {
				t.Fatalf("helper did not start:\n%s", helper.Output())
			}
			time.Sleep(100 * time.Millisecond)
		}
		d := startProcess(t, n, udirs, []string{client.EnvVNetHelper + "=" + sock},
			[]string{"setpriv", "--reuid", fmt.Sprint(nobody), "--regid", fmt.Sprint(nobody), "--clear-groups", bin, "daemon", "--mode", client.ModeVirtualNetworking}, false)
		// Ready when psql gets through: the daemon's control socket is nobody's, which a client
		// running as root rightly refuses to trust, so it is not polled.
		var out string
		for deadline := time.Now().Add(60 * time.Second); ; {
			out, err = n.Psql(ctx, fmt.Sprintf("host=%s port=5432 dbname=%s user=%s sslmode=disable", alias, demo.Database, demo.Role), "select 'helper'")
			if err == nil && out == "helper" {
				break
			}
			select {
			case <-d.Done():
			default:
				if time.Now().Before(deadline) {
					time.Sleep(500 * time.Millisecond)
					continue
				}
			}
			t.Fatalf("psql through the helper's TUN: %v: %s\ndaemon:\n%s\nhelper:\n%s", err, out, d.Output(), helper.Output())
		}
		d.stop(t, syscall.SIGKILL) // the helper restores DNS when the client's connection drops
		deadline := time.Now().Add(10 * time.Second)
		for n.snapshot(t) != before && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if after := n.snapshot(t); after != before {
			t.Fatalf("after the unprivileged client was killed:\n%s\nbefore:\n%s\nhelper:\n%s", after, before, helper.Output())
		}
		helper.stop(t, syscall.SIGTERM)
	})
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
