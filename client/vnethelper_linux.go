package client

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/ferryhq/ferry/netstack"
	"github.com/ferryhq/ferry/resource"
)

// HelperConfig configures the privileged helper. Subnet and Domain are the org's, as the
// administrator gives them to `ferry vnet-helper` (its flags, e.g. in the systemd unit): they come
// from whoever starts the helper as root, never from the client it serves, which only asks for
// them and is refused anything else.
type HelperConfig struct {
	Socket   string       // unix socket path (default DefaultVNetHelperSocket)
	OwnerUID int          // the only user served (besides root); the socket is chowned to it
	StateDir string       // where the resolv.conf backup lives (default DefaultVNetHelperState)
	Subnet   netip.Prefix // the org's VN subnet: the only one routed to a TUN
	Domain   string       // the org's DNS domain: the only one pointed at Ferry's resolver
	// AllowResolvConf lets the helper edit /etc/resolv.conf when systemd-resolved is not running.
	// That edit cannot be limited to Domain: every name the machine looks up then goes to the
	// served user's resolver (which forwards the rest). Off unless the administrator says so.
	AllowResolvConf bool
	Logger          *slog.Logger
}

// DefaultVNetHelperState is the helper's state directory unless told otherwise.
const DefaultVNetHelperState = "/var/lib/ferry-vnet-helper"

// helperOS is what the helper does to the machine, injected so that tests can run its decisions
// on fakes and temp files.
type helperOS interface {
	// inUse returns the IPv4 destinations of the machine's routes (every table) and the prefixes
	// of its addresses.
	inUse(ctx context.Context) ([]netip.Prefix, error)
	// openTUN creates a new TUN device with its address and route (netstack.OpenTUN).
	openTUN(ctx context.Context, cfg netstack.TUNConfig) (tun.Device, error)
	// configureDNS points the OS's DNS for spec.Domain at spec.Server (configureDNSIn).
	configureDNS(ctx context.Context, spec dnsSpec, log *slog.Logger) (func() error, error)
	// indexOf returns the index of the network interface named name.
	indexOf(name string) (int, error)
	// removeTUN deletes the interface of index idx when it is still the TUN name (its holder may
	// have made it persistent); a TUN gone with its last descriptor is no error.
	removeTUN(name string, idx int) error
}

// machine is the real helperOS.
type machine struct{ dns dnsEnv }

func (m machine) openTUN(ctx context.Context, cfg netstack.TUNConfig) (tun.Device, error) {
	return netstack.OpenTUN(ctx, cfg)
}

func (m machine) indexOf(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifi.Index, nil
}

func (m machine) removeTUN(name string, idx int) error {
	ifi, err := net.InterfaceByIndex(idx)
	if err != nil || ifi.Name != name {
		return nil // gone with its last descriptor (interface indexes are not reused soon)
	}
	return deleteLink(idx)
}

// deleteLink deletes the network interface of index idx (rtnetlink RTM_DELLINK, by index, so
// that no other interface that takes a name is touched).
func deleteLink(idx int) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("delete interface %d: netlink: %w", idx, err)
	}
	defer unix.Close(fd)
	// struct nlmsghdr, then struct ifinfomsg (rtnetlink(7)).
	msg := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofIfInfomsg)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.RTM_DELLINK)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(msg[8:], 1)
	msg[unix.NLMSG_HDRLEN] = unix.AF_UNSPEC
	ne.PutUint32(msg[unix.NLMSG_HDRLEN+4:], uint32(int32(idx)))
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("delete interface %d: netlink: %w", idx, err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("delete interface %d: netlink: %w", idx, err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return fmt.Errorf("delete interface %d: netlink: %w", idx, err)
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if e := int32(ne.Uint32(m.Data)); e != 0 && unix.Errno(-e) != unix.ENODEV {
				return fmt.Errorf("delete interface %d: %w", idx, unix.Errno(-e))
			}
			return nil
		}
	}
	return fmt.Errorf("delete interface %d: no answer from netlink", idx)
}

func (m machine) configureDNS(ctx context.Context, spec dnsSpec, log *slog.Logger) (func() error, error) {
	return configureDNSIn(ctx, m.dns, spec, log)
}

