package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/netstack"
	"github.com/ferryhq/ferry/resolver"
	"github.com/ferryhq/ferry/resource"
)

// Connectivity modes a daemon may be told to use (DaemonOption WithMode); empty means the org's
// default from the node's settings.
const (
	ModeLoopback          = resource.ModeLoopback
	ModeVirtualNetworking = resource.ModeVirtualNetworking
)

// EnvMode overrides the connectivity mode for this client (loopback | virtual-networking).
const EnvMode = "FERRY_MODE"

// Virtual networking limits.
const (
	// vnMaxInFlight bounds the SYNs awaiting a dial through the tunnel at once. Each slot costs a
	// goroutine and a half-open endpoint; a dial to a resource whose node side hangs holds its
	// slot for at most vnForwardTimeout, so 256 slots let 100 stuck attempts leave room for
	// everyone else.
	vnMaxInFlight = 256

	// vnForwardTimeout bounds the dial through the tunnel made on a SYN; the local client then
	// gets a RST (its SYN retransmission timer is 1 s, so a client never waits on a dead node
	// for more than its own connect timeout).
	vnForwardTimeout = 5 * time.Second

	// vnHandshakeTimeout bounds the local handshake that follows a successful dial through the
	// tunnel (a local client ACKs the SYN-ACK within milliseconds); a connection to the node kept
	// for a flow whose handshake never completed is closed after it.
	vnHandshakeTimeout = 30 * time.Second

	// vnRefresh is how often the alias records are refreshed from the node.
	vnRefresh = 30 * time.Second
)

// DaemonOption configures StartDaemon.
type DaemonOption func(*daemonOptions)

type daemonOptions struct {
	mode    string
	tunName string
	// editRoutes, set by tests only (export_test.go), stands in for a node that fills Route.
	editRoutes func([]api.Resource)
}

// WithMode makes this client serve every resource in mode (ModeLoopback or ModeVirtualNetworking)
// whatever each resource's own mode; "" serves each resource in its own mode (modes.go).
func WithMode(mode string) DaemonOption { return func(o *daemonOptions) { o.mode = mode } }

// WithTUNName names the TUN device of virtual networking mode (default ferry0 on Linux).
func WithTUNName(name string) DaemonOption { return func(o *daemonOptions) { o.tunName = name } }

// ValidMode checks a mode given by a person (flag or FERRY_MODE).
func ValidMode(mode string) error {
	switch mode {
	case "", ModeLoopback, ModeVirtualNetworking:
		return nil
	}
	return fmt.Errorf("unknown connectivity mode %q: use %s or %s", mode, ModeLoopback, ModeVirtualNetworking)
}

// vnet is virtual networking mode: a TUN device routed for the org's VN subnet, a userspace stack on
// it that terminates TCP for connected resources, and the DNS resolver for the org domain.
type vnet struct {
	d        *Daemon
	log      *slog.Logger
	settings api.Settings
	subnet   netip.Prefix
	ts       *netstack.TUNStack
	dns      *resolver.Server
	undoDNS  func() error
	// aliases: the system sends the org domain to the resolver, so an alias is an address local
	// programs can use; without it, status and connect give the VN IP instead (address).
	aliases bool
	ifIndex int // the TUN's interface index when it came up; 0 when unknown (tunGone)

	mu        sync.Mutex
	connected map[netip.AddrPort]api.Resource // by VN address
	byName    map[string]netip.AddrPort
}

func (d *Daemon) newVNet(ctx context.Context, s api.Settings) (_ *vnet, err error) {
	subnet, err := netip.ParsePrefix(s.VNSubnet)
	if err != nil || !subnet.Addr().Is4() {
		return nil, fmt.Errorf("the org's VN subnet %q is not an IPv4 prefix", s.VNSubnet)
	}
	subnet = subnet.Masked()
	v := &vnet{d: d, log: d.log.With("mode", ModeVirtualNetworking), settings: s, subnet: subnet,
		connected: map[netip.AddrPort]api.Resource{}, byName: map[string]netip.AddrPort{}}
	defer func() {
		if err != nil {
			v.close()
		}
	}()
	resolverIP := resource.ResolverAddress(subnet)

	// Opening the TUN (as root) first undoes DNS left behind by a daemon that was killed, so the
	// upstreams read next are the system's own.
	dev, dnsConf, err := openTUN(ctx, d.dirs, netstack.TUNConfig{Name: d.opts.tunName, Addr: resource.TUNAddress(subnet), Subnet: subnet})
	if err != nil {
		return nil, err
	}
	if n, err := dev.Name(); err == nil {
		if ifc, err := net.InterfaceByName(n); err == nil {
			v.ifIndex = ifc.Index
		}
	}
	upstreams := systemUpstreams(resolverIP)
	v.ts, err = netstack.NewTUNStack(dev, netstack.Config{
		Addresses:      []netip.Addr{resolverIP},
		ForwardTimeout: vnForwardTimeout,
	}, v.log)
	if err != nil {
		dev.Close()
		return nil, err
	}
	v.ts.SetForwarder(vnMaxInFlight, v.forward)

	v.dns, err = resolver.New(resolver.Config{Domain: s.DNSDomain, Upstreams: upstreams, Logger: v.log})
	if err != nil {
		return nil, err
	}
	raddr := netip.AddrPortFrom(resolverIP, 53)
	pc, err := v.ts.ListenUDP(raddr)
	if err != nil {
		return nil, fmt.Errorf("resolver: %w", err)
	}
	ln, err := v.ts.ListenTCP(raddr)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("resolver: %w", err)
	}
	if err := v.dns.Serve(pc, ln); err != nil {
		pc.Close()
		ln.Close()
		return nil, err
	}
	v.refresh(ctx)
	d.wg.Add(1)
	go v.refreshLoop()

	v.undoDNS, err = dnsConf(ctx, dnsSpec{Interface: v.ts.Name(), Server: resolverIP, Domain: v.dns.Domain()}, v.log)
	if err != nil {
		// Addresses still work; names need the OS told where to ask.
		v.log.Warn("could not configure the system's DNS for the org domain: resources are given by VN IP, their aliases resolve only when the resolver is asked directly", "resolver", resolverIP, "err", err)
	}
	v.aliases = err == nil
	v.log.Info("virtual networking up", "tun", v.ts.Name(), "subnet", subnet, "resolver", raddr, "domain", s.DNSDomain, "upstreams", upstreams)
	return v, nil
}

