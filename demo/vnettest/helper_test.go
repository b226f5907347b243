package vnettest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo/vnet"
)

// envAttack set to a JSON list of attackSteps makes the test binary (run as an ordinary user
// inside the namespace) speak the helper's protocol directly, as a local user bypassing ferry
// would, and print an attackReport.
const envAttack = "FERRY_VNET_ATTACK"

type attackStep struct {
	Conn int            `json:"conn"` // which of two connections speaks
	Req  map[string]any `json:"req"`  // op "persist" is not sent: the attacker makes its TUNs persistent
}

type attackReport struct {
	Replies []string `json:"replies"` // each step's error, "" when granted
	FDs     int      `json:"fds"`     // descriptors received
	Links   string   `json:"links"`   // `ip -o link show type tun` while the connections are open
	Resolv  string   `json:"resolv"`  // /etc/resolv.conf then
}

// runAttackIfAsked runs the attack envAttack describes against the helper at $FERRY_VNET_HELPER
// and exits; otherwise it returns.
func runAttackIfAsked() {
	spec := os.Getenv(envAttack)
	if spec == "" {
		return
	}
	if err := attack(spec); err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		os.Exit(2)
	}
	os.Exit(0)
}

func attack(spec string) error {
	var steps []attackStep
	if err := json.Unmarshal([]byte(spec), &steps); err != nil {
		return err
	}
	var conns [2]*net.UnixConn
	for i := range conns {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: os.Getenv(client.EnvVNetHelper), Net: "unix"})
		if err != nil {
			return err
		}
		defer c.Close()
		conns[i] = c
	}
	var rep attackReport
	var fds []int
	for _, s := range steps {
		if s.Req["op"] == "persist" {
			// The holder of a TUN's descriptor may set IFF_PERSIST on it, no capability needed: the
			// interface, its address and route would then outlive the descriptor and the helper.
			for _, fd := range fds {
				if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
					return fmt.Errorf("TUNSETPERSIST: %w", err)
				}
			}
			rep.Replies = append(rep.Replies, "")
			continue
		}
		c := conns[s.Conn]
		b, _ := json.Marshal(s.Req)
		// A write can fail when the helper has refused this peer and hung up already; its reply
		// is still there to read, so the write's error counts only when there is none.
		_, werr := c.Write(append(b, '\n'))
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(16))
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err == nil && n == 0 && werr != nil {
			err = werr
		}
		if err != nil {
			if werr != nil {
				return fmt.Errorf("write request: %w (then read reply: %v)", werr, err)
			}
			return fmt.Errorf("read reply: %w", err)
		}
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				got, _ := unix.ParseUnixRights(&m)
				fds = append(fds, got...) // kept open: the TUN lives while we hold it
			}
		}
		var r struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal(buf[:n], &r); err != nil {
			return fmt.Errorf("reply %q: %w", buf[:n], err)
		}
		rep.Replies = append(rep.Replies, r.Error)
	}
	rep.FDs = len(fds)
	out, err := exec.Command("ip", "-o", "link", "show", "type", "tun").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip link: %w: %s", err, out)
	}
	rep.Links = string(out)
	rc, _ := os.ReadFile("/etc/resolv.conf")
	rep.Resolv = string(rc)
	return json.NewEncoder(os.Stdout).Encode(rep)
}

