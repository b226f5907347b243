package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/ferryhq/ferry/netstack"
)

// The helper's decisions, on a fake machine: the socket protocol is spoken directly, as a local user
// who bypasses ferry's client would, and the DNS edits land in temp files standing for
// /etc/resolv.conf. demo/vnettest runs the same attacks against the real helper in a namespace.

const origResolv = "# the machine's own\nnameserver 192.0.2.53\n"

// fakeMachine is a helperOS whose routes, TUNs and resolv.conf are the test's.
type fakeMachine struct {
	dns dnsEnv

	mu      sync.Mutex
	routes  []netip.Prefix
	tuns    []string
	ifIndex map[string]int // interface name -> index, as the kernel numbers them (never reused soon)
	nextIdx int
}

func (m *fakeMachine) indexOf(name string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i, ok := m.ifIndex[name]; ok {
		return i, nil
	}
	return 0, fmt.Errorf("route ip+net: no such network interface %q", name)
}

func (m *fakeMachine) removeTUN(name string, idx int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ifIndex[name] != idx {
		return nil
	}
	delete(m.ifIndex, name)
	for i, n := range m.tuns {
		if n == name {
			m.tuns = append(m.tuns[:i], m.tuns[i+1:]...)
			break
		}
	}
	return nil
}

// replaceInterface stands for the TUN's holder closing it (the kernel removes the interface) and
// another interface of the same name appearing later (a NIC plugged in, docker0, a VPN's wg0).
func (m *fakeMachine) replaceInterface(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextIdx++
	m.ifIndex[name] = m.nextIdx
}

func (m *fakeMachine) inUse(context.Context) ([]netip.Prefix, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]netip.Prefix(nil), m.routes...), nil
}

func (m *fakeMachine) openTUN(_ context.Context, cfg netstack.TUNConfig) (tun.Device, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cfg.Name == "" {
		cfg.Name = "ferry0"
	}
	for _, n := range m.tuns {
		if n == cfg.Name {
			return nil, fmt.Errorf("a network interface named %q exists already", cfg.Name)
		}
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	m.tuns = append(m.tuns, cfg.Name)
	m.routes = append(m.routes, cfg.Subnet) // as the kernel does for the TUN's address
	if m.ifIndex == nil {
		m.ifIndex = map[string]int{}
	}
	m.nextIdx++
	m.ifIndex[cfg.Name] = m.nextIdx
	return &fakeTUN{name: cfg.Name, f: f}, nil
}

func (m *fakeMachine) configureDNS(ctx context.Context, spec dnsSpec, log *slog.Logger) (func() error, error) {
	if i, err := m.indexOf(spec.Interface); spec.Index != 0 && (err != nil || i != spec.Index) {
		return nil, fmt.Errorf("fake machine: DNS for %s index %d, which is index %d now (%v)", spec.Interface, spec.Index, i, err)
	}
	m.mu.Lock()
	env := m.dns
	m.mu.Unlock()
	return configureDNSIn(ctx, env, spec, log)
}

func (m *fakeMachine) tunCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.tuns)
}

type fakeTUN struct {
	name string
	f    *os.File
}

func (d *fakeTUN) File() *os.File                         { return d.f }
func (d *fakeTUN) Read([][]byte, []int, int) (int, error) { return 0, io.EOF }
func (d *fakeTUN) Write([][]byte, int) (int, error)       { return 0, io.ErrClosedPipe }
func (d *fakeTUN) MTU() (int, error)                      { return netstack.TUNMTU, nil }
func (d *fakeTUN) Name() (string, error)                  { return d.name, nil }
func (d *fakeTUN) Events() <-chan tun.Event               { return nil }
func (d *fakeTUN) Close() error                           { return d.f.Close() }
func (d *fakeTUN) BatchSize() int                         { return 1 }

// helperUnderTest is a helper for the org 100.64.0.0/10 + ferry.internal serving this test's uid.
type helperUnderTest struct {
	m    *fakeMachine
	sock string
	stop func() error // cancels the helper's context and waits (10 s at most) for serve to return
}