// tunGone reports whether the TUN's interface is no longer there (the helper stopped and deleted
// it, or someone removed it): reads on its descriptor then block for good instead of failing, so
// follow asks on every poll.
func (v *vnet) tunGone() bool {
	if v.ifIndex == 0 {
		return false
	}
	_, err := net.InterfaceByIndex(v.ifIndex)
	return err != nil
}

// systemUpstreams returns the resolvers the system uses now (before Ferry), from /etc/resolv.conf.
func systemUpstreams(self netip.Addr) []string {
	b, err := os.ReadFile(resolvConfPath)
	if err != nil {
		return nil
	}
	return resolver.ParseResolvConf(b, self)
}

// refreshLoop keeps the alias records in line with the node's resource list.
func (v *vnet) refreshLoop() {
	defer v.d.wg.Done()
	t := time.NewTicker(vnRefresh)
	defer t.Stop()
	for {
		select {
		case <-v.d.ctx.Done():
			return
		case <-t.C:
			v.refresh(v.d.ctx)
		}
	}
}

// refresh sets an A record for the alias of every resource the user may reach.
func (v *vnet) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	rs, err := v.d.resources(ctx)
	if err != nil {
		v.log.Debug("could not refresh DNS aliases", "err", err)
		return
	}
	v.setRecords(rs)
}

// setRecords makes the aliases those of rs, the node's current list (follow calls it on every poll,
// so a renamed, moved or revoked alias resolves as the catalog says within a poll).
func (v *vnet) setRecords(rs []api.Resource) {
	if v.dns == nil {
		return
	}
	recs := map[string]netip.Addr{}
	for _, r := range rs {
		ap, err := netip.ParseAddrPort(r.VNAddress)
		if err != nil || r.Subdomain == "" || resolver.FQDN(r.Subdomain, v.settings.DNSDomain) == "" {
			continue
		}
		recs[r.Subdomain] = ap.Addr()
	}
	if err := v.dns.SetRecords(recs); err != nil {
		v.log.Warn("could not set DNS aliases", "err", err)
	}
}

// address is where local programs reach r in this mode: "alias:port", or "ip:port" without alias
// or when the system does not ask Ferry's resolver for the org domain.
func (v *vnet) address(r api.Resource) string {
	ap, err := netip.ParseAddrPort(r.VNAddress)
	if err != nil {
		return r.VNAddress
	}
	if n := resolver.FQDN(r.Subdomain, v.settings.DNSDomain); n != "" && v.aliases {
		return net.JoinHostPort(strings.TrimSuffix(n, "."), strconv.Itoa(int(ap.Port())))
	}
	return ap.String()
}

// connect starts serving r on its VN address.
func (v *vnet) connect(r api.Resource) (ResourceStatus, error) {
	ap, err := netip.ParseAddrPort(r.VNAddress)
	if err != nil || !v.subnet.Contains(ap.Addr()) {
		return ResourceStatus{}, fmt.Errorf("connect %s: its virtual networking address %q is not in the org's subnet %s", r.Name, r.VNAddress, v.subnet)
	}
	v.mu.Lock()
	// Its old address is freed only while it is still its own: when the catalog swapped or rotated
	// addresses, another resource may have taken it over already in this round.
	if old, ok := v.byName[r.Name]; ok && v.connected[old].Name == r.Name {
		delete(v.connected, old)
	}
	v.connected[ap] = r
	v.byName[r.Name] = ap
	v.mu.Unlock()
	v.log.Info("resource connected", "resource", r.Name, "address", v.address(r), "vn_address", ap)
	return ResourceStatus{Resource: r, Address: v.address(r), Connected: true}, nil
}

