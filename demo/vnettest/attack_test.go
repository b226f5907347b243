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
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/vnet"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// abandonConnects makes n connections to addr from inside the namespace and closes each while it
// is still being set up, as a client that gave up (or a port scanner) does: the client's SYN-ACK
// then meets no socket and gets a RST.
const abandonConnects = `
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((host, port))
    s.close()
`

// TestVNAbandonedConnects: connections to a virtual-networking address that their local client
// abandons before the handshake completes (any local user can make them: the route is the
// machine's) leave nothing behind: the resource still answers and the daemon stops at once on
// SIGTERM, instead of waiting forever for sessions that never started.
func TestVNAbandonedConnects(t *testing.T) {
	need(t)
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("needs python3 to abandon connections half way")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := startDemo(t)
	addVNResource(t, ctx, env, resource.ModeVirtualNetworking)
	n := newNetns(t)
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := n.Login(ctx, env.Node, dirs, node.DefaultAdmin, "netns-abandon"); err != nil {
		t.Fatal(err)
	}
	d := startProcess(t, n, dirs, nil, []string{os.Args[0], "daemon"}, true)
	r, err := client.NewControl(dirs).Connect(ctx, vnResource)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, d.Output())
	}
	if r.Serving != client.ModeVirtualNetworking {
		t.Fatalf("%s served as %q, want virtual networking", vnResource, r.Serving)
	}
	host, port, err := net.SplitHostPort(r.VNAddress)
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "abandon.py")
	if err := os.WriteFile(script, []byte(abandonConnects), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := n.Command(ctx, "python3", script, host, port, "40").CombinedOutput(); err != nil {
		t.Fatalf("abandoned connects: %v\n%s", err, out)
	}
	time.Sleep(2 * time.Second) // let the daemon's dials to the node for them complete
	out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable", host, port, demo.Database, demo.Role), "select 'still here'")
	if err != nil || strings.TrimSpace(out) != "still here" {
		t.Fatalf("psql after the abandoned connects: %v: %s\n%s", err, out, d.Output())
	}
	if err := d.Stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("after abandoned connects: %v\n%s", err, d.Output())
	}
}

// TestRevokeEndsBothModes: one daemon serves a loopback resource and a virtual-networking one; a
// psql session runs on each; revoking the grant that covers both ends both sessions with a FATAL
// naming the revocation, and neither resource takes a new session afterwards.
func TestRevokeEndsBothModes(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := startDemo(t)
	admin := env.Daemon.API()
	var names []string
	for _, mode := range []string{resource.ModeLoopback, resource.ModeVirtualNetworking} {
		r := resource.New("dev-" + mode)
		r.Hostname = env.Emu.Hostname()
		r.Database, r.Username = demo.Database, demo.Role
		r.ManagedIdentityClientID = demo.ClientID
		r.Subdomain = "dev-" + mode
		r.BindInterface = demo.RandomLoopbackIP()
		r.ConnectivityMode = mode
		r.Tags = map[string]string{"env": "dev"}
		if _, err := admin.AddDatasource(ctx, r); err != nil {
			t.Fatal(err)
		}
		names = append(names, r.Name)
	}
	if err := admin.AddRole(ctx, "developers"); err != nil {
		t.Fatal(err)
	}
	if err := admin.Grant(ctx, "developers", "tag:env=dev"); err != nil {
		t.Fatal(err)
	}
	if err := admin.AddUser(ctx, api.NewUser{Name: "engineer", Roles: []string{"developers"}}); err != nil {
		t.Fatal(err)
	}
	n := newNetns(t)
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := n.Login(ctx, env.Node, dirs, "engineer", "netns-revoke"); err != nil {
		t.Fatal(err)
	}
	d := startProcess(t, n, dirs, nil, []string{os.Args[0], "daemon"}, true)
	ctl := client.NewControl(dirs)
	type session struct {
		cmd *exec.Cmd
		out *bytes.Buffer
	}
	var sessions []session
	for i, name := range names {
		r, err := ctl.Connect(ctx, name)
		if err != nil {
			t.Fatalf("connect %s: %v\n%s", name, err, d.Output())
		}
		if want := []string{client.ModeLoopback, client.ModeVirtualNetworking}[i]; r.Serving != want {
			t.Fatalf("%s served as %q, want %q", name, r.Serving, want)
		}
		host, port, _ := net.SplitHostPort(r.Address)
		cmd := n.Command(ctx, "psql", fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable", host, port, demo.Database, demo.Role), "-X", "-c", "select pg_sleep(60)")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, session{cmd, &out})
	}
	t.Cleanup(func() {
		for _, s := range sessions {
			_ = s.cmd.Process.Kill()
		}
	})
	// Both statements run on the server before the revocation.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if n := runningSleeps(t, ctx, env, "select pg_sleep(60)"); n == "2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("psql sessions not both running: %q, %q\n%s", sessions[0].out.String(), sessions[1].out.String(), d.Output())
		}
	}
	if err := admin.Revoke(ctx, "developers", "tag:env=dev"); err != nil {
		t.Fatal(err)
	}
	for i, s := range sessions {
		done := make(chan error, 1)
		go func() { done <- s.cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(s.out.String(), "FATAL") || !strings.Contains(s.out.String(), "revoked") {
				t.Errorf("psql on %s after the revocation: %v: %q, want a FATAL about the revocation", names[i], err, s.out.String())
			}
		case <-time.After(30 * time.Second):
			t.Errorf("psql on %s still runs 30 s after the revocation", names[i])
		}
	}
	for _, name := range names {
		r, err := ctl.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range r.Resources {
			if row.Name == name {
				t.Errorf("%s is still listed to the engineer after the revocation: %+v", name, row)
			}
		}
	}
	if err := d.Stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("stop: %v\n%s", err, d.Output())
	}
}