func startTestHelper(t *testing.T, routes ...string) *helperUnderTest {
	t.Helper()
	dir := t.TempDir()
	env := dnsEnv{resolvConf: filepath.Join(dir, "resolv.conf"), stateDir: filepath.Join(dir, "state"), owner: os.Geteuid()}
	if err := os.WriteFile(env.resolvConf, []byte(origResolv), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &fakeMachine{dns: env, routes: []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("192.168.1.0/24"),
	}}
	for _, r := range routes {
		m.routes = append(m.routes, netip.MustParsePrefix(r))
	}
	cfg, err := checkHelperConfig(HelperConfig{OwnerUID: os.Getuid(), Subnet: netip.MustParsePrefix("100.64.0.0/10"), Domain: "Ferry.Internal.",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h := &vnetHelper{cfg: cfg, os: m}
	sock := filepath.Join(dir, "helper.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.serve(ctx, ln) }()
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(10 * time.Second):
				stopErr = errors.New("helper did not stop within 10 s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return &helperUnderTest{m: m, sock: sock, stop: stop}
}

// rawConn speaks the helper's protocol without ferry's client.
type rawConn struct{ c *net.UnixConn }

func (h *helperUnderTest) dial(t *testing.T) *rawConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: h.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{c: c}
}

// ask sends one request line and returns the reply's error ("" when granted); a descriptor
// passed with it is closed.
func (r *rawConn) ask(t *testing.T, req map[string]any) string {
	t.Helper()
	if err := r.send(req); err != nil {
		t.Fatal(err)
	}
	return r.reply(t)
}

// send writes req; an error may mean the helper refused the connection and hung up first.
func (r *rawConn) send(req map[string]any) error {
	b, _ := json.Marshal(req)
	_, err := r.c.Write(append(b, '\n'))
	return err
}

func (r *rawConn) reply(t *testing.T) string {
	t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := r.c.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			fds, _ := unix.ParseUnixRights(&m)
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
	var rep helperReply
	if err := json.Unmarshal(buf[:n], &rep); err != nil {
		t.Fatalf("reply %q: %v", buf[:n], err)
	}
	return rep.Error
}

var (
	tunReq = map[string]any{"op": "tun", "subnet": "100.64.0.0/10"}
	dnsReq = map[string]any{"op": "dns", "interface": "ferry0", "server": "100.64.0.2", "domain": "ferry.internal."}
)

func with(req map[string]any, kv ...any) map[string]any {
	out := map[string]any{}
	for k, v := range req {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestVNetHelperRefuses(t *testing.T) {
	type step struct {
		conn    int            // which connection of the test speaks
		req     map[string]any // what it asks
		refused string         // "" when granted, else a part of the error
	}
	tests := []struct {
		name   string
		routes []string // on the machine besides the default route, loopback and 192.168.1.0/24
		steps  []step
		tuns   int // TUNs created in the end
	}{
		{name: "the LAN's subnet", steps: []step{{0, with(tunReq, "subnet", "192.168.1.0/24"), "is not the org's VN subnet 100.64.0.0/10"}}},
		{name: "another private subnet", steps: []step{{0, with(tunReq, "subnet", "10.0.0.0/8"), "is not the org's VN subnet"}}},
		{name: "a part of the org's subnet", steps: []step{{0, with(tunReq, "subnet", "100.64.0.0/24"), "is not the org's VN subnet"}}},
		{name: "a second TUN on the same connection", tuns: 1, steps: []step{
			{0, tunReq, ""},
			{0, with(tunReq, "name", "ferry1"), "one per connection"},
		}},
		{name: "a second TUN on another connection while the first lives", tuns: 1, steps: []step{
			{0, tunReq, ""},
			{1, with(tunReq, "name", "ferry1"), "overlaps 100.64.0.0/10"},
		}},
		{name: "the org's subnet overlapping a route of the machine", routes: []string{"100.100.0.0/16"}, steps: []step{
			{0, tunReq, "overlaps 100.100.0.0/16"},
		}},
		{name: "the org's subnet overlapping an address of the machine", routes: []string{"100.64.1.7/32"}, steps: []step{
			{0, tunReq, "overlaps 100.64.1.7/32"},
		}},
		{name: "DNS before any TUN", steps: []step{{0, dnsReq, "no TUN"}}},
		{name: "DNS for the root domain", tuns: 1, steps: []step{{0, tunReq, ""}, {0, with(dnsReq, "domain", "."), `domain "." is not the org's domain ferry.internal`}}},
		{name: "DNS for another domain", tuns: 1, steps: []step{{0, tunReq, ""}, {0, with(dnsReq, "domain", "corp.example.com"), "is not the org's domain"}}},
		{name: "DNS on another interface", tuns: 1, steps: []step{{0, tunReq, ""}, {0, with(dnsReq, "interface", "eth0"), `interface "eth0" is not this connection's TUN ferry0`}}},
		{name: "DNS to another server", tuns: 1, steps: []step{{0, tunReq, ""}, {0, with(dnsReq, "server", "192.168.1.66"), "is not the org's resolver 100.64.0.2"}}},
		{name: "DNS for another connection's TUN", tuns: 1, steps: []step{{0, tunReq, ""}, {1, dnsReq, "no TUN"}}},
		{name: "the org's subnet as IPv4-mapped IPv6", steps: []step{{0, with(tunReq, "subnet", "::ffff:100.64.0.0/106"), "is not the org's VN subnet"}}},
		{name: "the org's subnet with host bits set", tuns: 1, steps: []step{{0, with(tunReq, "subnet", "100.64.0.1/10"), ""}}},
		{name: "an interface name with a slash", steps: []step{{0, with(tunReq, "name", "../../etc"), "bad interface name"}}},
		{name: "an interface name of 16 characters", steps: []step{{0, with(tunReq, "name", strings.Repeat("f", 16)), "bad interface name"}}},
		{name: "an interface name template", steps: []step{{0, with(tunReq, "name", "ferry%d"), "bad interface name"}}},
		{name: "an interface name with a newline", steps: []step{{0, with(tunReq, "name", "a\nb"), "bad interface name"}}},
		{name: "an MTU below IPv6's minimum", steps: []step{{0, with(tunReq, "mtu", 576), "out of range"}}},
		{name: "DNS naming the TUN by its index", tuns: 1, steps: []step{{0, tunReq, ""}, {0, with(dnsReq, "interface", "1"), `interface "1" is not this connection's TUN`}}},
		{name: "an unknown operation", steps: []step{{0, map[string]any{"op": "route", "subnet": "0.0.0.0/0"}, "unknown op"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := startTestHelper(t, tc.routes...)
			conns := []*rawConn{h.dial(t), h.dial(t)}
			for i, s := range tc.steps {
				got := conns[s.conn].ask(t, s.req)
				switch {
				case s.refused == "" && got != "":
					t.Fatalf("step %d %v: refused: %s", i, s.req, got)
				case s.refused != "" && !strings.Contains(got, s.refused):
					t.Fatalf("step %d %v: got %q, want refused with %q", i, s.req, got, s.refused)
				}
			}
			if n := h.m.tunCount(); n != tc.tuns {
				t.Errorf("%d TUNs created, want %d", n, tc.tuns)
			}
			if got := readFile(t, h.m.dns.resolvConf); got != origResolv {
				t.Errorf("resolv.conf changed:\n%s", got)
			}
		})
	}
}

// DNS is set on the TUN the connection was handed, not on whatever bears its name now: the client
// can close its TUN (the kernel removes it) and ask for DNS once another interface of that name
// exists, having asked for its TUN by that name (wlan0, docker0, wg0...). Pointing that link's DNS
// at subnet+2 and taking its default DNS route would break the machine's name lookups.
func TestVNetHelperDNSOnlyForTheTUNItHandedOver(t *testing.T) {
	h := startTestHelper(t)
	c := h.dial(t)
	if err := c.ask(t, with(tunReq, "name", "wlan0")); err != "" {
		t.Fatal(err)
	}
	h.m.replaceInterface("wlan0")
	if err := c.ask(t, with(dnsReq, "interface", "wlan0")); !strings.Contains(err, "is gone") {
		t.Fatalf("DNS after the TUN was replaced by another wlan0: got %q, want refused (the TUN is gone)", err)
	}
	if got := readFile(t, h.m.dns.resolvConf); got != origResolv {
		t.Errorf("resolv.conf changed:\n%s", got)
	}
}

func TestVNetHelperServesTheOrgsSubnetAndDomain(t *testing.T) {
	h := startTestHelper(t)
	c := h.dial(t)
	if err := c.ask(t, tunReq); err != "" {
		t.Fatal(err)
	}
	if err := c.ask(t, dnsReq); err != "" {
		t.Fatal(err)
	}
	if got := readFile(t, h.m.dns.resolvConf); !strings.HasPrefix(got, resolvMarker+"nameserver 100.64.0.2\n") {
		t.Fatalf("resolv.conf while served:\n%s", got)
	}
	// Only the fixed fields may be left out, too.
	c2 := h.dial(t)
	if err := c2.ask(t, map[string]any{"op": "tun", "subnet": "100.64.0.0/10"}); !strings.Contains(err, "overlaps") {
		t.Fatalf("second client's TUN: %q", err)
	}
	c.c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for readFile(t, h.m.dns.resolvConf) != origResolv && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := readFile(t, h.m.dns.resolvConf); got != origResolv {
		t.Fatalf("resolv.conf after the client left:\n%s", got)
	}
}

// A request the helper cannot read gets an answer saying so (then the connection ends), not a
// silent hang-up; a long one is not buffered past maxHelperRequest.
func TestVNetHelperAnswersUnreadableRequests(t *testing.T) {
	for _, tc := range []struct {
		name, line, want string
	}{
		{"longer than the limit", `{"op":"tun","name":"` + strings.Repeat("x", 1<<20) + `"}`, "longer than 4096 bytes"},
		{"not JSON", `op=tun subnet=0.0.0.0/0`, "not one JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startTestHelper(t)
			c := h.dial(t)
			go c.c.Write([]byte(tc.line + "\n")) // the helper may stop reading before the end
			_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(io.LimitReader(c.c, 1<<16))
			var rep helperReply
			if jerr := json.Unmarshal(b, &rep); jerr != nil || !strings.Contains(rep.Error, tc.want) {
				t.Fatalf("reply %q (read: %v), want an error naming %q", b, err, tc.want)
			}
			if n := h.m.tunCount(); n != 0 {
				t.Errorf("%d TUNs, want none", n)
			}
		})
	}
}

// Connections beyond maxHelperConns are answered with an error and closed: idle connections cannot
// exhaust the root helper's descriptors; one freed is usable again.
func TestVNetHelperLimitsConnections(t *testing.T) {
	h := startTestHelper(t)
	var conns []*rawConn
	for range maxHelperConns {
		conns = append(conns, h.dial(t))
	}
	// Every one is being served: each answers an unknown op.
	for i, c := range conns {
		if err := c.ask(t, map[string]any{"op": "ping"}); !strings.Contains(err, "unknown op") {
			t.Fatalf("connection %d: %q", i, err)
		}
	}
	over := h.dial(t)
	_ = over.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(over.c)
	if !strings.Contains(string(b), "connections are open already") {
		t.Fatalf("connection %d: %q, %v; want refused", maxHelperConns+1, b, err)
	}
	conns[0].c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := h.dial(t)
		// Until the helper has seen the close it refuses, and may hang up before the request is
		// written (EPIPE): that is a refusal too.
		if err := c.send(map[string]any{"op": "ping"}); err != nil {
			if time.Now().After(deadline) {
				t.Fatalf("after one closed, a new connection: %v", err)
			}
		} else if err := c.reply(t); strings.Contains(err, "unknown op") {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("after one closed, a new connection: %q", err)
		}
		c.c.Close()
		time.Sleep(20 * time.Millisecond)
	}
}

// Stopping the helper (SIGTERM from systemd, e.g. to restart it with a new --subnet) ends what it
// did for connected clients, instead of waiting for them to leave: DNS restored, TUN removed.
func TestVNetHelperStopsWithClientsConnected(t *testing.T) {
	h := startTestHelper(t)
	c := h.dial(t)
	if err := c.ask(t, tunReq); err != "" {
		t.Fatal(err)
	}
	if err := c.ask(t, dnsReq); err != "" {
		t.Fatal(err)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("stop with a client connected: %v", err)
	}
	if got := readFile(t, h.m.dns.resolvConf); got != origResolv {
		t.Errorf("resolv.conf after the helper stopped:\n%s", got)
	}
	if n := h.m.tunCount(); n != 0 {
		t.Errorf("%d TUNs after the helper stopped, want 0", n)
	}
}

// Without systemd-resolved, the resolv.conf edit would send all of the machine's names to the
// user's resolver: the helper makes it only when its administrator allowed it.
func TestVNetHelperEditsResolvConfOnlyWhenAllowed(t *testing.T) {
	h := startTestHelper(t)
	h.m.mu.Lock()
	h.m.dns.noEdit = true
	h.m.mu.Unlock()
	c := h.dial(t)
	if err := c.ask(t, tunReq); err != "" {
		t.Fatal(err)
	}
	if err := c.ask(t, dnsReq); !strings.Contains(err, "--allow-resolv-conf") {
		t.Fatalf("dns without resolved: %q, want a refusal naming --allow-resolv-conf", err)
	}
	if got := readFile(t, h.m.dns.resolvConf); got != origResolv {
		t.Errorf("resolv.conf changed:\n%s", got)
	}
}

// A record of an earlier edit that names another file (here a stand-in for /etc/passwd) must
// never make the helper write there: only resolv.conf is restored.
func TestRecoverDNSRestoresOnlyResolvConf(t *testing.T) {
	const passwd = "root:x:0:0:root:/root:/bin/bash\n"
	tests := []struct {
		name      string
		record    func(env dnsEnv, passwdPath string) resolvBackup
		mode      os.FileMode
		symlink   bool
		wantErr   string
		wantResol string
	}{
		{
			name: "record naming /etc/passwd",
			record: func(env dnsEnv, pw string) resolvBackup {
				return resolvBackup{Path: pw, Original: []byte("toor::0:0::/:/bin/sh\n"), Written: []byte(passwd)}
			},
			mode: 0o600, wantResol: origResolv,
		},
		{
			name: "record naming /etc/passwd, resolv.conf as Ferry left it",
			record: func(env dnsEnv, pw string) resolvBackup {
				return resolvBackup{Path: pw, Original: []byte("nameserver 192.0.2.1\n"), Written: []byte(origResolv)}
			},
			mode: 0o600, wantResol: "nameserver 192.0.2.1\n",
		},
		{
			name: "record writable by others",
			record: func(env dnsEnv, pw string) resolvBackup {
				return resolvBackup{Path: env.resolvConf, Original: []byte("nameserver 192.0.2.66\n"), Written: []byte(origResolv)}
			},
			mode: 0o666, wantErr: "not used", wantResol: origResolv,
		},
		{
			name: "record that is a symlink",
			record: func(env dnsEnv, pw string) resolvBackup {
				return resolvBackup{Path: env.resolvConf, Original: []byte("nameserver 192.0.2.66\n"), Written: []byte(origResolv)}
			},
			mode: 0o600, symlink: true, wantErr: "read backup", wantResol: origResolv,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			env := dnsEnv{resolvConf: filepath.Join(dir, "resolv.conf"), stateDir: filepath.Join(dir, "state"), owner: os.Geteuid()}
			pw := filepath.Join(dir, "passwd")
			for p, s := range map[string]string{env.resolvConf: origResolv, pw: passwd} {
				if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.MkdirAll(env.stateDir, 0o700); err != nil {
				t.Fatal(err)
			}
			data, _ := json.Marshal(tc.record(env, pw))
			rec := resolvBackupPath(env)
			if tc.symlink {
				target := filepath.Join(dir, "elsewhere.json")
				if err := os.WriteFile(target, data, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(target, rec); err != nil {
					t.Fatal(err)
				}
			} else {
				if err := os.WriteFile(rec, data, tc.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(rec, tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			err := recoverDNSIn(env, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("recover: %v, want error with %q", err, tc.wantErr)
			}
			if got := readFile(t, pw); got != passwd {
				t.Errorf("the file the record named was written:\n%s", got)
			}
			if got := readFile(t, env.resolvConf); got != tc.wantResol {
				t.Errorf("resolv.conf:\n%s\nwant:\n%s", got, tc.wantResol)
			}
		})
	}
}

// A --state or --socket directory reached through a symlink a user planted in a sticky directory
// (as /tmp) passes the check while it points at root's directory; the helper must keep using what
// it checked, not the symlink the user may point elsewhere later. Here: at exit the helper removes
// its socket, and must not remove a "vnet.sock" in the directory the symlink names by then.
func TestVNetHelperUsesTheDirectoriesItChecked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the helper runs as root only; run this test as root")
	}
	base := t.TempDir()
	sticky := mkdirMode(t, filepath.Join(base, "tmp"), os.ModeSticky|0o777)
	safe := mkdirMode(t, filepath.Join(base, "safe"), 0o700)
	victim := mkdirMode(t, filepath.Join(base, "victim"), 0o755)
	bait := filepath.Join(victim, "vnet.sock")
	if err := os.WriteFile(bait, []byte("someone's\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(sticky, "ferry")
	if err := os.Symlink(safe, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, 65534, 65534); err != nil { // the user's symlink
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- ServeVNetHelper(ctx, HelperConfig{Socket: filepath.Join(link, "vnet.sock"), StateDir: filepath.Join(link, "state"),
			OwnerUID: 65534, Subnet: netip.MustParsePrefix("100.64.0.0/10"), Domain: "ferry.internal",
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(safe, "vnet.sock")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("helper did not start")
		}
	}
	// The user points the symlink elsewhere.
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("helper did not stop")
	}
	if _, err := os.Stat(bait); err != nil {
		t.Errorf("the helper removed a file the user's symlink named: %v", err)
	}
}

func TestSecureDir(t *testing.T) {
	uid := os.Geteuid()
	tests := []struct {
		name    string
		setup   func(t *testing.T, base string) string // returns the directory to check
		wantErr string
	}{
		{"new directory", func(t *testing.T, base string) string { return filepath.Join(base, "a", "b") }, ""},
		{"group-writable", func(t *testing.T, base string) string { return mkdirMode(t, filepath.Join(base, "g"), 0o770) }, "not writable by group or others"},
		{"world-writable", func(t *testing.T, base string) string { return mkdirMode(t, filepath.Join(base, "w"), 0o777) }, "not writable by group or others"},
		{"below a world-writable one", func(t *testing.T, base string) string {
			return mkdirMode(t, filepath.Join(mkdirMode(t, filepath.Join(base, "w"), 0o777), "d"), 0o755)
		}, "with mode 0777"},
		{"below a sticky world-writable one (as /tmp)", func(t *testing.T, base string) string {
			return mkdirMode(t, filepath.Join(mkdirMode(t, filepath.Join(base, "t"), os.ModeSticky|0o777), "d"), 0o755)
		}, ""},
		{"a symlink to a world-writable one", func(t *testing.T, base string) string {
			w := mkdirMode(t, filepath.Join(base, "w"), 0o777)
			l := filepath.Join(base, "l")
			if err := os.Symlink(w, l); err != nil {
				t.Fatal(err)
			}
			return l
		}, "not writable by group or others"},
		{"someone else's", func(t *testing.T, base string) string {
			if uid != 0 {
				t.Skip("needs root to give a directory to another user")
			}
			d := mkdirMode(t, filepath.Join(base, "o"), 0o755)
			if err := os.Chown(d, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return d
		}, "owned by uid 65534"},
		{"relative", func(t *testing.T, base string) string { return "state" }, "absolute"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			if err := os.Chmod(base, 0o755); err != nil {
				t.Fatal(err)
			}
			_, err := secureDir(tc.setup(t, base), 0o700, uid)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("secureDir: %v, want error with %q", err, tc.wantErr)
			}
		})
	}
}

func mkdirMode(t *testing.T, p string, mode os.FileMode) string {
	t.Helper()
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckHelperConfig(t *testing.T) {
	ok := HelperConfig{OwnerUID: 1000, Subnet: netip.MustParsePrefix("100.64.0.0/10"), Domain: "ferry.internal"}
	tests := []struct {
		name    string
		edit    func(c *HelperConfig)
		wantErr string
	}{
		{"the defaults", func(c *HelperConfig) {}, ""},
		{"no subnet", func(c *HelperConfig) { c.Subnet = netip.Prefix{} }, "give the org's VN subnet"},
		{"public subnet", func(c *HelperConfig) { c.Subnet = netip.MustParsePrefix("8.8.8.0/24") }, "must be IPv4 of"},
		{"everything", func(c *HelperConfig) { c.Subnet = netip.MustParsePrefix("0.0.0.0/0") }, "must be IPv4 of"},
		{"too small", func(c *HelperConfig) { c.Subnet = netip.MustParsePrefix("10.1.2.0/30") }, "at most /29"},
		{"root domain", func(c *HelperConfig) { c.Domain = "." }, "not a DNS name"},
		{"no domain", func(c *HelperConfig) { c.Domain = "" }, "not a DNS name"},
		{"IP as domain", func(c *HelperConfig) { c.Domain = "10.0.0.1" }, "not a DNS name"},
		{"no user", func(c *HelperConfig) { c.OwnerUID = -1 }, "--user"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			_, err := checkHelperConfig(c)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("checkHelperConfig: %v, want error with %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseRouteDst(t *testing.T) {
	for in, want := range map[string]string{"default": "0.0.0.0/0", "10.1.2.0/24": "10.1.2.0/24", "10.1.2.3": "10.1.2.3/32", "10.1.2.3/24": "10.1.2.0/24"} {
		if p, ok := parseRouteDst(in); !ok || p.String() != want {
			t.Errorf("parseRouteDst(%q) = %v %v, want %s", in, p, ok, want)
		}
	}
	if _, ok := parseRouteDst("fe80::/64"); ok {
		t.Error("IPv6 taken")
	}
}

func TestRestrictSocket(t *testing.T) {
	tests := []struct {
		name    string
		make    func(t *testing.T, p string)
		wantErr string
	}{
		{"the socket", func(t *testing.T, p string) {
			ln, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
		}, ""},
		{"a regular file in its place", func(t *testing.T, p string) {
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "is not the helper's socket"},
		{"a symlink in its place", func(t *testing.T, p string) {
			if err := os.Symlink("/etc/passwd", p); err != nil {
				t.Fatal(err)
			}
		}, "is not the helper's socket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "s")
			tc.make(t, p)
			before, _ := os.Lstat(p)
			err := restrictSocket(p, os.Getuid())
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("restrictSocket: %v, want error with %q", err, tc.wantErr)
			}
			fi, _ := os.Lstat(p)
			switch {
			case tc.wantErr == "" && fi.Mode().Perm() != 0o600:
				t.Errorf("socket mode %v, want 0600", fi.Mode())
			case tc.wantErr != "" && fi.Mode() != before.Mode():
				t.Errorf("mode changed from %v to %v", before.Mode(), fi.Mode())
			}
		})
	}
}

// serveFakeHelper answers every "tun" request on sock as the helper would, with a descriptor of
// /dev/null for the TUN, and prints each request it got on stdout.
func serveFakeHelper(sock string) {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	_ = os.Chmod(sock, 0o666)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func(c *net.UnixConn) {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadBytes('\n')
			if err != nil {
				return
			}
			fmt.Printf("request: %s", line)
			f, err := os.Open(os.DevNull)
			if err != nil {
				return
			}
			defer f.Close()
			_, _, _ = c.WriteMsgUnix([]byte(`{"name":"ferry0"}`+"\n"), unix.UnixRights(int(f.Fd())), nil)
			_, _ = io.Copy(io.Discard, c)
		}(c.(*net.UnixConn))
	}
}

// TestVNetHelperImpostorRefused: a process of another local user answering at the helper's socket
// (one it could create where the socket is moved to a shared directory, or before root's helper
// starts) gets no request from the client, and the client uses no descriptor it hands over: the
// client takes a TUN only from root (or from its own user).
func TestVNetHelperImpostorRefused(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run, dir := asOtherUser(t)
	sock := filepath.Join(dir, "vnet.sock")
	srv := run(ctx, envFakeHelper+"="+sock)
	var out, errOut strings.Builder
	srv.Stdout, srv.Stderr = &out, &errOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if i > 200 {
			t.Fatalf("the impostor did not start: %s", errOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	dev, _, err := openTUNViaHelper(ctx, sock, netstack.TUNConfig{Name: "ferry0", Subnet: netip.MustParsePrefix("100.64.0.0/10")})
	if err == nil {
		dev.Close()
	}
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("uid %d", otherUID)) {
		t.Errorf("openTUNViaHelper through another user's impostor: %v, want a refusal naming uid %d", err, otherUID)
	}
	_ = srv.Process.Kill()
	_ = srv.Wait()
	if strings.Contains(out.String(), "request:") {
		t.Errorf("the impostor got the client's request:\n%s", out.String())
	}
}