// inUse asks iproute2 (as configureTUN does) for the routes of every table and the addresses.
func (m machine) inUse(ctx context.Context) ([]netip.Prefix, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var out []netip.Prefix
	rt, err := exec.CommandContext(ctx, "ip", "-4", "-j", "route", "show", "table", "all").Output()
	if err != nil {
		return nil, fmt.Errorf("ip -4 -j route show table all: %w", err)
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal(rt, &routes); err != nil {
		return nil, fmt.Errorf("ip -4 -j route show table all: %w", err)
	}
	for _, r := range routes {
		if p, ok := parseRouteDst(r.Dst); ok {
			out = append(out, p)
		}
	}
	ad, err := exec.CommandContext(ctx, "ip", "-4", "-j", "addr", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("ip -4 -j addr show: %w", err)
	}
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(ad, &links); err != nil {
		return nil, fmt.Errorf("ip -4 -j addr show: %w", err)
	}
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if ip, err := netip.ParseAddr(a.Local); err == nil && ip.Is4() {
				out = append(out, netip.PrefixFrom(ip, 32))
				if p, err := ip.Prefix(a.PrefixLen); err == nil {
					out = append(out, p)
				}
			}
		}
	}
	return out, nil
}

// parseRouteDst reads iproute2's "dst": "default", "10.0.0.0/24" or a host "10.0.0.1".
func parseRouteDst(s string) (netip.Prefix, bool) {
	if s == "default" {
		return netip.MustParsePrefix("0.0.0.0/0"), true
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), p.Addr().Is4()
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
		return netip.PrefixFrom(a, 32), true
	}
	return netip.Prefix{}, false
}

// checkHelperConfig refuses a configuration the helper must not serve.
func checkHelperConfig(cfg HelperConfig) (HelperConfig, error) {
	if !cfg.Subnet.IsValid() {
		return cfg, errors.New("vnet-helper: give the org's VN subnet (--subnet, see `ferry admin settings show`)")
	}
	cfg.Subnet = cfg.Subnet.Masked()
	if err := allowedSubnet(cfg.Subnet); err != nil || cfg.Subnet.Bits() > 29 {
		return cfg, fmt.Errorf("vnet-helper: --subnet %s: must be IPv4 of 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10, at most /29 (as the node allows)", cfg.Subnet)
	}
	d := normDomain(cfg.Domain)
	if _, err := netip.ParseAddr(d); d == "" || err == nil || !resource.ValidHostname(d) {
		return cfg, fmt.Errorf("vnet-helper: --domain %q is not a DNS name (the org's domain, e.g. ferry.internal)", cfg.Domain)
	}
	cfg.Domain = d
	if cfg.OwnerUID < 0 {
		return cfg, errors.New("vnet-helper: give --user UID (the user whose ferry it serves)")
	}
	return cfg, nil
}

// normDomain is a domain in lower case without the final dot.
func normDomain(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }

// ServeVNetHelper runs the privileged helper until ctx ends. It does only this for the user
// OwnerUID (peers checked with SO_PEERCRED): on each connection, create one TUN device with its
// address and route for the org's VN subnet (cfg.Subnet, and only when nothing on the machine is
// routed or addressed in it yet) and hand its file descriptor over the socket (SCM_RIGHTS); and
// point the OS's DNS for the org's domain (cfg.Domain) at subnet+2 through that TUN for as long as
// the connection stays open (undone when it closes, whether the client exits or is killed).
//
// Its state and socket directories, and every directory above them, must be root's and writable
// by nobody else (a sticky one such as /tmp is fine above them); otherwise it refuses to start.
func ServeVNetHelper(ctx context.Context, cfg HelperConfig) error {
	if cfg.Socket == "" {
		cfg.Socket = DefaultVNetHelperSocket
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultVNetHelperState
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if os.Geteuid() != 0 {
		return errors.New("vnet-helper: must run as root (sudo, pkexec or a systemd unit)")
	}
	cfg, err := checkHelperConfig(cfg)
	if err != nil {
		return err
	}
	log := cfg.Logger
	// From here on the directories are used by the paths that were checked: a symlink on the way
	// (one a user planted in /tmp, say) could be pointed elsewhere later.
	if cfg.StateDir, err = secureDir(cfg.StateDir, 0o700, 0); err != nil {
		return fmt.Errorf("vnet-helper: state directory (--state): %w", err)
	}
	sockDir, err := secureDir(filepath.Dir(cfg.Socket), 0o755, 0)
	if err != nil {
		return fmt.Errorf("vnet-helper: socket directory (--socket): %w", err)
	}
	cfg.Socket = filepath.Join(sockDir, filepath.Base(cfg.Socket))
	dns := osDNSEnv(cfg.StateDir)
	dns.noEdit = !cfg.AllowResolvConf
	if err := recoverDNSIn(dns, log); err != nil {
		log.Warn("vnet-helper: could not undo an earlier DNS edit", "err", err)
	}
	_ = os.Remove(cfg.Socket)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Socket, Net: "unix"})
	if err != nil {
		return fmt.Errorf("vnet-helper: listen: %w", err)
	}
	defer os.Remove(cfg.Socket)
	if err := restrictSocket(cfg.Socket, cfg.OwnerUID); err != nil {
		ln.Close()
		return fmt.Errorf("vnet-helper: %w", err)
	}
	log.Info("vnet-helper: serving", "socket", cfg.Socket, "uid", cfg.OwnerUID, "subnet", cfg.Subnet, "domain", cfg.Domain, "allow_resolv_conf", cfg.AllowResolvConf)
	h := &vnetHelper{cfg: cfg, os: machine{dns: dns}}
	return h.serve(ctx, ln)
}

// secureDir makes dir (with perm when missing) and checks that it and every directory above it
// belong to root or owner and that nobody else can write to them (a directory above it may be
// sticky instead, as /tmp: others then add entries there but cannot rename or remove ours).
// Otherwise a local user could put their own state file or socket in the helper's place. It
// returns the directory's path without symlinks, the one that was checked.
func secureDir(dir string, perm os.FileMode, owner int) (string, error) {
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("%s: give an absolute path", dir)
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	for p := real; ; p = filepath.Dir(p) {
		fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", fmt.Errorf("open %s: %w", p, err)
		}
		var st unix.Stat_t
		err = unix.Fstat(fd, &st)
		unix.Close(fd)
		if err != nil {
			return "", fmt.Errorf("stat %s: %w", p, err)
		}
		sticky := p != real && st.Mode&unix.S_ISVTX != 0
		if (st.Uid != 0 && int(st.Uid) != owner) || (st.Mode&0o022 != 0 && !sticky) {
			return "", fmt.Errorf("%s is owned by uid %d with mode %04o: it must be root's and not writable by group or others "+
				"(chown root %s && chmod go-w %s), or choose another directory", p, st.Uid, st.Mode&0o7777, p, p)
		}
		if p == "/" || p == "." {
			return real, nil
		}
	}
}

// restrictSocket gives the socket at path to uid with mode 0600, through a descriptor of that very
// file (O_PATH, checked to be a socket), not by path.
func restrictSocket(path string, uid int) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open socket %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat socket %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s is not the helper's socket", path)
	}
	if err := unix.Fchownat(fd, "", uid, -1, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("chown socket: %w", err)
	}
	// fchmod does not take an O_PATH descriptor; its /proc/self/fd link names the same inode.
	if err := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), 0o600); err != nil {
		return fmt.Errorf("chmod socket: %w", err)
	}
	return nil
}

// vnetHelper serves the helper's socket.
type vnetHelper struct {
	cfg HelperConfig
	os  helperOS

	tunMu sync.Mutex // one TUN creation at a time: the overlap check and the creation go together
	dnsMu sync.Mutex // held by the one connection whose DNS configuration is in place
}

func (h *vnetHelper) serve(ctx context.Context, ln *net.UnixListener) error {
	go func() { <-ctx.Done(); ln.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, maxHelperConns)
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("vnet-helper: accept: %w", err)
		}
		select {
		case slots <- struct{}{}:
		default:
			// Idle connections would otherwise hold the helper's descriptors and memory without end.
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_ = json.NewEncoder(c).Encode(helperReply{Error: fmt.Sprintf("vnet-helper: %d connections are open already; close one (one ferry daemon needs one)", maxHelperConns)})
			c.Close()
			h.cfg.Logger.Warn("vnet-helper: refused a connection over the limit", "limit", maxHelperConns)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			defer c.Close()
			// Stopping the helper ends its connections, so that each one's DNS and TUN are undone
			// now rather than whenever its client leaves.
			defer context.AfterFunc(ctx, func() { c.Close() })()
			if err := h.serveConn(ctx, c); err != nil {
				h.cfg.Logger.Warn("vnet-helper: client", "err", err)
			}
		}()
	}
}