// runningSleeps counts the server's backends running the statement sql.
func runningSleeps(t *testing.T, ctx context.Context, env *demo.Env, sql string) string {
	t.Helper()
	c, err := pgconn.Connect(ctx, env.Emu.SuperuserConnString()+" dbname="+demo.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, "select count(*) from pg_stat_activity where query = '"+strings.ReplaceAll(sql, "'", "''")+"' and state = 'active'").ReadAll()
	if err != nil || len(res) == 0 || len(res[0].Rows) == 0 {
		t.Fatalf("count running statements: %v", err)
	}
	return string(res[0].Rows[0][0])
}

// TestModeFlipMovesConnectedResource: a daemon that serves only loopback resources (no TUN) has
// one of them changed to virtual networking by an administrator while a psql session runs on it:
// the daemon brings up the TUN by itself and moves the resource to its alias, the running session
// goes on to its end, and a changed-back resource returns to loopback; the daemon then stops
// cleanly and leaves the namespace as it was.
func TestModeFlipMovesConnectedResource(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	env := startDemo(t)
	admin := env.Daemon.API()
	n := newNetns(t)
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := n.Login(ctx, env.Node, dirs, node.DefaultAdmin, "netns-flip"); err != nil {
		t.Fatal(err)
	}
	before := n.snapshot(t)
	d := startProcess(t, n, dirs, nil, []string{os.Args[0], "daemon"}, true)
	ctl := client.NewControl(dirs)
	r, err := ctl.Connect(ctx, demo.ResourceName)
	if err != nil || r.Serving != client.ModeLoopback {
		t.Fatalf("connect: %+v, %v\n%s", r, err, d.Output())
	}
	psql := func(addr, sql string) *exec.Cmd {
		host, port, _ := net.SplitHostPort(addr)
		return n.Command(ctx, "psql", fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable connect_timeout=10", host, port, demo.Database, demo.Role), "-X", "-A", "-t", "-c", sql)
	}
	running := psql(r.Address, "select pg_sleep(8), 'kept'")
	var runOut bytes.Buffer
	running.Stdout, running.Stderr = &runOut, &runOut
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = running.Process.Kill() })
	for deadline := time.Now().Add(30 * time.Second); runningSleeps(t, ctx, env, "select pg_sleep(8), 'kept'") != "1"; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the session on loopback does not run: %q", runOut.String())
		}
	}

	setMode := func(mode string) {
		t.Helper()
		all, err := admin.Datasources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range all.Datasources {
			if x.Name == demo.ResourceName {
				x.ConnectivityMode = mode
				if _, err := admin.UpdateDatasource(ctx, x.Name, x); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
		t.Fatalf("%s not in the catalog", demo.ResourceName)
	}
	waitServed := func(mode string) client.ResourceStatus {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			st, err := ctl.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, row := range st.Resources {
				if row.Name == demo.ResourceName && row.Connected && row.Serving == mode && !row.Fallback {
					return row
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not served in %s mode after the change: %+v\n%s", demo.ResourceName, mode, st, d.Output())
			}
		}
	}
	setMode(resource.ModeVirtualNetworking)
	vn := waitServed(client.ModeVirtualNetworking)
	if out, err := psql(vn.Address, "select 'moved'").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "moved" {
		t.Fatalf("psql at %s after the move: %v: %s\n%s", vn.Address, err, out, d.Output())
	}
	if err := running.Wait(); err != nil || !strings.Contains(runOut.String(), "kept") {
		t.Errorf("the session opened before the move: %v: %q, want it to finish", err, runOut.String())
	}

	setMode(resource.ModeLoopback)
	lo := waitServed(client.ModeLoopback)
	if out, err := psql(lo.Address, "select 'back'").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "back" {
		t.Fatalf("psql at %s after moving back: %v: %s\n%s", lo.Address, err, out, d.Output())
	}
	if err := d.Stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("stop: %v\n%s", err, d.Output())
	}
	if after := n.snapshot(t); after != before {
		t.Errorf("after exit:\n%s\nbefore:\n%s", after, before)
	}
}

