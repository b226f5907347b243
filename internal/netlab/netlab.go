// Package netlab builds a private network lab out of Linux network namespaces for multi-host tests
// and the demo: one bridge inside a namespace of its own, and hosts (one namespace each) joined to
// it by veth pairs, each with its own address on a private /24 of 10.100.0.0-10.199.255.255. Nothing touches the network of the
// machine the lab runs on: every link and address lives in the lab's namespaces, and the lab has no
// route out of them.
//
// Hosts know each other by name: every host's /etc/hosts (bind-mounted by ip netns exec from
// /etc/netns/<namespace>/hosts) lists localhost, each host of the lab by its name, and the names
// given to Lab.AddName (e.g. a server's DNS name pointing at the host that serves it).
//
// Processes run inside a host with Host.Command (ip netns exec); listeners and connections of the
// calling process are made inside a host with Host.Do, Host.Listen and Host.DialContext (setns on a
// locked OS thread: a socket stays in the namespace it was made in). Start and Proc (proc.go) run a
// process with its output kept, stop it with SIGTERM or kill it.
//
// A lab needs Linux, root and iproute2's ip (Check). Its namespaces are named after Prefix, the
// process ID that made it and a random tag; New removes the namespaces of labs whose process is
// gone, so a killed test run leaves nothing behind for long.
package netlab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Prefix starts the name of every namespace a lab makes: Prefix + PID + "-" + tag + "-" + host.
const Prefix = "ferrylab"

// bridgeHost is the name of the bridge's namespace inside a lab.
const bridgeHost = "bridge"

// Check reports why a lab cannot be made here (not root, no ip on PATH, or one of tools missing),
// or nil when it can.
func Check(tools ...string) error {
	if os.Geteuid() != 0 {
		return errors.New("netlab: needs root (network namespaces, veth pairs, a bridge)")
	}
	for _, bin := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("netlab: needs %s on PATH: %w", bin, err)
		}
	}
	return nil
}

// Lab is a bridge in a namespace of its own and the hosts attached to it. Its methods are safe for
// concurrent use.
type Lab struct {
	name   string // Prefix + PID + "-" + tag
	subnet *net.IPNet

	mu       sync.Mutex
	hosts    []*Host
	names    [][2]string // extra /etc/hosts entries: name, address
	attached string      // the link AttachHere made in the namespace of the process ("": none)
	closed   bool
}

// Host is a network namespace of a lab with one interface (eth0) on the lab's bridge.
type Host struct {
	// Name is the host's name within the lab; NS the network namespace's name (ip netns).
	Name, NS string
	addr     net.IP
}

// New makes a lab: the bridge namespace with the bridge up, on a /24 of 10.100.0.0-10.199.255.255
// that no route or address of this machine covers. It first removes what labs of exited
// processes left behind. On error nothing of the new lab is left.
func New(ctx context.Context) (l *Lab, err error) {
	if err := Check(); err != nil {
		return nil, err
	}
	if err := Sweep(ctx); err != nil {
		return nil, err
	}
	subnet, err := pickSubnet(ctx)
	if err != nil {
		return nil, err
	}
	l = &Lab{name: fmt.Sprintf("%s%d-%04x", Prefix, os.Getpid(), rand.IntN(1<<16)), subnet: subnet}
	defer func() {
		if err != nil {
			_ = l.Close()
		}
	}()
	br := l.nsName(bridgeHost)
	if err := runAll(ctx, [][]string{
		{"ip", "netns", "add", br},
		{"ip", "-n", br, "link", "set", "lo", "up"},
		{"ip", "-n", br, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", br, "link", "set", "br0", "up"},
	}); err != nil {
		return nil, fmt.Errorf("netlab: make the bridge: %w", err)
	}
	return l, nil
}

// Subnet is the lab's /24.
func (l *Lab) Subnet() *net.IPNet { return l.subnet }

// Name is the lab's name, the start of each of its namespaces' names.
func (l *Lab) Name() string { return l.name }

func (l *Lab) nsName(host string) string { return l.name + "-" + host }

// AddHost makes a host named name (letters, digits and '-'; unique in the lab): a namespace with
// loopback up and eth0 on the bridge with the lab's next address (.10, .11, …).
func (l *Lab) AddHost(ctx context.Context, name string) (*Host, error) {
	if name == "" || name == bridgeHost || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return nil, fmt.Errorf("netlab: host name %q: use lower-case letters, digits and '-' (not %q)", name, bridgeHost)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("netlab: add host: the lab is closed")
	}
	for _, h := range l.hosts {
		if h.Name == name {
			l.mu.Unlock()
			return nil, fmt.Errorf("netlab: add host: %s exists", name)
		}
	}
	i := len(l.hosts)
	if i >= 200 {
		l.mu.Unlock()
		return nil, errors.New("netlab: add host: the lab is full (200 hosts)")
	}
	ip := make(net.IP, 4)
	copy(ip, l.subnet.IP.To4())
	ip[3] = byte(10 + i)
	h := &Host{Name: name, NS: l.nsName(name), addr: ip}
	l.hosts = append(l.hosts, h) // Close removes it even when the setup below fails half-way
	err := l.writeHostsLocked()
	l.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("netlab: add host %s: %w", name, err)
	}

	br, port := l.nsName(bridgeHost), "p"+strconv.Itoa(i)
	if err := runAll(ctx, [][]string{
		{"ip", "netns", "add", h.NS},
		{"ip", "-n", h.NS, "link", "set", "lo", "up"},
		// Made inside the bridge's namespace with its peer moved straight into the host's: no
		// interface of the lab ever appears in the namespace ip runs in.
		{"ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
		{"ip", "-n", br, "link", "set", port, "master", "br0"},
		{"ip", "-n", br, "link", "set", port, "up"},
		{"ip", "-n", h.NS, "addr", "add", ip.String() + "/24", "dev", "eth0"},
		{"ip", "-n", h.NS, "link", "set", "eth0", "up"},
	}); err != nil {
		return nil, fmt.Errorf("netlab: add host %s: %w", name, err)
	}
	return h, nil
}

