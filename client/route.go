package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/tunnel"
)

// Per-resource choice of node (api.Resource.Route). Every node answers at the same VN addresses, so
// which node carries a resource is decided by the tunnel's allowed IPs: the node chosen for a
// resource is a WireGuard peer holding the resource's VN address as a /32, and wireguard-go routes
// by longest prefix match, so that /32 wins over the 0.0.0.0/0 of the node in use for the control
// API. The node answers from the resource's VN address, which the same /32 lets in.

// rttWait bounds one round-trip measurement (a WireGuard handshake with each candidate node).
const rttWait = 1500 * time.Millisecond

// rttMaxAge: a measured round trip is measured again after this long, when a choice needs it.
const rttMaxAge = 5 * time.Minute

// route is the node chosen for one resource.
type route struct {
	key    tunnel.Key
	node   KnownNode
	ep     netip.AddrPort // the node's endpoint, resolved when chosen
	vn     netip.Prefix   // the resource's VN address as a /32
	res    api.Resource   // the resource as last seen, to choose again when the node fails
	ctx    context.Context
	cancel context.CancelFunc // ends dials through this choice when it changes
}

// peerWatch is the liveness of a route peer other than the node in use (as fleet.lastRx… for it).
type peerWatch struct {
	lastRx           uint64
	lastRxAt, kickAt time.Time
}

type rttSample struct {
	rtt time.Duration // 0: the node did not answer within rttWait
	at  time.Time
}

// via is where a connection to a resource goes: through the route chosen for it (routed), or
// through the node in use for the control API (a resource without Route, from a node that predates
// routing).
type via struct {
	key    tunnel.Key
	label  string
	ctx    context.Context
	routed bool
}

// errNoRoute is returned for a resource that no node can carry; its text names the node's reason.
type errNoRoute struct{ name, reason string }

func (e errNoRoute) Error() string {
	reason := e.reason
	if reason == "" {
		reason = "no node can reach it"
	}
	return fmt.Sprintf("ferry: cannot connect to %q: %s", e.name, printable(reason))
}

// routableVN is the resource's VN address when it may be routed to a node of its own: an IPv4
// unicast address that is not the nodes' in-tunnel address (a /32 of that would send the control
// API to the resource's node).
func routableVN(r api.Resource) (netip.AddrPort, error) {
	vn, err := netip.ParseAddrPort(r.VNAddress)
	switch {
	case err != nil || !vn.Addr().Is4():
		return netip.AddrPort{}, fmt.Errorf("ferry: resource %q has no usable virtual networking address %q", r.Name, printable(r.VNAddress))
	case vn.Addr() == api.NodeTunnelAddress || !vn.Addr().IsGlobalUnicast() && !vn.Addr().IsPrivate():
		return netip.AddrPort{}, fmt.Errorf("ferry: resource %q has virtual networking address %s, which cannot be routed to a node of its own", r.Name, vn)
	}
	return vn, nil
}

// candidate is one node that may carry a resource, as the choice sees it.
type candidate struct {
	key      tunnel.Key
	node     KnownNode
	health   string        // RouteNode.Health
	rtt      time.Duration // 0: not measured (or did not answer)
	failedAt time.Time     // when it last stopped answering; zero: never
}

func healthRank(h string) int {
	switch h {
	case api.HealthHealthy:
		return 0
	case "":
		return 1
	default:
		return 2
	}
}

// pickCandidate chooses among cands (in the node list's order): a healthy node before one not
// checked yet before an unhealthy one, then the lowest measured round trip (measured before not
// measured), then the list's order; a node that stopped answering within deadFor is skipped while
// another is left. The node in use (sticky) is kept while it is usable and no less healthy than the
// best other: a lower round trip elsewhere does not move a resource. -1 when cands is empty.
func pickCandidate(cands []candidate, sticky tunnel.Key, now time.Time) int {
	usable := func(c candidate) bool { return c.failedAt.IsZero() || now.Sub(c.failedAt) >= deadFor }
	if !slices.ContainsFunc(cands, usable) {
		usable = func(candidate) bool { return true } // every one failed lately: try them anyway
	}
	best := -1
	less := func(a, b candidate) bool {
		if ha, hb := healthRank(a.health), healthRank(b.health); ha != hb {
			return ha < hb
		}
		switch {
		case a.rtt > 0 && b.rtt > 0:
			return a.rtt < b.rtt
		default:
			return a.rtt > 0 && b.rtt == 0
		}
	}
	for i, c := range cands {
		if usable(c) && (best < 0 || less(c, cands[best])) {
			best = i
		}
	}
	if best < 0 {
		return -1
	}
	if i := slices.IndexFunc(cands, func(c candidate) bool { return c.key == sticky }); i >= 0 && !sticky.IsZero() &&
		usable(cands[i]) && healthRank(cands[i].health) <= healthRank(cands[best].health) {
		return i
	}
	return best
}