// TestStatusAddressWithoutSystemDNS: when the client has its TUN but the system's DNS could not be
// pointed at Ferry's resolver (here the helper may not edit resolv.conf and there is no
// systemd-resolved), the address that connect and status give (and the app copies) is the one
// that works, the VN IP, not an alias that nothing on the machine resolves.
func TestStatusAddressWithoutSystemDNS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	u := setUpUser(t, ctx, "ferry-nodns-", "netns-nodns")
	settings, n, shared, bin, dirs, sock := u.settings, u.n, u.shared, u.bin, u.dirs, u.sock
	// No --allow-resolv-conf, and the namespace has no systemd-resolved: DNS is refused.
	helper := startProcess(t, n, dirs, nil, []string{bin, "vnet-helper", "--user", fmt.Sprint(nobody),
		"--subnet", settings.VNSubnet, "--domain", settings.DNSDomain, "--socket", sock, "--state", filepath.Join(shared, "helper-state")}, false)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the helper did not start:\n%s", helper.Output())
		}
	}
	asNobody := []string{"setpriv", "--reuid", fmt.Sprint(nobody), "--regid", fmt.Sprint(nobody), "--clear-groups", bin}
	d := startProcess(t, n, dirs, []string{client.EnvVNetHelper + "=" + sock}, append(asNobody, "daemon"), false)
	t.Setenv(client.EnvConfigDir, dirs.Config)
	t.Setenv(client.EnvRuntimeDir, dirs.Runtime)
	t.Setenv(vnet.EnvRunCLI, "1")
	var out []byte
	var err error
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		if out, err = n.Command(ctx, append(asNobody, "connect", vnResource)...).CombinedOutput(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect: %v: %s\ndaemon:\n%s", err, out, d.Output())
		}
	}
	st, err := n.Command(ctx, append(asNobody, "status")...).CombinedOutput()
	if err != nil {
		t.Fatalf("status: %v\n%s", err, st)
	}
	if l := statusLine(string(st), vnResource); !strings.Contains(l, "  virtual networking  ") {
		t.Fatalf("%s not served through the TUN:\n%s\ndaemon:\n%s", vnResource, st, d.Output())
	}
	addr := strings.TrimSpace(string(out))
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("connect printed %q", addr)
	}
	if got, err := n.Psql(ctx, fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable connect_timeout=10", host, port, demo.Database, demo.Role), "select 'reachable'"); err != nil || got != "reachable" {
		t.Errorf("psql at the address connect printed, %s: %v: %s\ndaemon:\n%s", addr, err, got, d.Output())
	}
	if l := statusLine(string(st), vnResource); !strings.Contains(l, addr) {
		t.Errorf("ferry status does not give %s:\n%s", addr, st)
	}
}

// TestRootClientRefusesOverlappingSubnet: an administrator sets the org's VN subnet over a network
// the laptop already routes (here the namespace's own link, as a LAN would be). A client running
// as root creates its TUN itself, without the helper's check: it must refuse the subnet as the
// helper does, serve the resource on loopback, say why, and leave the machine's routes alone.
func TestRootClientRefusesOverlappingSubnet(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := startDemo(t)
	n := newNetns(t)
	if !strings.HasPrefix(n.NSIP, "10.") {
		t.Fatalf("the namespace's address %s is not in 10.0.0.0/8", n.NSIP)
	}
	if _, err := env.Daemon.API().UpdateSettings(ctx, api.Settings{VNSubnet: "10.0.0.0/8"}); err != nil {
		t.Fatal(err)
	}
	addVNResource(t, ctx, env, resource.ModeVirtualNetworking)
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := n.Login(ctx, env.Node, dirs, node.DefaultAdmin, "netns-overlap"); err != nil {
		t.Fatal(err)
	}
	before := n.snapshot(t)
	d := startProcess(t, n, dirs, nil, []string{os.Args[0], "daemon"}, true)
	ctl := client.NewControl(dirs)
	r, err := ctl.Connect(ctx, vnResource)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, d.Output())
	}
	st, err := ctl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Serving != client.ModeLoopback || !r.Fallback || !strings.Contains(st.VNUnavailable, "overlaps") {
		t.Errorf("with the org's subnet over the machine's link: served %q (fallback %v), status says %q; want the loopback fallback and why\n%s",
			r.Serving, r.Fallback, st.VNUnavailable, d.Output())
	}
	if routes, err := n.Exec(ctx, "ip", "-4", "route", "show", "table", "all"); err != nil || strings.Contains(routes, "10.0.0.0/8") {
		t.Errorf("routes of the namespace with the client running (%v):\n%s", err, routes)
	}
	if err := d.Stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("stop: %v\n%s", err, d.Output())
	}
	if after := n.snapshot(t); after != before {
		t.Errorf("after exit:\n%s\nbefore:\n%s", after, before)
	}
}