// AddName makes name (a DNS name, e.g. a server's) resolve to h's address on every host of the
// lab, through their /etc/hosts; processes started afterwards see it.
func (l *Lab) AddName(name string, h *Host) error {
	if name == "" || strings.ContainsAny(name, " \t\n#") {
		return fmt.Errorf("netlab: add name %q: not a host name", name)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("netlab: add name: the lab is closed")
	}
	l.names = append(l.names, [2]string{name, h.addr.String()})
	if err := l.writeHostsLocked(); err != nil {
		return fmt.Errorf("netlab: add name %s: %w", name, err)
	}
	return nil
}

// writeHostsLocked writes every host's /etc/netns/<NS>/hosts.
func (l *Lab) writeHostsLocked() error {
	var b strings.Builder
	b.WriteString("# written by netlab for the lab " + l.name + "\n127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	for _, h := range l.hosts {
		fmt.Fprintf(&b, "%s\t%s\n", h.addr, h.Name)
	}
	for _, n := range l.names {
		fmt.Fprintf(&b, "%s\t%s\n", n[1], n[0])
	}
	for _, h := range l.hosts {
		dir := etcDir(h.NS)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// etcDir is the directory whose files ip netns exec bind-mounts over /etc for namespace ns.
func etcDir(ns string) string { return filepath.Join("/etc/netns", ns) }

// Hosts are the lab's hosts in the order they were added.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// Close removes every namespace of the lab (their links go with them) and AttachHere's link.
// Closing twice does nothing.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	hosts, attached := l.hosts, l.attached
	l.mu.Unlock()
	var errs []error
	if attached != "" {
		// Deleted here at once: the pair would go with the bridge's namespace only when the kernel
		// gets round to freeing it.
		if out, err := exec.Command("ip", "link", "del", attached).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			errs = append(errs, fmt.Errorf("netlab: remove %s: %w: %s", attached, err, strings.TrimSpace(string(out))))
		}
	}
	for _, h := range hosts {
		errs = append(errs, removeNS(h.NS))
	}
	errs = append(errs, removeNS(l.nsName(bridgeHost)))
	return errors.Join(errs...)
}

// Addr is the host's address on the lab's bridge.
func (h *Host) Addr() net.IP { return append(net.IP(nil), h.addr...) }

// HostPort is the host's address joined with port, e.g. "10.123.7.10:8443".
func (h *Host) HostPort(port int) string {
	return net.JoinHostPort(h.addr.String(), strconv.Itoa(port))
}

// Command returns args[0] with args[1:] to be run inside the host (ip netns exec, which also
// bind-mounts /etc/netns/<NS>/* over /etc when that exists; Here's: directly). ctx kills it, as
// exec.CommandContext.
func (h *Host) Command(ctx context.Context, args ...string) *exec.Cmd {
	if h.here() {
		return exec.CommandContext(ctx, args[0], args[1:]...)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS}, args...)...)
}