// nodeByID returns the listed node with ID id; f.mu is held.
func (f *fleet) nodeByID(id string) (KnownNode, bool) {
	i := slices.IndexFunc(f.nodes, func(n KnownNode) bool { return n.ID == id })
	if i < 0 {
		return KnownNode{}, false
	}
	return f.nodes[i], true
}

// candidates are the resource's candidate nodes that this client lists as online; f.mu is held.
func (f *fleet) candidates(rt *api.Route) []candidate {
	var out []candidate
	for _, rn := range rt.Nodes {
		n, ok := f.nodeByID(rn.NodeID)
		if !ok || !n.online() {
			continue
		}
		k, err := tunnel.ParseKey(n.WireGuardPublicKey)
		if err != nil {
			continue
		}
		c := candidate{key: k, node: n, health: rn.Health, failedAt: f.failed[k]}
		if s, ok := f.rtt[k]; ok {
			c.rtt = s.rtt
		}
		out = append(out, c)
	}
	return out
}

// resources reads the user's resources (GET /v1/resources) from the node in use.
func (d *Daemon) resources(ctx context.Context) ([]api.Resource, error) {
	rs, err := d.api.Resources(ctx)
	if err == nil && d.opts.editRoutes != nil {
		d.opts.editRoutes(rs)
	}
	return rs, err
}

// routeFor decides where a new connection to r goes, choosing (or keeping) its node.
func (d *Daemon) routeFor(r api.Resource) (via, error) {
	if r.Route == nil {
		f := &d.fleet
		f.mu.Lock()
		defer f.mu.Unlock()
		return via{key: f.cur, label: f.curNode.label(), ctx: f.nodeCtx}, nil
	}
	if len(r.Route.Nodes) == 0 {
		d.dropRoute(r.Name)
		return via{}, errNoRoute{name: r.Name, reason: r.Route.Reason}
	}
	vn, err := routableVN(r)
	if err != nil {
		return via{}, err
	}
	d.routeMu.Lock()
	defer d.routeMu.Unlock()
	f := &d.fleet
	now := time.Now()
	f.mu.Lock()
	cands := f.candidates(r.Route)
	old := f.routes[r.Name]
	var sticky tunnel.Key
	if old != nil {
		sticky = old.key
	}
	var unmeasured []KnownNode
	if old == nil || !slices.ContainsFunc(cands, func(c candidate) bool { return c.key == old.key }) {
		for _, c := range cands {
			if s, ok := f.rtt[c.key]; len(cands) > 1 && (!ok || now.Sub(s.at) > rttMaxAge) {
				unmeasured = append(unmeasured, c.node)
			}
		}
	}
	f.mu.Unlock()
	if len(cands) == 0 {
		return via{}, errNoRoute{name: r.Name, reason: "none of the nodes that may carry it is online in this client's node list (ferry status shows the node list's state)"}
	}
	if len(unmeasured) > 0 {
		d.measureRTT(unmeasured)
		f.mu.Lock()
		cands = f.candidates(r.Route)
		f.mu.Unlock()
	}
	i := pickCandidate(cands, sticky, now)
	if i < 0 {
		return via{}, errNoRoute{name: r.Name, reason: r.Route.Reason}
	}
	c := cands[i]
	if old != nil && old.key == c.key {
		f.mu.Lock()
		old.res, old.node = r, c.node
		// The resource's VN address moved (the org's subnet changed): its /32 moves with it on
		// the same node's peer, or connections to the new address would go to the control node.
		moved := old.vn.Addr() != vn.Addr()
		old.vn = netip.PrefixFrom(vn.Addr(), vn.Addr().BitLen())
		v := via{key: old.key, label: old.node.label(), ctx: old.ctx, routed: true}
		f.mu.Unlock()
		if moved {
			d.syncPeers()
		}
		return v, nil
	}
	ctx, cancel := context.WithTimeout(d.ctx, 2*time.Second)
	ep, err := resolveEndpoint(ctx, c.node.WireGuardEndpoint)
	cancel()
	if err != nil {
		f.mu.Lock()
		f.failed[c.key] = now
		f.mu.Unlock()
		return via{}, fmt.Errorf("ferry: resolve the endpoint of node %s for %q: %w", c.node.label(), r.Name, err)
	}
	rt := &route{key: c.key, node: c.node, ep: ep, vn: netip.PrefixFrom(vn.Addr(), vn.Addr().BitLen()), res: r}
	rt.ctx, rt.cancel = context.WithCancel(d.ctx)
	f.mu.Lock()
	f.routes[r.Name] = rt
	if old != nil {
		old.cancel()
	}
	var ending []*relay
	if old != nil {
		for rl := range f.sessions {
			if rl.routed && rl.res == r.Name && rl.node == old.key {
				ending = append(ending, rl)
			}
		}
	}
	f.mu.Unlock()
	d.syncPeers()
	if old != nil {
		d.log.Warn("resource moved to another node: new connections go there", "resource", r.Name, "from", old.node.label(), "to", c.node.label(), "sessions_ended", len(ending))
	} else {
		d.log.Info("node chosen for resource", "resource", r.Name, "node", c.node.label(), "health", c.health, "rtt", c.rtt)
	}
	d.endRelays(ending, fmt.Sprintf("ferry: resource %q moved from Ferry node %s; reconnect to use node %s", r.Name, old.labelOrEmpty(), c.node.label()))
	return via{key: rt.key, label: c.node.label(), ctx: rt.ctx, routed: true}, nil
}

