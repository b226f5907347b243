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

	// vnRefresh is how often the alias records are refreshed from the node.
	vnRefresh = 30 * time.Second
)

// DaemonOption configures StartDaemon.
type DaemonOption func(*daemonOptions)

type daemonOptions struct {
	mode    string
	tunName string
}

// WithMode makes this client use mode (ModeLoopback or ModeVirtualNetworking) whatever the org's
// default; "" keeps the org's default.
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

	mu        sync.Mutex
	connected map[netip.AddrPort]api.Resource // by VN address
	byName    map[string]netip.AddrPort
}

// decideMode returns the connectivity mode this daemon runs in: the option, else the org default.
func (d *Daemon) decideMode(ctx context.Context) (api.Settings, string, error) {
	s, err := d.api.Settings(ctx)
	if err != nil {
		return s, "", fmt.Errorf("read the org's network settings from ferry-node: %w", err)
	}
	mode := d.opts.mode
	if mode == "" {
		mode = s.ConnectivityMode
	}
	if mode == "" {
		mode = ModeLoopback
	}
	return s, mode, nil
}

// startVNet turns on virtual networking mode when this daemon is to use it. With the mode given
// explicitly, failing to read the settings or set up the TUN is an error; with the org default, the
// daemon falls back to loopback mode when the node cannot be asked.
func (d *Daemon) startVNet(ctx context.Context) error {
	if d.opts.mode == ModeLoopback {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	s, mode, err := d.decideMode(sctx)
	if err != nil {
		if d.opts.mode == ModeVirtualNetworking {
			return fmt.Errorf("start virtual networking: %w", err)
		}
		d.log.Warn("using loopback mode: could not read the org's connectivity mode", "err", err)
		return nil
	}
	if mode != ModeVirtualNetworking {
		return nil
	}
	v, err := d.newVNet(ctx, s)
	if err != nil {
		return fmt.Errorf("start virtual networking: %w", err)
	}
	d.vn = v
	return nil
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
		v.log.Warn("could not configure the system's DNS for the org domain: aliases resolve only when asked directly", "resolver", resolverIP, "err", err)
	}
	v.log.Info("virtual networking up", "tun", v.ts.Name(), "subnet", subnet, "resolver", raddr, "domain", s.DNSDomain, "upstreams", upstreams)
	return v, nil
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
	rs, err := v.d.api.Resources(ctx)
	if err != nil {
		v.log.Debug("could not refresh DNS aliases", "err", err)
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

// address is where local programs reach r in this mode: "alias:port", or "ip:port" without alias.
func (v *vnet) address(r api.Resource) string {
	ap, err := netip.ParseAddrPort(r.VNAddress)
	if err != nil {
		return r.VNAddress
	}
	if n := resolver.FQDN(r.Subdomain, v.settings.DNSDomain); n != "" {
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
	if old, ok := v.byName[r.Name]; ok {
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
		delete(v.connected, ap)
	}
	return ok
}

func (v *vnet) isConnected(name string) (api.Resource, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	ap, ok := v.byName[name]
	return v.connected[ap], ok
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
	up, err := v.d.tun.Stack().DialContext(ctx, "tcp", r.VNAddress)
	if err != nil {
		v.log.Warn("could not reach the node", "resource", r.Name, "client", f.Remote, "err", err)
		return nil, err
	}
	v.d.wg.Add(1)
	return func(c net.Conn) {
		defer v.d.wg.Done()
		defer c.Close()
		defer up.Close()
		// Both ways until both directions end (half-close passed on), or the daemon stops.
		v.d.splices.Splice(v.d.ctx, c, up, 5*time.Second)
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

// vnStatus rewrites status rows for this mode: the address is alias:port (or ip:port) and
// "connected" means served on the TUN. With rows nil (node unreachable) it lists the connected.
func (d *Daemon) vnStatus(rows []ResourceStatus) []ResourceStatus {
	if d.vn == nil {
		return rows
	}
	if rows == nil {
		for _, r := range d.vn.list() {
			rows = append(rows, ResourceStatus{Resource: r, Address: d.vn.address(r), Connected: true})
		}
		return rows
	}
	for i := range rows {
		_, on := d.vn.isConnected(rows[i].Name)
		rows[i].Address = d.vn.address(rows[i].Resource)
		rows[i].Connected = on
	}
	return rows
}

// vnConnect serves r on its VN address and remembers it as connected.
func (d *Daemon) vnConnect(r api.Resource) (ResourceStatus, error) {
	st, err := d.vn.connect(r)
	if err != nil {
		return st, err
	}
	d.vn.addRecord(r)
	if !slicesContains(d.state.Connected, r.Name) {
		d.state.Connected = append(d.state.Connected, r.Name)
		if err := SaveState(d.dirs, d.state); err != nil {
			d.log.Warn("could not save connected resources", "err", err)
		}
	}
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

// Mode returns the connectivity mode the daemon runs in.
func (d *Daemon) Mode() string {
	if d.vn != nil {
		return ModeVirtualNetworking
	}
	return ModeLoopback
}

// addRecord makes r's alias resolve at once (the periodic refresh covers the rest).
func (v *vnet) addRecord(r api.Resource) {
	go v.refresh(v.d.ctx)
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
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