func peerUID(c *net.UnixConn) (int, error) {
	sc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := sc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

func (h *vnetHelper) serveConn(ctx context.Context, c *net.UnixConn) error {
	uid, err := peerUID(c)
	if err != nil {
		return fmt.Errorf("peer credentials: %w", err)
	}
	if uid != h.cfg.OwnerUID && uid != 0 {
		_ = json.NewEncoder(c).Encode(helperReply{Error: fmt.Sprintf("vnet-helper serves uid %d only", h.cfg.OwnerUID)})
		return fmt.Errorf("refused uid %d", uid)
	}
	log := h.cfg.Logger.With("uid", uid)
	var (
		tunName string       // the TUN this connection created
		tunIdx  int          // and its interface index, which names it even once the name is reused
		undo    func() error // its DNS configuration
	)
	defer func() {
		if undo != nil {
			if err := undo(); err != nil {
				log.Warn("vnet-helper: restore DNS", "err", err)
			}
			h.dnsMu.Unlock()
		}
		// The TUN goes with the connection, even one its holder made persistent (TUNSETPERSIST
		// needs no privilege on the descriptor): no interface, address or route outlives it.
		if tunIdx != 0 {
			if err := h.os.removeTUN(tunName, tunIdx); err != nil {
				log.Warn("vnet-helper: remove the TUN", "name", tunName, "err", err)
			}
		}
	}()
	refuse := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		log.Warn("vnet-helper: refused", "err", msg)
		_ = json.NewEncoder(c).Encode(helperReply{Error: msg})
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, maxHelperRequest), maxHelperRequest)
	for sc.Scan() {
		var req helperRequest
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			refuse("bad request: not one JSON object on a line: %v", err)
			return fmt.Errorf("bad request: %w", err)
		}
		switch req.Op {
		case "tun":
			if tunName != "" {
				refuse("tun: this connection has its TUN %s already (one per connection)", tunName)
				continue
			}
			dev, name, idx, err := h.openTUN(ctx, req)
			if err != nil {
				refuse("%v", err)
				continue
			}
			b, _ := json.Marshal(helperReply{Name: name})
			_, _, err = c.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(dev.File().Fd())), nil)
			// Our copy goes: the client's descriptor keeps the interface alive, and its exit
			// (even kill -9) removes the interface with its address and route.
			dev.Close()
			if err != nil {
				return fmt.Errorf("send TUN: %w", err)
			}
			tunName, tunIdx = name, idx
			log.Info("vnet-helper: TUN handed over", "name", name, "subnet", h.cfg.Subnet)
		case "dns":
			spec, err := h.dnsSpec(req, tunName)
			if err != nil {
				refuse("%v", err)
				continue
			}
			// The client may have closed its TUN, and another interface may bear its name by now.
			if i, err := h.os.indexOf(tunName); err != nil || i != tunIdx {
				refuse("dns: this connection's TUN %s is gone (its descriptor was closed): connect again for a new TUN", tunName)
				continue
			}
			spec.Index = tunIdx
			if undo != nil {
				refuse("dns: already configured on this connection")
				continue
			}
			if !h.dnsMu.TryLock() {
				refuse("dns: another ferry client holds the DNS configuration")
				continue
			}
			u, err := h.os.configureDNS(ctx, spec, log)
			if err != nil {
				h.dnsMu.Unlock()
				refuse("%v", err)
				continue
			}
			undo = u
			_ = json.NewEncoder(c).Encode(helperReply{})
		default:
			refuse("unknown op %q", req.Op)
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		refuse("bad request: longer than %d bytes", maxHelperRequest)
		return fmt.Errorf("bad request: longer than %d bytes", maxHelperRequest)
	}
	return nil
}

// maxHelperConns bounds the connections served at once (a ferry daemon keeps one open).
const maxHelperConns = 16