func (r *route) labelOrEmpty() string {
	if r == nil {
		return ""
	}
	return r.node.label()
}

// endRelays ends relays with msg (a FATAL 08006 each), off the caller's goroutine.
func (d *Daemon) endRelays(rs []*relay, msg string) {
	for _, r := range rs {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			r.end(msg, d.log)
		}()
	}
}

// dropRoute forgets the node chosen for a resource (disconnected, or no longer routable).
func (d *Daemon) dropRoute(name string) {
	f := &d.fleet
	f.mu.Lock()
	rt, ok := f.routes[name]
	if ok {
		rt.cancel()
		delete(f.routes, name)
	}
	f.mu.Unlock()
	if ok {
		d.syncPeers()
	}
}

// routeFailed handles a route peer that stopped answering: its resources are given another
// candidate now, and their sessions through it end with a FATAL 08006.
func (d *Daemon) routeFailed(k tunnel.Key, now time.Time) {
	f := &d.fleet
	f.mu.Lock()
	f.failed[k] = now
	delete(f.watch, k)
	var moved []api.Resource
	lost := ""
	for name, rt := range f.routes {
		if rt.key == k {
			lost = rt.node.label()
			moved = append(moved, rt.res)
			rt.cancel()
			delete(f.routes, name)
		}
	}
	var ending []*relay
	for rl := range f.sessions {
		if rl.routed && rl.node == k {
			ending = append(ending, rl)
		}
	}
	f.mu.Unlock()
	if len(moved) == 0 && len(ending) == 0 {
		return
	}
	d.syncPeers()
	byRes := map[string]string{}
	for _, r := range moved {
		v, err := d.routeFor(r)
		if err == nil && v.key == k {
			// The route read earlier names no other node than the one that failed, but the client
			// has moved to another node: until the next read of the resources (from that node)
			// says otherwise, the resource goes through the node in use.
			f.mu.Lock()
			cur, curLabel := f.cur, f.curNode.label()
			f.mu.Unlock()
			if cur != k {
				d.dropRoute(r.Name)
				d.syncPeers()
				v = via{key: cur, label: curLabel}
			}
		}
		if err != nil {
			d.log.Warn("a resource's node stopped answering and no other node can carry it", "resource", r.Name, "node", lost, "err", err)
			continue
		}
		byRes[r.Name] = v.label
		if v.key != k {
			d.log.Warn("a resource's node stopped answering: new connections go to another node", "resource", r.Name, "from", lost, "to", v.label)
		}
	}
	for _, rl := range ending {
		msg := fmt.Sprintf("ferry: connection to Ferry node %s lost", lost)
		if next := byRes[rl.res]; next != "" {
			msg += "; reconnect to use node " + next
		}
		d.endRelays([]*relay{rl}, msg)
	}
}

