//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
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
	"github.com/ferryhq/ferry/demo/fleet"
	"github.com/ferryhq/ferry/demo/fleetdemo"
	"github.com/ferryhq/ferry/internal/netlab"
	"github.com/ferryhq/ferry/resource"
)

// binDir holds the binaries the fleet tests build once (buildBinaries).
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-demo-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce        sync.Once
	demoBin, nodeBin string
	buildErr         error
)

// buildBinaries builds ferry-demo and ferry-node (once per test run) and returns their paths.
func buildBinaries(t *testing.T) (demoPath, nodePath string) {
	t.Helper()
	buildOnce.Do(func() {
		start := time.Now()
		defer func() { t.Logf("built ferry-demo and ferry-node in %v", time.Since(start).Round(time.Second)) }()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if nodeBin, buildErr = fleet.BuildNode(ctx, binDir); buildErr != nil {
			return
		}
		demoBin = filepath.Join(binDir, "ferry-demo")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", demoBin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ferry-demo: %w: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return demoBin, nodeBin
}

// demoNode is what ferry-demo printed about a node.
type demoNode struct {
	name, dir, addr, ns, enroll, token string
}

// demoRun is a running `ferry-demo -nodes N` process and what it printed up to its "nodes:" line.
type demoRun struct {
	cmd     *exec.Cmd
	done    chan struct{}
	mu      sync.Mutex
	stderr  strings.Builder
	lines   map[string]string // prefix before ": " → the rest
	nodes   []demoNode
	nodeBin string
}

func (r *demoRun) errText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stderr.String()
}

// startDemo runs ferry-demo with args (as the user cred when not nil, with HOME set to home when
// not empty) and waits (up to 80 s) for its "nodes:" line; at cleanup it is stopped (SIGINT, then
// SIGKILL after 30 s) if it still runs.
func startDemo(t *testing.T, cred *syscall.Credential, home string, args ...string) *demoRun {
	t.Helper()
	demoPath, nodePath := buildBinaries(t)
	start := time.Now()
	defer func() {
		t.Logf("ferry-demo %s was ready after %v", strings.Join(args, " "), time.Since(start).Round(time.Second))
	}()
	r := &demoRun{lines: map[string]string{}, done: make(chan struct{}), nodeBin: nodePath}
	r.cmd = exec.Command(demoPath, append([]string{"-ferry-node", nodePath}, args...)...)
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cred}
	if home != "" {
		r.cmd.Env = append(os.Environ(), "HOME="+home)
	}
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	r.cmd.Stderr = writerFunc(func(p []byte) (int, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.stderr.Write(p)
	})
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			// As Ctrl-C, so that it removes what it made; killed if it does not stop in time.
			_ = r.cmd.Process.Signal(os.Interrupt)
			select {
			case <-r.done:
			case <-time.After(30 * time.Second):
				_ = r.cmd.Process.Kill()
				<-r.done
			}
		}
		if t.Failed() {
			t.Logf("ferry-demo's standard error:\n%s", r.errText())
		}
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		closed := false
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ": ")
			r.mu.Lock()
			if !closed {
				r.lines[k] = v
			}
			r.mu.Unlock()
			if k == "nodes" && !closed {
				closed = true
				close(ready)
			}
		}
		_ = r.cmd.Wait()
		close(r.done)
	}()
	select {
	case <-ready:
	case <-r.done:
		t.Fatalf("ferry-demo exited before its nodes line: %v\n%s", r.cmd.ProcessState, r.errText())
	case <-time.After(80 * time.Second):
		t.Fatalf("ferry-demo printed no nodes line within 80 s\n%s", r.errText())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 1; ; i++ {
		name := fmt.Sprintf("node-%d", i)
		line, ok := r.lines[name]
		if !ok {
			break
		}
		n := demoNode{name: name, token: strings.TrimPrefix(r.lines[name+"-enroll"], "ferry login ")}
		f := strings.Fields(line)
		for j := 0; j+1 < len(f); j++ {
			switch f[j] {
			case "--state":
				n.dir = f[j+1]
			case "address":
				n.addr = f[j+1]
			case "namespace":
				n.ns = f[j+1]
			case "(enroll":
				n.enroll = strings.TrimSuffix(strings.TrimPrefix(f[j+1], "https://"), ",")
			}
		}
		if n.dir == "" || n.addr == "" || n.enroll == "" || !strings.HasPrefix(n.token, "ferry-enroll.") {
			t.Fatalf("ferry-demo's %s lines: %q, %q", name, line, r.lines[name+"-enroll"])
		}
		r.nodes = append(r.nodes, n)
	}
	return r
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// nodeProcs are the IDs of the running `ferry-node run --state dir` processes.
func nodeProcs(t *testing.T, bin, dir string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	want := bin + "\x00run\x00--state\x00" + dir + "\x00"
	var pids []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && string(b) == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// netNS is the network namespace of process pid ("net:[…]").
func netNS(t *testing.T, pid string) string {
	t.Helper()
	s, err := os.Readlink(filepath.Join("/proc", pid, "ns", "net"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// psqlOne runs one query with psql and returns its trimmed output.
func psqlOne(ctx context.Context, conn, query string) (string, error) {
	cmd := exec.CommandContext(ctx, "psql", conn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// enrollAndQuery enrolls a device of the admin in this process with token (ferry login as on the
// machine's shell), adds a resource of its own on another loopback IP, connects it and runs psql
// through it; the device must use the node named via.
func enrollAndQuery(t *testing.T, ctx context.Context, token, via string) {
	t.Helper()
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "config"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := client.Login(ctx, dirs, token, "test-laptop"); err != nil {
		t.Fatalf("ferry login through %s: %v", via, err)
	}
	d, err := client.StartDaemon(ctx, dirs, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r := resource.New("azure-pg-mi-test")
	r.Hostname = "mypg.postgres.database.azure.com" // the emulator's server (azureemu's default name)
	r.Database, r.Username, r.ManagedIdentityClientID = demo.Database, demo.Role, demo.ClientID
	r.BindInterface = demo.RandomLoopbackIP()
	if _, err := d.API().AddDatasource(ctx, r); err != nil {
		t.Fatal(err)
	}
	rs, err := d.Connect(ctx, r.Name)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := psqlOne(ctx, client.ConnString(rs), "SELECT 'through "+via+"'"); err != nil || out != "through "+via {
		t.Fatalf("psql through the device enrolled with %s: %q, %v", via, out, err)
	}
	// Status names the node once the device has its node list (until then, its endpoint).
	for wait := time.Now().Add(20 * time.Second); ; {
		st := d.Status(ctx)
		if st.Node == via {
			break
		}
		if time.Now().After(wait) {
			t.Fatalf("the device enrolled with %s uses %q", via, st.Node)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stopDemo sends SIGINT (as Ctrl-C) and waits up to 60 s for ferry-demo to exit 0.
func stopDemo(t *testing.T, r *demoRun) {
	t.Helper()
	if err := r.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case <-r.done:
		t.Logf("ferry-demo stopped %v after SIGINT", time.Since(start).Round(100*time.Millisecond))
	case <-time.After(60 * time.Second):
		t.Fatalf("ferry-demo did not stop within 60 s of SIGINT\n%s", r.errText())
	}
	if !r.cmd.ProcessState.Success() {
		t.Errorf("ferry-demo exited with %v after SIGINT\n%s", r.cmd.ProcessState, r.errText())
	}
}

// TestFleetDemoNamespaces: as root, `ferry-demo -nodes 3` runs three ferry-node processes, each in
// a network namespace of its own with its own address; a device enrolled from this machine's own
// namespace with node-2's printed token runs psql through node-2, and the demo's own ready line
// works; after SIGINT no node process, namespace, link or directory of the demo is left.
func TestFleetDemoNamespaces(t *testing.T) {
	if err := netlab.Check("psql"); err != nil {
		t.Skip("the namespace demo needs root: " + err.Error())
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := startDemo(t, nil, "", "-nodes", "3", "-ip", demo.RandomLoopbackIP())
	if len(r.nodes) != 3 {
		t.Fatalf("ferry-demo printed %d nodes: %v", len(r.nodes), r.lines)
	}
	self := netNS(t, "self")
	seenNS, seenAddr := map[string]bool{}, map[string]bool{}
	for _, n := range r.nodes {
		pids := nodeProcs(t, r.nodeBin, n.dir)
		if len(pids) != 1 {
			t.Fatalf("%s: %d ferry-node processes for %s; want 1", n.name, len(pids), n.dir)
		}
		ns := netNS(t, fmt.Sprint(pids[0]))
		if ns == self || seenNS[ns] {
			t.Errorf("%s runs in %s (this test's: %s; seen: %v)", n.name, ns, self, seenNS)
		}
		seenNS[ns] = true
		out, err := exec.CommandContext(ctx, "ip", "netns", "identify", fmt.Sprint(pids[0])).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != n.ns {
			t.Errorf("%s: ip netns identify says %q (%v); ferry-demo printed %s", n.name, out, err, n.ns)
		}
		addrs, err := exec.CommandContext(ctx, "ip", "-n", n.ns, "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
		if err != nil || !strings.Contains(string(addrs), " "+n.addr+"/") || seenAddr[n.addr] || net.ParseIP(n.addr).IsLoopback() {
			t.Errorf("%s: address %s; its namespace has %q (%v)", n.name, n.addr, addrs, err)
		}
		seenAddr[n.addr] = true
	}
	if out, err := psqlOne(ctx, r.lines["ready"], "SELECT 'admin'"); err != nil || out != "admin" {
		t.Fatalf("psql on the ready line through node-1: %q, %v", out, err)
	}
	enrollAndQuery(t, ctx, r.nodes[1].token, "node-2")
	checkRouting(t, ctx, r, true)

	attach := strings.Fields(r.lines["nodes"])
	stopDemo(t, r)
	checkGone(t, ctx, r)
	namespaces, err := exec.CommandContext(ctx, "ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range r.nodes {
		if strings.Contains(string(namespaces), n.ns) {
			t.Errorf("namespace %s is left: %s", n.ns, namespaces)
		}
	}
	lab, _, _ := strings.Cut(r.nodes[0].ns, "-node-1")
	if strings.Contains(string(namespaces), lab) {
		t.Errorf("namespaces of the lab %s are left: %s", lab, namespaces)
	}
	if etc, _ := filepath.Glob("/etc/netns/" + lab + "*"); len(etc) > 0 {
		t.Errorf("/etc/netns entries are left: %v", etc)
	}
	for _, f := range attach {
		if strings.HasPrefix(f, "fl") {
			if out, err := exec.CommandContext(ctx, "ip", "link", "show", f).CombinedOutput(); err == nil {
				t.Errorf("the link %s is left: %s", f, out)
			}
		}
	}
}

// TestFleetDemoLoopback: `ferry-demo -nodes 3` without root (as root, the test runs it as the user
// nobody) says in one line why there are no namespaces and runs three ferry-node processes in this
// machine's namespace on loopback ports of their own; a device enrolled with node-3's token runs
// psql through node-3; after SIGINT nothing is left: no process, no listener on the nodes' ports,
// no directory, and nothing was written to the user's home.
func TestFleetDemoLoopback(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("needs psql")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: 65534, Gid: 65534} // nobody
		buildBinaries(t)
		if err := os.Chmod(binDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	home, err := os.MkdirTemp("", "ferry-demo-test-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	if err := os.Chmod(home, 0o777); err != nil {
		t.Fatal(err)
	}
	r := startDemo(t, cred, home, "-nodes", "3", "-ip", demo.RandomLoopbackIP())
	if len(r.nodes) != 3 {
		t.Fatalf("ferry-demo printed %d nodes: %v", len(r.nodes), r.lines)
	}
	if n := strings.Count(r.errText(), "not root, so no network namespaces"); n != 1 {
		t.Errorf("without root ferry-demo does not say once why the nodes run on loopback:\n%s", r.errText())
	}
	self := netNS(t, "self")
	ports := map[string]bool{}
	for _, n := range r.nodes {
		pids := nodeProcs(t, r.nodeBin, n.dir)
		if len(pids) != 1 {
			t.Fatalf("%s: %d ferry-node processes for %s; want 1", n.name, len(pids), n.dir)
		}
		if ns := netNS(t, fmt.Sprint(pids[0])); ns != self || n.ns != "" || n.addr != "127.0.0.1" || ports[n.enroll] {
			t.Errorf("%s: namespace %s (this test's %s), printed namespace %q, address %s, enroll %s (seen %v)", n.name, ns, self, n.ns, n.addr, n.enroll, ports)
		}
		ports[n.enroll] = true
	}
	enrollAndQuery(t, ctx, r.nodes[2].token, "node-3")
	// As root the demo runs as nobody, whose daemon's socket this test's client refuses to use.
	checkRouting(t, ctx, r, cred == nil)
	stopDemo(t, r)
	checkGone(t, ctx, r)
	if ents, err := os.ReadDir(home); err != nil || len(ents) > 0 {
		t.Errorf("ferry-demo left %v in its HOME (%v)", ents, err)
	}
	for _, n := range r.nodes {
		if c, err := net.DialTimeout("tcp", n.enroll, 2*time.Second); err == nil {
			c.Close()
			t.Errorf("%s's enrollment port %s still accepts connections", n.name, n.enroll)
		}
	}
}

// checkRouting checks the demo's proxy cluster and egress filter (3 nodes): its output names them,
// psql works through the ready-cluster and ready-egress lines, and, with readLog, the connection
// log (read through the demo's admin client) has the cluster resource's session on node-3 (the
// cluster's worker) and the egress-filtered one's on node-2 (the only gateway tagged env=prod).
func checkRouting(t *testing.T, ctx context.Context, r *demoRun, readLog bool) {
	t.Helper()
	if !strings.Contains(r.lines["cluster"], fleetdemo.ClusterID) || !strings.Contains(r.lines["cluster"], "worker node-3") ||
		!strings.Contains(r.lines["egress"], fleetdemo.EgressFilter) {
		t.Errorf("ferry-demo's cluster and egress lines: %q, %q", r.lines["cluster"], r.lines["egress"])
	}
	for _, tc := range []struct{ line, resource, node string }{
		{"ready-cluster", fleetdemo.ClusterResource, "node-3"},
		{"ready-egress", fleetdemo.EgressResource, "node-2"},
	} {
		if out, err := psqlOne(ctx, r.lines[tc.line], "SELECT '"+tc.line+"'"); err != nil || out != tc.line {
			t.Errorf("psql on the %s line (%q): %q, %v", tc.line, r.lines[tc.line], out, err)
			continue
		}
		if !readLog {
			continue
		}
		base := filepath.Dir(r.nodes[0].dir)
		admin := client.NewControl(client.Dirs{Config: filepath.Join(base, "client"), Runtime: filepath.Join(base, "run")}).API()
		cs, err := admin.ConnectionLog(ctx, api.LogFilter{Resource: tc.resource})
		if err != nil || len(cs) == 0 {
			t.Errorf("the connection log of %s: %+v, %v", tc.resource, cs, err)
		}
		for _, c := range cs {
			if c.NodeName != tc.node {
				t.Errorf("a session of %s went through %q; want %s only", tc.resource, c.NodeName, tc.node)
			}
		}
	}
}

// checkGone checks that no node process and no state directory of r is left.
func checkGone(t *testing.T, ctx context.Context, r *demoRun) {
	t.Helper()
	for _, n := range r.nodes {
		if pids := nodeProcs(t, r.nodeBin, n.dir); len(pids) > 0 {
			t.Errorf("%s: ferry-node processes %v are left", n.name, pids)
		}
		if _, err := os.Stat(n.dir); !os.IsNotExist(err) {
			t.Errorf("%s: its state directory %s is left (%v)", n.name, n.dir, err)
		}
	}
	if conn := r.lines["ready"]; conn != "" {
		if out, err := psqlOne(ctx, conn+" connect_timeout=3", "SELECT 1"); err == nil {
			t.Errorf("the ready line still answers after the stop: %q", out)
		}
	}
}