// maxHelperRequest bounds one request line (and so what a client makes the helper hold).
const maxHelperRequest = 4096

// openTUN creates the TUN a "tun" request asks for: for the org's VN subnet only (the client
// passes it and it must match), when no route or address of the machine overlaps it.
func (h *vnetHelper) openTUN(ctx context.Context, req helperRequest) (tun.Device, string, int, error) {
	subnet, err := netip.ParsePrefix(req.Subnet)
	if err != nil {
		return nil, "", 0, fmt.Errorf("tun: subnet %q: %w", req.Subnet, err)
	}
	if subnet.Masked() != h.cfg.Subnet {
		return nil, "", 0, fmt.Errorf("tun: subnet %s is not the org's VN subnet %s that this helper serves "+
			"(if the org's subnet changed, the administrator restarts the helper with --subnet set to it)", subnet, h.cfg.Subnet)
	}
	subnet = h.cfg.Subnet
	mtu := req.MTU
	if mtu == 0 {
		mtu = netstack.TUNMTU
	}
	if mtu < 1280 || mtu > 65535 {
		return nil, "", 0, fmt.Errorf("tun: MTU %d out of range 1280..65535", mtu)
	}
	if req.Name != "" && (len(req.Name) >= unix.IFNAMSIZ || !validIfName(req.Name)) {
		return nil, "", 0, fmt.Errorf("tun: bad interface name %q", req.Name)
	}
	h.tunMu.Lock()
	defer h.tunMu.Unlock()
	used, err := h.os.inUse(ctx)
	if err != nil {
		return nil, "", 0, fmt.Errorf("tun: list the machine's routes and addresses: %w", err)
	}
	if err := subnetFree(subnet, used); err != nil {
		return nil, "", 0, err
	}
	dev, err := h.os.openTUN(ctx, netstack.TUNConfig{Name: req.Name, Addr: resource.TUNAddress(subnet), Subnet: subnet, MTU: mtu})
	if err != nil {
		return nil, "", 0, fmt.Errorf("tun: %w", err)
	}
	name, err := dev.Name()
	if err == nil {
		var idx int
		// While our descriptor holds the TUN, the name is its own.
		if idx, err = h.os.indexOf(name); err == nil {
			return dev, name, idx, nil
		}
	}
	dev.Close()
	return nil, "", 0, fmt.Errorf("tun: %w", err)
}

// subnetFree refuses a VN subnet that overlaps any of used (the machine's routes and addresses) but
// a default route.
func subnetFree(subnet netip.Prefix, used []netip.Prefix) error {
	for _, p := range used {
		if p.Bits() > 0 && p.Overlaps(subnet) { // a default route overlaps everything and takes nothing
			return fmt.Errorf("tun: the org's VN subnet %s overlaps %s, already routed or assigned on this machine "+
				"(another ferry's TUN, a VPN or the LAN): refused so that no traffic meant for it is diverted", subnet, p)
		}
	}
	return nil
}

// checkSubnetFree is the helper's overlap check for a client that creates its TUN itself, as root:
// the org's subnet comes from the node, and an administrator's subnet over the LAN must not divert
// the machine's traffic into the TUN there either.
func checkSubnetFree(ctx context.Context, subnet netip.Prefix) error {
	used, err := machine{}.inUse(ctx)
	if err != nil {
		return fmt.Errorf("tun: list the machine's routes and addresses: %w", err)
	}
	return subnetFree(subnet, used)
}

// dnsSpec is what a "dns" request gets: the TUN this connection created, the org's resolver at
// subnet+2 and the org's domain. The request may name them (the client does, so that a helper set
// up for another org says so); naming anything else is refused.
func (h *vnetHelper) dnsSpec(req helperRequest, tunName string) (dnsSpec, error) {
	if tunName == "" {
		return dnsSpec{}, errors.New("dns: this connection has no TUN: DNS is set only for the TUN the same connection asked for")
	}
	if req.Interface != "" && req.Interface != tunName {
		return dnsSpec{}, fmt.Errorf("dns: interface %q is not this connection's TUN %s", req.Interface, tunName)
	}
	server := resource.ResolverAddress(h.cfg.Subnet)
	if req.Server != "" {
		if a, err := netip.ParseAddr(req.Server); err != nil || a != server {
			return dnsSpec{}, fmt.Errorf("dns: server %q is not the org's resolver %s (subnet+2)", req.Server, server)
		}
	}
	if req.Domain != "" && normDomain(req.Domain) != h.cfg.Domain {
		return dnsSpec{}, fmt.Errorf("dns: domain %q is not the org's domain %s that this helper serves "+
			"(if the org's domain changed, the administrator restarts the helper with --domain set to it)", req.Domain, h.cfg.Domain)
	}
	return dnsSpec{Interface: tunName, Server: server, Domain: h.cfg.Domain + "."}, nil
}