// TestHelperStoppedThenBack: an ordinary user's client serves a resource through the helper's TUN;
// root stops the helper, which deletes the TUN. The client must not go on reporting the resource at
// an alias that leads nowhere: it serves it on loopback as a fallback and says why, and once the
// helper runs again it moves it back to its alias by itself.
func TestHelperStoppedThenBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	u := setUpUser(t, ctx, "ferry-helper-gone-", "netns-helper-gone")
	settings, n, shared, bin, dirs, sock := u.settings, u.n, u.shared, u.bin, u.dirs, u.sock
	startHelper := func() *daemon {
		h := startProcess(t, n, dirs, nil, []string{bin, "vnet-helper", "--user", fmt.Sprint(nobody),
			"--subnet", settings.VNSubnet, "--domain", settings.DNSDomain, "--allow-resolv-conf", "--socket", sock, "--state", filepath.Join(shared, "helper-state")}, false)
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if _, err := os.Stat(sock); err == nil {
				return h
			}
			if time.Now().After(deadline) {
				t.Fatalf("the helper did not start:\n%s", h.Output())
			}
		}
	}
	helper := startHelper()
	asNobody := []string{"setpriv", "--reuid", fmt.Sprint(nobody), "--regid", fmt.Sprint(nobody), "--clear-groups", bin}
	d := startProcess(t, n, dirs, []string{client.EnvVNetHelper + "=" + sock}, append(asNobody, "daemon"), false)
	t.Setenv(client.EnvConfigDir, dirs.Config)
	t.Setenv(client.EnvRuntimeDir, dirs.Runtime)
	t.Setenv(vnet.EnvRunCLI, "1")
	cli := func(args ...string) (string, error) {
		out, err := n.Command(ctx, append(asNobody, args...)...).CombinedOutput()
		return string(out), err
	}
	alias := vnResource + "." + settings.DNSDomain
	psqlAt := func(addr, want string) {
		t.Helper()
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("address %q: %v", addr, err)
		}
		if out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable connect_timeout=10", host, port, demo.Database, demo.Role), "select '"+want+"'"); err != nil || out != want {
			t.Fatalf("psql at %s (%s): %v: %s\ndaemon:\n%s", addr, want, err, out, d.Output())
		}
	}
	// waitServed waits until status says vnResource is served with label, and returns its address.
	waitServed := func(label string) string {
		t.Helper()
		var st string
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			_, _ = cli("connect", vnResource)
			st, _ = cli("status")
			// Connected, not only shown in that mode: a connect sent before the daemon's socket
			// was there did nothing, and a resource not connected is shown in the mode it would get.
			if l := statusLine(st, vnResource); strings.Contains(l, "  "+label+"  ") && len(strings.Fields(l)) > 3 && strings.Fields(l)[3] == "connected" {
				for _, f := range strings.Fields(l) {
					if _, _, err := net.SplitHostPort(f); err == nil {
						return f
					}
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not served as %q:\n%s\ndaemon:\n%s", vnResource, label, st, d.Output())
			}
		}
	}
	if addr := waitServed("virtual networking"); addr != alias+":5432" {
		t.Fatalf("served at %s, want %s:5432", addr, alias)
	}
	psqlAt(alias+":5432", "through the helper")

	helper.stop(t, syscall.SIGTERM)
	addr := waitServed("loopback (no TUN helper)")
	psqlAt(addr, "helper gone")
	if st, _ := cli("status"); !strings.Contains(st, "sudo ferry vnet-helper") {
		t.Errorf("status does not say why nor what to do:\n%s", st)
	}

	startHelper()
	if addr := waitServed("virtual networking"); addr != alias+":5432" {
		t.Fatalf("served at %s after the helper came back, want %s:5432", addr, alias)
	}
	psqlAt(alias+":5432", "helper back")
	d.stop(t, syscall.SIGTERM)
}