// routePrefixes are the /32s of the resources routed to k; f.mu is held.
func (f *fleet) routePrefixes(k tunnel.Key) []netip.Prefix {
	var out []netip.Prefix
	for _, rt := range f.routes {
		if rt.key == k {
			out = append(out, rt.vn)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// syncPeers makes the tunnel's peers match the routes: each chosen node a peer with its resources'
// /32s, the node in use keeping 0.0.0.0/0 (plus its own /32s), route peers no longer chosen removed
// (the preferred node kept without addresses, for the return probes).
func (d *Daemon) syncPeers() {
	d.link.mu.Lock()
	defer d.link.mu.Unlock()
	f := &d.fleet
	f.mu.Lock()
	want := map[tunnel.Key]*route{}
	for _, rt := range f.routes {
		want[rt.key] = rt
	}
	cur, preferred := f.cur, f.preferred
	var peers []tunnel.Peer
	var removed []tunnel.Key
	curPeer := d.link.peer
	if curPeer.PublicKey == cur {
		curPeer.AllowedIPs = append(slices.Clone(allowedAll), f.routePrefixes(cur)...)
		peers = append(peers, curPeer)
	}
	for k, rt := range want {
		if k == cur {
			continue
		}
		peers = append(peers, tunnel.Peer{PublicKey: k, AllowedIPs: f.routePrefixes(k), Endpoint: rt.ep, PersistentKeepalive: PersistentKeepalive})
		if f.watch[k] == nil {
			f.watch[k] = &peerWatch{lastRxAt: time.Now()}
		}
	}
	for k := range f.applied {
		if want[k] == nil && k != cur {
			removed = append(removed, k)
			delete(f.watch, k)
		}
	}
	f.applied = map[tunnel.Key]bool{}
	for k := range want {
		if k != cur {
			f.applied[k] = true
		}
	}
	f.mu.Unlock()
	for _, p := range peers {
		if err := d.tun.AddPeer(p); err != nil {
			d.log.Warn("could not set a node's routes in the tunnel", "err", err)
			continue
		}
		if p.PublicKey == cur {
			d.link.peer = p
		}
	}
	for _, k := range removed {
		var err error
		if k == preferred {
			err = d.tun.AddPeer(tunnel.Peer{PublicKey: k}) // kept without addresses: the return probes use it
		} else {
			err = d.tun.RemovePeer(k)
		}
		if err != nil && !errors.Is(err, tunnel.ErrPeerNotFound) {
			d.log.Warn("could not retire a node's routes in the tunnel", "err", err)
		}
	}
}

// measureRTT measures the round trip to each node by timing a WireGuard handshake with it: the
// handshake goes to the node's own WireGuard endpoint (nothing is sent anywhere else), needs no other
// port or protocol, and proves the node holds its key, which a TCP or ICMP probe would not. A node
// that is not a peer yet is one for the measurement, without addresses (it routes nothing).
func (d *Daemon) measureRTT(nodes []KnownNode) {
	f := &d.fleet
	type probe struct {
		key   tunnel.Key
		start time.Time
		temp  bool
	}
	var probes []probe
	present := map[tunnel.Key]bool{}
	if peers, err := d.tun.Peers(); err == nil {
		for _, p := range peers {
			present[p.PublicKey] = true
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, n := range nodes {
		k, err := tunnel.ParseKey(n.WireGuardPublicKey)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := probe{key: k}
			if !present[k] {
				ctx, cancel := context.WithTimeout(d.ctx, rttWait)
				ep, err := resolveEndpoint(ctx, n.WireGuardEndpoint)
				cancel()
				if err != nil {
					return
				}
				if err := d.tun.AddPeer(tunnel.Peer{PublicKey: k, Endpoint: ep}); err != nil {
					return
				}
				p.temp = true
			}
			p.start = time.Now()
			if err := d.tun.Rehandshake(k); err != nil {
				return
			}
			mu.Lock()
			probes = append(probes, p)
			mu.Unlock()
		}()
	}
	wg.Wait()
	got := map[tunnel.Key]time.Duration{}
	deadline := time.Now().Add(rttWait)
	for len(got) < len(probes) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		peers, err := d.tun.Peers()
		if err != nil {
			break
		}
		for _, pr := range probes {
			i := slices.IndexFunc(peers, func(ps tunnel.PeerStatus) bool { return ps.PublicKey == pr.key })
			if _, done := got[pr.key]; !done && i >= 0 && peers[i].LastHandshake.After(pr.start) {
				got[pr.key] = max(time.Since(pr.start), time.Microsecond)
			}
		}
	}
	now := time.Now()
	f.mu.Lock()
	for _, pr := range probes {
		f.rtt[pr.key] = rttSample{rtt: got[pr.key], at: now}
	}
	var drop []tunnel.Key
	for _, pr := range probes {
		if pr.temp && pr.key != f.cur && pr.key != f.preferred && !f.applied[pr.key] {
			drop = append(drop, pr.key)
		}
	}
	f.mu.Unlock()
	d.link.mu.Lock()
	for _, k := range drop {
		_ = d.tun.RemovePeer(k)
	}
	d.link.mu.Unlock()
	d.log.Debug("measured round trips to nodes", "answered", len(got), "asked", len(probes))
}

// dialVia dials addr through v, bounded by dialTimeout.
func (d *Daemon) dialVia(v via, addr string) (net.Conn, error) {
	if !v.routed {
		return d.dialNode(addr)
	}
	ctx, cancel := context.WithTimeout(v.ctx, dialTimeout)
	defer cancel()
	// As dialNode: a node that restarted lost the session keys; a new handshake before the SYN's
	// first retransmission.
	slow := time.AfterFunc(slowDial, func() { _ = d.tun.Rehandshake(v.key) })
	defer slow.Stop()
	return d.tun.Stack().DialContext(ctx, "tcp", addr)
}

// nodeFor names the node a connected resource's new connections go to, for status.
func (d *Daemon) nodeFor(r api.Resource) string {
	f := &d.fleet
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Route == nil {
		return f.curNode.label()
	}
	if rt, ok := f.routes[r.Name]; ok {
		return rt.node.label()
	}
	return ""
}

// ensureRoutes chooses a node for each connected resource that has none yet (or whose node is no
// longer a candidate), so that status names it before the first connection; one run at a time.
func (d *Daemon) ensureRoutes(rs []api.Resource) {
	if !d.routing.CompareAndSwap(false, true) {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer d.routing.Store(false)
		for _, r := range rs {
			if r.Route == nil {
				d.dropRoute(r.Name)
				continue
			}
			if _, err := d.routeFor(r); err != nil {
				d.log.Debug("no node for a connected resource", "resource", r.Name, "err", err)
			}
		}
	}()
}

// routeFresh is routeFor, tried once more after re-reading the node list and the resources when
// the cached ones leave the resource no node: a node list not read yet (the daemon has just
// started) or a route an administrator has just changed (a node tagged, a resource moved out of a
// proxy cluster) must not refuse the next connection until the next poll. Refused connections that
// arrive while a re-read is under way share it (one read for a burst of retries). It returns the
// resource as it decided on it, which the caller keeps using (routeFor with the stale one would
// drop the route just chosen).
func (d *Daemon) routeFresh(r api.Resource) (via, api.Resource, error) {
	v, err := d.routeFor(r)
	if err == nil || !errors.As(err, new(errNoRoute)) {
		return v, r, err
	}
	refused := time.Now()
	d.routeRefresh.Lock()
	defer d.routeRefresh.Unlock()
	if !d.routeRefreshAt.After(refused) {
		d.routeRefreshAt = time.Now()
		d.refreshNodes()
		ctx, cancel := context.WithTimeout(d.ctx, d.link.probeTimeout())
		rs, rerr := d.resources(ctx)
		cancel()
		if rerr != nil {
			return v, r, err
		}
		d.follow(rs)
		d.routeRefreshList = rs
	}
	i := slices.IndexFunc(d.routeRefreshList, func(x api.Resource) bool { return x.Name == r.Name })
	if i < 0 {
		return v, r, err
	}
	r = d.routeRefreshList[i]
	v, err = d.routeFor(r)
	return v, r, err
}