// disconnect stops serving the named resource; it reports whether it was connected. Open sessions
// go on until they end (as in loopback mode, where closing the listener leaves accepted conns).
func (v *vnet) disconnect(name string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	ap, ok := v.byName[name]
	if ok {
		delete(v.byName, name)
		if v.connected[ap].Name == name { // not an address another resource took over
			delete(v.connected, ap)
		}
	}
	return ok
}

// isConnected returns r as served when the named resource is served at its address.
func (v *vnet) isConnected(name string) (api.Resource, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	ap, ok := v.byName[name]
	r := v.connected[ap]
	return r, ok && r.Name == name
}

func (v *vnet) list() []api.Resource {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]api.Resource, 0, len(v.connected))
	for _, r := range v.connected {
		out = append(out, r)
	}
	return out
}

// errNotConnected refuses a SYN to an address of the subnet that no connected resource holds.
var errNotConnected = errors.New("no connected resource at this address")

// forward decides a SYN arriving on the TUN: for a connected resource, dial its VN address
// through the tunnel first and complete the local handshake only when that worked; anything else
// gets a RST at once.
func (v *vnet) forward(ctx context.Context, f netstack.Flow) (func(net.Conn), error) {
	v.mu.Lock()
	r, ok := v.connected[f.Local]
	v.mu.Unlock()
	if !ok {
		return nil, errNotConnected
	}
	via, r, err := v.d.routeFresh(r)
	if err != nil {
		// A SYN cannot carry a PostgreSQL error: the RST comes at once, and the log says why.
		v.log.Warn("no node can carry the resource", "resource", r.Name, "client", f.Remote, "err", err)
		return nil, err
	}
	dialCtx := ctx
	if via.routed {
		var cancel context.CancelFunc
		dialCtx, cancel = context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(via.ctx, cancel) // the resource's node was left
		defer stop()
	}
	up, err := v.d.tun.Stack().DialContext(dialCtx, "tcp", r.VNAddress)
	if err != nil {
		v.log.Warn("could not reach the node", "resource", r.Name, "client", f.Remote, "err", err)
		return nil, err
	}
	// The local handshake may still fail (its client gave up: the SYN-ACK meets a RST), and then
	// the stack never calls the handler: up is closed and the daemon's count of running work
	// released once the handshake has had vnHandshakeTimeout, or at once when the daemon closes.
	var state atomic.Int32 // 0 pending, 1 handled, 2 abandoned
	v.d.wg.Add(1)
	abandon := func() {
		if state.CompareAndSwap(0, 2) {
			_ = up.Close()
			v.d.wg.Done()
		}
	}
	timer := time.AfterFunc(vnHandshakeTimeout, abandon)
	stop := context.AfterFunc(v.d.ctx, abandon)
	return func(c net.Conn) {
		timer.Stop()
		stop()
		if !state.CompareAndSwap(0, 1) {
			_ = c.Close()
			return
		}
		defer v.d.wg.Done()
		defer c.Close()
		defer up.Close()
		rl := v.d.track(c, up, via, r.Name)
		defer v.d.untrack(rl)
		// Both ways until both directions end (half-close passed on), or the daemon stops.
		v.d.splices.Splice(v.d.ctx, relayConn{Conn: c, r: rl}, up, 5*time.Second)
	}, nil
}

// close tears down DNS configuration, resolver and TUN (the OS removes the interface's address
// and route with it).
func (v *vnet) close() {
	if v.undoDNS != nil {
		if err := v.undoDNS(); err != nil {
			v.log.Warn("could not restore the system's DNS configuration", "err", err)
		}
		v.undoDNS = nil
	}
	if v.dns != nil {
		_ = v.dns.Close()
	}
	if v.ts != nil {
		_ = v.ts.Close()
	}
}

// The daemon's hooks into virtual networking mode (daemon.go calls them with d.mu held, except
// closeVNet).

// vnConnect serves r on its VN address and remembers it as connected.
func (d *Daemon) vnConnect(r api.Resource) (ResourceStatus, error) {
	st, err := d.vn.connect(r)
	if err != nil {
		return st, err
	}
	d.vn.addRecord(r)
	d.remember(r.Name)
	st = d.row(r)
	return st, nil
}

// vnDisconnect stops serving the named resource; false when it was not connected in this mode.
func (d *Daemon) vnDisconnect(name string) bool {
	if d.vn == nil || !d.vn.disconnect(name) {
		return false
	}
	d.state.Connected = slicesDelete(d.state.Connected, name)
	d.log.Info("resource disconnected", "resource", name)
	return true
}

func (d *Daemon) vnNames() []string {
	if d.vn == nil {
		return nil
	}
	var out []string
	for _, r := range d.vn.list() {
		out = append(out, r.Name)
	}
	return out
}

func (d *Daemon) closeVNet() {
	d.mu.Lock()
	v := d.vn
	d.mu.Unlock()
	if v != nil {
		v.close()
	}
}

// addRecord makes r's alias resolve at once (the periodic refresh covers the rest).
func (v *vnet) addRecord(r api.Resource) {
	go v.refresh(v.d.ctx)
}

func slicesDelete(s []string, v string) []string {
	out := s[:0]
	for _, x := range s {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}