// Exec runs args inside the host and returns the combined output; the error carries it.
func (h *Host) Exec(ctx context.Context, args ...string) (string, error) {
	if h.here() {
		return run(ctx, args...)
	}
	return run(ctx, append([]string{"ip", "netns", "exec", h.NS}, args...)...)
}

// Sweep removes the namespaces of labs whose process has exited (a test run killed before its
// cleanup). Labs of running processes are left alone.
func Sweep(ctx context.Context) error {
	out, err := run(ctx, "ip", "netns", "list")
	if err != nil {
		return fmt.Errorf("netlab: sweep: %w", err)
	}
	var errs []error
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line) // "NAME" or "NAME (id: N)"
		if len(f) == 0 || !strings.HasPrefix(f[0], Prefix) {
			continue
		}
		pid, ok := labPID(f[0])
		if !ok || processAlive(pid) {
			continue
		}
		errs = append(errs, removeNS(f[0]))
	}
	// /etc/netns directories whose namespace is already gone.
	dirs, _ := filepath.Glob(filepath.Join("/etc/netns", Prefix+"*"))
	for _, d := range dirs {
		if pid, ok := labPID(filepath.Base(d)); ok && !processAlive(pid) {
			errs = append(errs, os.RemoveAll(d))
		}
	}
	return errors.Join(errs...)
}

// labPID is the process ID in a lab namespace's name (Prefix + PID + "-" …).
func labPID(ns string) (int, bool) {
	digits, _, ok := strings.Cut(strings.TrimPrefix(ns, Prefix), "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(digits)
	return pid, err == nil && pid > 0
}

// removeNS removes the namespace ns and its /etc/netns directory.
func removeNS(ns string) error {
	out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("netlab: remove namespace %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	if err := os.RemoveAll(etcDir(ns)); err != nil {
		return fmt.Errorf("netlab: remove namespace %s: %w", ns, err)
	}
	return nil
}

// pickSubnet picks a random /24 of 10.100.0.0-10.199.255.255 that no IPv4 route or address of
// this machine's namespace overlaps, so that an address of the lab never reads like one of the
// machine's. (Not 198.18.0.0/15: Ferry's tunnel addresses live there, and a lab address must never
// pass for one. Not 10.200.0.0/13 and up: demo/vnet's pairs live there.)
func pickSubnet(ctx context.Context) (*net.IPNet, error) {
	used, err := hostNets(ctx)
	if err != nil {
		return nil, err
	}
	const n = 100 * 256
	start := rand.IntN(n)
	for i := range n {
		k := (start + i) % n
		sub := &net.IPNet{IP: net.IPv4(10, byte(100+k/256), byte(k%256), 0).To4(), Mask: net.CIDRMask(24, 32)}
		if !overlapsAny(sub, used) {
			return sub, nil
		}
	}
	return nil, errors.New("netlab: every /24 of 10.100.0.0-10.199.255.255 is in use on this machine")
}

// hostNets are the IPv4 routes' destinations and the addresses' networks of this namespace.
func hostNets(ctx context.Context) ([]*net.IPNet, error) {
	var nets []*net.IPNet
	for _, args := range [][]string{{"ip", "-4", "-o", "route", "show", "table", "all"}, {"ip", "-4", "-o", "addr"}} {
		out, err := run(ctx, args...)
		if err != nil {
			return nil, fmt.Errorf("netlab: read this machine's routes: %w", err)
		}
		for _, line := range strings.Split(out, "\n") {
			for _, f := range strings.Fields(line) {
				if f == "default" {
					continue // a default route covers everything; the lab has no route out anyway
				}
				if !strings.Contains(f, "/") {
					if ip := net.ParseIP(f); ip != nil && ip.To4() != nil && strings.HasPrefix(strings.TrimSpace(line), f) {
						nets = append(nets, &net.IPNet{IP: ip.To4(), Mask: net.CIDRMask(32, 32)})
					}
					continue
				}
				if _, n, err := net.ParseCIDR(f); err == nil && n.IP.To4() != nil {
					nets = append(nets, n)
				}
			}
		}
	}
	return nets, nil
}

func overlapsAny(n *net.IPNet, nets []*net.IPNet) bool {
	for _, m := range nets {
		if n.Contains(m.IP) || m.Contains(n.IP) {
			return true
		}
	}
	return false
}

func runAll(ctx context.Context, cmds [][]string) error {
	for _, args := range cmds {
		if _, err := run(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// run runs args and returns the combined output; the error carries it.
func run(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