func validIfName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// openTUNViaHelper asks the helper for a TUN device; the connection stays open for the daemon's
// lifetime (closing it makes the helper undo the DNS configuration).
func openTUNViaHelper(ctx context.Context, sock string, cfg netstack.TUNConfig) (tun.Device, dnsConfigurer, error) {
	var dl net.Dialer
	nc, err := dl.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: nothing answers at %s (%s moves it): %v", errNoHelper, sock, EnvVNetHelper, err)
	}
	c := nc.(*net.UnixConn)
	fail := func(err error) (tun.Device, dnsConfigurer, error) { c.Close(); return nil, nil, err }
	// Only root's helper (or one of this user's own) is asked: another local user's process at
	// the socket would hand over a TUN of its choosing (one in a namespace it owns, say) and so
	// reach the resources through this client as this user.
	switch uid, err := peerUID(c); {
	case err != nil:
		return fail(fmt.Errorf("vnet-helper: peer credentials at %s: %w", sock, err))
	case uid != 0 && uid != os.Getuid():
		return fail(fmt.Errorf("%w: the process at %s runs as uid %d, not root: refusing it (another local user may have put it there)", errNoHelper, sock, uid))
	}
	b, _ := json.Marshal(helperRequest{Op: "tun", Name: cfg.Name, Subnet: cfg.Subnet.String(), MTU: cfg.MTU})
	if _, err := c.Write(append(b, '\n')); err != nil {
		return fail(fmt.Errorf("vnet-helper: %w", err))
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return fail(fmt.Errorf("vnet-helper: read reply: %w", err))
	}
	var rep helperReply
	if err := json.Unmarshal(buf[:n], &rep); err != nil {
		return fail(fmt.Errorf("vnet-helper: bad reply: %w", err))
	}
	if rep.Error != "" {
		return fail(fmt.Errorf("vnet-helper: %s", rep.Error))
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return fail(errors.New("vnet-helper: no file descriptor in the reply"))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return fail(errors.New("vnet-helper: no file descriptor in the reply"))
	}
	dev, _, err := tun.CreateUnmonitoredTUNFromFD(fds[0])
	if err != nil {
		unix.Close(fds[0])
		return fail(fmt.Errorf("vnet-helper: use TUN: %w", err))
	}
	_ = c.SetReadDeadline(time.Time{})
	rd := bufio.NewReader(c)
	conf := func(ctx context.Context, spec dnsSpec, log *slog.Logger) (func() error, error) {
		b, _ := json.Marshal(helperRequest{Op: "dns", Interface: spec.Interface, Server: spec.Server.String(), Domain: spec.Domain})
		if _, err := c.Write(append(b, '\n')); err != nil {
			return nil, fmt.Errorf("vnet-helper: %w", err)
		}
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := rd.ReadBytes('\n')
		_ = c.SetReadDeadline(time.Time{})
		if err != nil {
			return nil, fmt.Errorf("vnet-helper: %w", err)
		}
		var rep helperReply
		if err := json.Unmarshal(line, &rep); err != nil || rep.Error != "" {
			return nil, fmt.Errorf("vnet-helper: dns: %s", rep.Error)
		}
		return c.Close, nil // closing the connection makes the helper restore DNS
	}
	return &helperDevice{Device: dev, conn: c}, conf, nil
}

// helperDevice closes the helper connection with the device (if DNS was never configured).
type helperDevice struct {
	tun.Device
	conn *net.UnixConn
}

func (h *helperDevice) Close() error {
	err := h.Device.Close()
	_ = h.conn.Close()
	return err
}