// TestVNetHelperRefusesALocalUser runs the real helper in a namespace and attacks it as the
// user it serves (nobody), speaking its protocol directly: every request outside "the org's
// subnet on one TUN, DNS for the org's domain through it" is refused and leaves the namespace's
// routes, links and resolv.conf as they were; a state directory that user can write is refused
// before anything in it is used.
func TestVNetHelperRefusesALocalUser(t *testing.T) {
	if err := vnet.Check("setpriv"); err != nil {
		t.Skipf("vnet-helper attack test skipped: %v (run as root with iproute2 and util-linux's setpriv to include it)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n := newNetns(t)
	shared, bin, dirs := sharedDir(t, "ferry-vnet-helper-")

	// /etc/passwd's stand-in: the test never touches the real /etc.
	passwd := filepath.Join(shared, "passwd")
	const passwdContent = "root:x:0:0:root:/root:/bin/bash\n"
	if err := os.WriteFile(passwd, []byte(passwdContent), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("state directory the user can write", func(t *testing.T) {
		state := filepath.Join(shared, "user-state")
		if err := os.Mkdir(state, 0o755); err != nil {
			t.Fatal(err)
		}
		rec, _ := json.Marshal(map[string]any{"path": passwd, "original": []byte("toor::0:0::/:/bin/sh\n"), "written": []byte(passwdContent)})
		if err := os.WriteFile(filepath.Join(state, "vnet-resolv.conf.json"), rec, 0o644); err != nil {
			t.Fatal(err)
		}
		sh(t, "chown", "-R", fmt.Sprint(nobody), state)
		helper := startProcess(t, n, dirs, nil, []string{bin, "vnet-helper", "--user", fmt.Sprint(nobody),
			"--subnet", "100.64.0.0/10", "--domain", "ferry.internal", "--allow-resolv-conf",
			"--socket", filepath.Join(shared, "helper1", "vnet.sock"), "--state", state}, false)
		select {
		case <-helper.Done():
		case <-time.After(20 * time.Second):
		}
		if b, _ := os.ReadFile(passwd); string(b) != passwdContent {
			t.Errorf("the helper wrote the file a user-planted record named:\n%s\nhelper:\n%s", b, helper.Output())
		}
		select {
		case <-helper.Done():
			if out := helper.Output(); !strings.Contains(out, "state directory (--state)") || !strings.Contains(out, "owned by uid 65534") {
				t.Errorf("helper's refusal does not say why:\n%s", out)
			}
		default:
			t.Errorf("the helper started with a state directory its user can write:\n%s", helper.Output())
		}
	})

	sock := filepath.Join(shared, "helper", "vnet.sock")
	helper := startProcess(t, n, dirs, nil, []string{bin, "vnet-helper", "--user", fmt.Sprint(nobody),
		"--subnet", "100.64.0.0/10", "--domain", "ferry.internal", "--allow-resolv-conf",
		"--socket", sock, "--state", filepath.Join(shared, "state")}, false)
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 100 {
			t.Fatalf("helper did not start:\n%s", helper.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := n.snapshot(t)
	origResolv, err := os.ReadFile(n.ResolvConfPath)
	if err != nil {
		t.Fatal(err)
	}
	lan := n.HostIP[:strings.LastIndex(n.HostIP, ".")] + ".0" // the veth pair's /30: the namespace's LAN

	tun := map[string]any{"op": "tun", "subnet": "100.64.0.0/10"}
	dns := map[string]any{"op": "dns", "interface": "ferry0", "server": "100.64.0.2", "domain": "ferry.internal."}
	with := func(req map[string]any, k string, v any) map[string]any {
		out := map[string]any{}
		for k, v := range req {
			out[k] = v
		}
		out[k] = v
		return out
	}
	tests := []struct {
		name    string
		setup   []string // run in the namespace for this case (and undone by undo)
		undo    []string
		steps   []attackStep
		refused []string // per step: "" granted, else part of the error
		tuns    int      // TUN devices while the attacker holds its connections
		dnsOn   bool     // resolv.conf managed meanwhile
	}{
		{name: "the LAN's subnet", steps: []attackStep{{0, with(tun, "subnet", lan+"/30")}}, refused: []string{"is not the org's VN subnet"}},
		{name: "a wider LAN subnet", steps: []attackStep{{0, with(tun, "subnet", lan+"/24")}}, refused: []string{"is not the org's VN subnet"}},
		{name: "a second TUN on the same connection", steps: []attackStep{{0, tun}, {0, with(tun, "name", "ferry1")}},
			refused: []string{"", "one per connection"}, tuns: 1},
		{name: "a second TUN on another connection", steps: []attackStep{{0, tun}, {1, with(tun, "name", "ferry1")}},
			refused: []string{"", "overlaps 100.64.0.0/10"}, tuns: 1},
		{name: "another program's persistent TUN", setup: []string{"ip", "tuntap", "add", "dev", "fvpersist", "mode", "tun"},
			undo: []string{"ip", "tuntap", "del", "dev", "fvpersist", "mode", "tun"}, steps: []attackStep{{0, with(tun, "name", "fvpersist")}},
			refused: []string{"exists already"}, tuns: 1}, // the persistent one, left as it was
		{name: "the org's subnet over a route of the machine", setup: []string{"ip", "route", "add", "100.100.0.0/16", "via", n.HostIP},
			undo: []string{"ip", "route", "del", "100.100.0.0/16", "via", n.HostIP}, steps: []attackStep{{0, tun}},
			refused: []string{"overlaps 100.100.0.0/16"}},
		{name: "DNS for the root domain", steps: []attackStep{{0, tun}, {0, with(dns, "domain", ".")}},
			refused: []string{"", "is not the org's domain"}, tuns: 1},
		{name: "DNS on another interface", steps: []attackStep{{0, tun}, {0, with(dns, "interface", "lo")}},
			refused: []string{"", "is not this connection's TUN"}, tuns: 1},
		{name: "DNS to the user's own server", steps: []attackStep{{0, tun}, {0, with(dns, "server", n.HostIP)}},
			refused: []string{"", "is not the org's resolver"}, tuns: 1},
		{name: "a TUN its holder made persistent", steps: []attackStep{{0, tun}, {0, map[string]any{"op": "persist"}}},
			refused: []string{"", ""}, tuns: 1},
		{name: "DNS without a TUN", steps: []attackStep{{0, dns}}, refused: []string{"no TUN"}},
		{name: "the org's subnet and domain", steps: []attackStep{{0, tun}, {0, dns}}, refused: []string{"", ""}, tuns: 1, dnsOn: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				n.exec(t, tc.setup...)
				defer n.exec(t, tc.undo...)
			}
			during := n.snapshot(t)
			rep := runAttack(t, ctx, n, bin, sock, tc.steps)
			for i, want := range tc.refused {
				if got := rep.Replies[i]; want == "" && got != "" || want != "" && !strings.Contains(got, want) {
					t.Errorf("step %d %v: reply %q, want %q", i, tc.steps[i].Req, got, want)
				}
			}
			fds := tc.tuns
			if tc.setup != nil && tc.setup[1] == "tuntap" {
				fds = 0
			}
			if got := strings.Count(rep.Links, "\n"); got != tc.tuns || rep.FDs != fds {
				t.Errorf("%d TUN devices, %d descriptors handed over, want %d:\n%s", got, rep.FDs, tc.tuns, rep.Links)
			}
			if managed := rep.Resolv != string(origResolv); managed != tc.dnsOn {
				t.Errorf("resolv.conf while the attacker was connected (managed: %v, want %v):\n%s", managed, tc.dnsOn, rep.Resolv)
			}
			if tc.dnsOn && !strings.Contains(rep.Resolv, "nameserver 100.64.0.2\n") {
				t.Errorf("resolv.conf does not name the org's resolver:\n%s", rep.Resolv)
			}
			// The attacker is gone: its TUN with it, and the helper restores DNS.
			deadline := time.Now().Add(10 * time.Second)
			for n.snapshot(t) != during && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			if after := n.snapshot(t); after != during {
				t.Errorf("after the attacker left:\n%s\nbefore:\n%s\nhelper:\n%s", after, during, helper.Output())
			}
		})
		if after := n.snapshot(t); after != before {
			t.Fatalf("after %q:\n%s\nbefore:\n%s\nhelper:\n%s", tc.name, after, before, helper.Output())
		}
	}
	t.Run("another user", func(t *testing.T) {
		// The socket is the served user's, mode 0600: another user cannot even connect.
		spec, _ := json.Marshal([]attackStep{{0, tun}})
		cmd := n.Command(ctx, "setpriv", "--reuid", "65533", "--regid", "65533", "--clear-groups", bin)
		cmd.Env = append(os.Environ(), envAttack+"="+string(spec), client.EnvVNetHelper+"="+sock)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "permission denied") {
			t.Errorf("another user's attack: %v\n%s", err, out)
		}
		// Were the socket's mode wider, its peer credentials still do not pass.
		if err := os.Chmod(sock, 0o666); err != nil {
			t.Fatal(err)
		}
		rep := runAttackAs(t, ctx, n, 65533, bin, sock, []attackStep{{0, tun}})
		if err := os.Chmod(sock, 0o600); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(rep.Replies[0], "serves uid 65534 only") || rep.FDs != 0 {
			t.Errorf("another user's request: %q, %d descriptors", rep.Replies[0], rep.FDs)
		}
		if after := n.snapshot(t); after != before {
			t.Errorf("after another user's attempt:\n%s\nbefore:\n%s", after, before)
		}
	})
	if b, _ := os.ReadFile(passwd); string(b) != passwdContent {
		t.Errorf("passwd stand-in changed:\n%s", b)
	}
	helper.stop(t, syscall.SIGTERM)

	t.Run("resolv.conf without --allow-resolv-conf", func(t *testing.T) {
		sock := filepath.Join(shared, "helper2", "vnet.sock")
		helper := startProcess(t, n, dirs, nil, []string{bin, "vnet-helper", "--user", fmt.Sprint(nobody),
			"--subnet", "100.64.0.0/10", "--domain", "ferry.internal", "--socket", sock, "--state", filepath.Join(shared, "state")}, false)
		for i := 0; ; i++ {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if i > 100 {
				t.Fatalf("helper did not start:\n%s", helper.Output())
			}
			time.Sleep(100 * time.Millisecond)
		}
		rep := runAttack(t, ctx, n, bin, sock, []attackStep{{0, tun}, {0, dns}})
		if rep.Replies[0] != "" || !strings.Contains(rep.Replies[1], "--allow-resolv-conf") {
			t.Errorf("replies %q, want the TUN and DNS refused naming --allow-resolv-conf", rep.Replies)
		}
		if rep.Resolv != string(origResolv) {
			t.Errorf("resolv.conf edited:\n%s", rep.Resolv)
		}
		helper.stop(t, syscall.SIGTERM)
	})
}

// runAttack runs the attacker (this binary as nobody, in the namespace) against the helper at sock.
func runAttack(t *testing.T, ctx context.Context, n *netns, bin, sock string, steps []attackStep) attackReport {
	t.Helper()
	return runAttackAs(t, ctx, n, 65534, bin, sock, steps)
}

// runAttackAs runs the attacker as uid and returns its report.
func runAttackAs(t *testing.T, ctx context.Context, n *netns, uid int, bin, sock string, steps []attackStep) attackReport {
	t.Helper()
	spec, _ := json.Marshal(steps)
	cmd := n.Command(ctx, "setpriv", "--reuid", fmt.Sprint(uid), "--regid", fmt.Sprint(uid), "--clear-groups", bin)
	cmd.Env = append(os.Environ(), envAttack+"="+string(spec), client.EnvVNetHelper+"="+sock)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("attacker: %v\n%s", err, exitOutput(err))
	}
	var rep attackReport
	if err := json.Unmarshal(out, &rep); err != nil || len(rep.Replies) != len(steps) {
		t.Fatalf("attacker's report %q: %v", out, err)
	}
	return rep
}

func exitOutput(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
