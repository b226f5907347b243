package client

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/internal/pgframe"
	"github.com/ferryhq/ferry/tunnel"
)

// Failover timings. The node in use answers the catalog poll every followInterval, so a link that
// carries nothing from the node for silentAfter is suspect: the client forces a WireGuard
// handshake, and a node that does not complete it within handshakeWait (the keepalive window; a
// handshake takes one round trip) is taken for gone. New connections then go to another node, at
// most silentAfter + handshakeWait + livenessTick after the node's last answer.
const (
	livenessTick  = 500 * time.Millisecond
	silentAfter   = 3 * time.Second
	handshakeWait = 3 * time.Second
	// probeEvery is how often a handshake with the preferred node is attempted while another node
	// is in use (wireguard-go sends at most one initiation per 5 s, REKEY_TIMEOUT).
	probeEvery = 5 * time.Second
	// deadFor: a node that stopped answering is not chosen again for this long while another
	// node is left to try.
	deadFor = 30 * time.Second
	// returnDeferMax bounds how long the return to the preferred node waits for the sessions open
	// through the node in use to end (returning ends them, with a FATAL 08006 each).
	returnDeferMax = 2 * time.Minute
)

// allowedAll: the node in use is the tunnel's only routed peer and takes every address.
var allowedAll = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}

// fleet is the client's choice of node. Exactly one node is in use (the WireGuard peer that routes
// every address, since every node answers at the same in-tunnel address); the preferred node (the
// one the device enrolled with) stays a peer without addresses while another is in use, so that
// handshakes can tell when it is back.
type fleet struct {
	mu        sync.Mutex
	nodes     []KnownNode // the accepted node list (State.Nodes)
	listErr   string      // why the last node list was refused; "" when it was accepted
	preferred tunnel.Key
	enrolled  KnownNode // the preferred node as the enrollment described it
	cur       tunnel.Key
	curNode   KnownNode
	rxKey     tunnel.Key
	lastRx    uint64
	lastRxAt  time.Time
	kickAt    time.Time // a handshake with the node in use was forced because it was silent
	leftAt    time.Time // when the preferred node was left
	probeAt   time.Time // the last handshake attempt to the preferred node
	backAt    time.Time // the preferred node answered a probe
	failed    map[tunnel.Key]time.Time
	alone     bool   // the node in use is silent and no other node is known: logged once
	note      string // the last change of node, for status
	sessions  map[*relay]struct{}
	// Per-resource choice of node (route.go).
	routes  map[string]*route         // by resource name
	applied map[tunnel.Key]bool       // route peers set in the tunnel, other than the node in use
	watch   map[tunnel.Key]*peerWatch // liveness of those route peers
	rtt     map[tunnel.Key]rttSample  // measured round trips
	// nodeCtx ends when the node in use changes: dials through the node left stop waiting on it.
	nodeCtx    context.Context
	nodeCancel context.CancelFunc
}

// nodeByKey returns the listed node with key k.
func (f *fleet) nodeByKey(k tunnel.Key) (KnownNode, bool) {
	for _, n := range f.nodes {
		if nk, err := tunnel.ParseKey(n.WireGuardPublicKey); err == nil && nk == k {
			return n, true
		}
	}
	return KnownNode{}, false
}

// pick chooses the node to use instead of the one in use: the preferred node first, then the list's
// order, online nodes before offline ones, never one that failed within deadFor (while every other
// node failed lately the client stays where it is rather than cycle through dead nodes; it returns
// to the preferred node when a probe answers, and tries the others again once deadFor has passed).
// ok is false when there is no node to try.
func (f *fleet) pick(now time.Time) (KnownNode, bool) {
	order := slices.Clone(f.nodes)
	slices.SortStableFunc(order, func(a, b KnownNode) int {
		rank := func(n KnownNode) int {
			r := 0
			if k, _ := tunnel.ParseKey(n.WireGuardPublicKey); k != f.preferred {
				r++
			}
			if !n.online() {
				r += 2
			}
			return r
		}
		return rank(a) - rank(b)
	})
	for _, n := range order {
		k, err := tunnel.ParseKey(n.WireGuardPublicKey)
		if err != nil || k == f.cur {
			continue
		}
		if t, failed := f.failed[k]; failed && now.Sub(t) < deadFor {
			continue
		}
		return n, true
	}
	return KnownNode{}, false
}

// startFleet sets the fleet up from the state at daemon start: the enrolling node in use.
func (d *Daemon) startFleet(preferred tunnel.Key, now time.Time) {
	f := &d.fleet
	f.nodes = slices.Clone(d.state.Nodes)
	f.preferred, f.cur, f.rxKey = preferred, preferred, preferred
	f.lastRxAt = now
	f.failed = map[tunnel.Key]time.Time{}
	f.sessions = map[*relay]struct{}{}
	f.routes, f.applied, f.watch, f.rtt = map[string]*route{}, map[tunnel.Key]bool{}, map[tunnel.Key]*peerWatch{}, map[tunnel.Key]rttSample{}
	f.nodeCtx, f.nodeCancel = context.WithCancel(d.ctx)
	f.enrolled = KnownNode{WireGuardEndpoint: d.state.WireGuardEndpoint, WireGuardPublicKey: d.state.NodePublicKey, State: "online"}
	if n, ok := f.nodeByKey(preferred); ok {
		f.curNode = n
	} else {
		f.curNode = f.enrolled
	}
}

// returnTarget is the preferred node to return to once it answered a probe at answeredAt (the
// tunnel's endpoint for it): its entry in the list, or what the enrollment said when the list does
// not name it, dialled at the endpoint where it just answered. The list comes from the node in use,
// which may be stale or hostile: leaving the preferred node out, or giving it another endpoint,
// must not keep the client away from it.
func (f *fleet) returnTarget(answeredAt string) KnownNode {
	n, ok := f.nodeByKey(f.preferred)
	if !ok {
		n = f.enrolled
	}
	if answeredAt != "" {
		n.WireGuardEndpoint = answeredAt
	}
	return n
}

// watchNodes checks the node in use and the preferred node every livenessTick until the daemon
// closes.
func (d *Daemon) watchNodes() {
	defer d.wg.Done()
	tick := time.NewTicker(livenessTick)
	defer tick.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case now := <-tick.C:
			d.checkLiveness(now)
		}
	}
}

// followNodes reads the node list soon after start and every nodesInterval until the daemon
// closes, apart from watchNodes: a read that waits on a dying node must not delay the failover.
func (d *Daemon) followNodes() {
	defer d.wg.Done()
	wait := time.Second
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = nodesInterval
		d.refreshNodes()
	}
}

// refreshNodes reads the node list from the node in use and keeps it when it passes checkNodeList.
func (d *Daemon) refreshNodes() {
	d.fleet.mu.Lock()
	servedBy, from := d.fleet.cur, d.fleet.curNode.label()
	d.fleet.mu.Unlock()
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	list, err := d.fetchNodes(ctx)
	cancel()
	if err != nil {
		d.log.Debug("could not read the node list", "node", from, "err", err)
		return
	}
	f := &d.fleet
	if err := checkNodeList(list, servedBy, d.tun.CheckPeerKey); err != nil {
		f.mu.Lock()
		repeat := f.listErr == err.Error()
		f.listErr = err.Error()
		f.mu.Unlock()
		if !repeat {
			d.log.Warn("refused the node list: keeping the nodes known before", "node", from, "err", err)
		}
		return
	}
	f.mu.Lock()
	f.listErr = ""
	changed := !slices.EqualFunc(f.nodes, list, sameNode)
	f.nodes = list
	if n, ok := f.nodeByKey(f.cur); ok {
		f.curNode = n
	}
	f.mu.Unlock()
	if !changed {
		return
	}
	d.mu.Lock()
	d.state.Nodes = slices.Clone(list)
	err = SaveState(d.dirs, d.state)
	d.mu.Unlock()
	if err != nil {
		d.log.Warn("could not save the node list", "err", err)
	}
	d.log.Info("node list updated", "nodes", len(list))
}

func sameNode(a, b KnownNode) bool {
	if a.ID != b.ID || a.Name != b.Name || a.WireGuardEndpoint != b.WireGuardEndpoint ||
		a.WireGuardPublicKey != b.WireGuardPublicKey || a.State != b.State || len(a.Tags) != len(b.Tags) {
		return false
	}
	for k, v := range a.Tags {
		if b.Tags[k] != v {
			return false
		}
	}
	return true
}

// checkLiveness is one look at the tunnel's peers: it forces a handshake with a silent node in use,
// fails over from one that did not complete it within handshakeWait, probes the preferred node
// while another is in use, and returns to it once it answers.
func (d *Daemon) checkLiveness(now time.Time) {
	peers, err := d.tun.Peers()
	if err != nil {
		d.log.Debug("could not read the tunnel's peers", "err", err)
		return
	}
	find := func(k tunnel.Key) (tunnel.PeerStatus, bool) {
		i := slices.IndexFunc(peers, func(p tunnel.PeerStatus) bool { return p.PublicKey == k })
		if i < 0 {
			return tunnel.PeerStatus{}, false
		}
		return peers[i], true
	}
	f := &d.fleet
	f.mu.Lock()
	cur, _ := find(f.cur)
	switch {
	case f.rxKey != f.cur:
		f.rxKey, f.lastRx = f.cur, cur.RxBytes
	case cur.RxBytes != f.lastRx:
		f.lastRx, f.lastRxAt, f.kickAt = cur.RxBytes, now, time.Time{}
	}
	if !f.kickAt.IsZero() && cur.LastHandshake.After(f.kickAt) {
		f.lastRxAt, f.kickAt = now, time.Time{}
	}
	var kick, dead bool
	switch {
	case f.kickAt.IsZero() && now.Sub(f.lastRxAt) > silentAfter:
		f.kickAt, kick = now, true
	case !f.kickAt.IsZero() && now.Sub(f.kickAt) > handshakeWait:
		dead = true
	}
	curKey := f.cur
	var routeKick, routeDead []tunnel.Key
	for k := range f.applied {
		w := f.watch[k]
		if w == nil || k == curKey {
			continue
		}
		p, _ := find(k)
		if p.RxBytes != w.lastRx {
			w.lastRx, w.lastRxAt, w.kickAt = p.RxBytes, now, time.Time{}
		}
		if !w.kickAt.IsZero() && p.LastHandshake.After(w.kickAt) {
			w.lastRxAt, w.kickAt = now, time.Time{}
		}
		switch {
		case w.kickAt.IsZero() && now.Sub(w.lastRxAt) > silentAfter:
			w.kickAt = now
			routeKick = append(routeKick, k)
		case !w.kickAt.IsZero() && now.Sub(w.kickAt) > handshakeWait:
			routeDead = append(routeDead, k)
		}
	}
	var probe bool
	var back KnownNode
	if f.cur != f.preferred && !dead {
		if pref, ok := find(f.preferred); ok {
			answered := pref.LastHandshake.After(f.leftAt) && now.Sub(pref.LastHandshake) < 2*probeEvery
			if answered && f.backAt.IsZero() {
				f.backAt = now
			}
			if !answered {
				f.backAt = time.Time{}
			}
			if now.Sub(f.probeAt) >= probeEvery {
				f.probeAt, probe = now, true
			}
			if answered && (f.countOn(f.cur) == 0 || now.Sub(f.backAt) > returnDeferMax) {
				back = f.returnTarget(pref.Endpoint)
			}
		}
	}
	f.mu.Unlock()

	if kick {
		d.log.Debug("the node is silent: forcing a handshake", "node", d.nodeLabel())
		if err := d.tun.Rehandshake(curKey); err != nil {
			d.log.Debug("could not force a handshake", "err", err)
		}
	}
	for _, k := range routeKick {
		if err := d.tun.Rehandshake(k); err != nil {
			d.log.Debug("could not force a handshake with a resource's node", "err", err)
		}
	}
	for _, k := range routeDead {
		d.routeFailed(k, now)
	}
	if probe {
		if err := d.tun.Rehandshake(f.preferred); err != nil {
			d.log.Debug("could not probe the preferred node", "err", err)
		}
	}
	switch {
	case dead:
		d.failover(curKey, now)
		d.routeFailed(curKey, now) // the resources chosen on it too
	case back.WireGuardPublicKey != "":
		d.switchTo(back, now, fmt.Sprintf("Ferry is returning to node %s", back.label()), "returned to the preferred node")
	}
}

// countOn counts the sessions through the node with key k; f.mu is held.
func (f *fleet) countOn(k tunnel.Key) int {
	n := 0
	for r := range f.sessions {
		if r.node == k {
			n++
		}
	}
	return n
}

// failover moves from the node with key from, which did not answer a handshake, to another node.
func (d *Daemon) failover(from tunnel.Key, now time.Time) {
	f := &d.fleet
	f.mu.Lock()
	if f.cur != from {
		f.mu.Unlock()
		return
	}
	f.failed[from] = now
	lost := f.curNode.label()
	next, ok := f.pick(now)
	if !ok {
		// Nothing else to use: keep the node and try it again after another window.
		f.kickAt, f.lastRxAt = time.Time{}, now
		logIt := !f.alone
		f.alone = true
		f.mu.Unlock()
		if logIt {
			d.log.Warn("the node stopped answering and no other node of the deployment is left to try: waiting for it", "node", lost)
		}
		return
	}
	f.mu.Unlock()
	d.switchTo(next, now, fmt.Sprintf("connection to Ferry node %s lost", lost), "the node stopped answering")
}

// switchTo makes next the node in use: it becomes the peer that routes every address, the node
// left is removed (or kept without addresses when it is the preferred node, to probe it), and the
// sessions through the node left end with a FATAL 08006 that says so.
func (d *Daemon) switchTo(next KnownNode, now time.Time, lost, why string) {
	key, err := tunnel.ParseKey(next.WireGuardPublicKey)
	if err != nil {
		return // checkNodeList let no such node in
	}
	ctx, cancel := context.WithTimeout(d.ctx, 2*time.Second)
	ep, err := resolveEndpoint(ctx, next.WireGuardEndpoint)
	cancel()
	f := &d.fleet
	if err != nil {
		d.log.Warn("could not resolve a node's endpoint: trying another", "node", next.label(), "err", err)
		f.mu.Lock()
		f.failed[key] = now
		f.mu.Unlock()
		return
	}
	d.link.mu.Lock()
	old := d.link.peer
	// The node taken keeps the /32s of the resources chosen on it; the node left keeps those chosen
	// on it (route.go), else it is removed, or kept without addresses when it is the preferred node.
	f.mu.Lock()
	peer := tunnel.Peer{PublicKey: key, AllowedIPs: append(slices.Clone(allowedAll), f.routePrefixes(key)...), Endpoint: ep, PersistentKeepalive: PersistentKeepalive}
	keep := f.routePrefixes(old.PublicKey)
	f.mu.Unlock()
	if err := d.tun.AddPeer(peer); err != nil {
		d.link.mu.Unlock()
		d.log.Warn("could not switch to another node", "node", next.label(), "err", err)
		f.mu.Lock()
		f.failed[key] = now
		f.mu.Unlock()
		return
	}
	switch {
	case len(keep) > 0:
		err = d.tun.AddPeer(tunnel.Peer{PublicKey: old.PublicKey, AllowedIPs: keep, Endpoint: old.Endpoint, PersistentKeepalive: PersistentKeepalive})
	case old.PublicKey == f.preferred:
		// Kept as a peer that routes nothing: handshakes with it tell when it is back.
		err = d.tun.AddPeer(tunnel.Peer{PublicKey: old.PublicKey, Endpoint: old.Endpoint})
	default:
		err = d.tun.RemovePeer(old.PublicKey)
	}
	if err != nil {
		d.log.Warn("could not retire the node left", "err", err)
	}
	d.link.peer, d.link.endpoint = peer, next.WireGuardEndpoint

	f.mu.Lock()
	from := f.curNode.label()
	if old.PublicKey == f.preferred {
		f.leftAt, f.probeAt = now, now
	}
	f.cur, f.curNode = key, next
	delete(f.applied, key)
	delete(f.watch, key)
	if len(keep) > 0 {
		f.applied[old.PublicKey] = true
		if f.watch[old.PublicKey] == nil {
			f.watch[old.PublicKey] = &peerWatch{lastRxAt: now}
		}
	}
	d.link.mu.Unlock()
	f.nodeCancel()
	f.nodeCtx, f.nodeCancel = context.WithCancel(d.ctx)
	f.lastRxAt, f.kickAt, f.backAt, f.alone = now, now, time.Time{}, false
	f.note = fmt.Sprintf("%s at %s: %s; using node %s", why, now.UTC().Format(time.TimeOnly), from, next.label())
	var ending []*relay
	for r := range f.sessions {
		if r.node == old.PublicKey && !r.routed {
			ending = append(ending, r)
		}
	}
	f.mu.Unlock()
	if err := d.tun.Rehandshake(key); err != nil {
		d.log.Debug("could not start a handshake with the new node", "err", err)
	}
	d.log.Warn("switched to another node: new connections go there", "from", from, "to", next.label(), "endpoint", ep, "why", why, "sessions_ended", len(ending))
	d.wg.Add(1)
	go func() { // the new node's list may be newer
		defer d.wg.Done()
		d.refreshNodes()
	}()
	msg := fmt.Sprintf("ferry: %s; reconnect to use node %s", lost, next.label())
	for _, r := range ending {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			r.end(msg, d.log)
		}()
	}
}

// nodeLabel names the node in use.
func (d *Daemon) nodeLabel() string {
	d.fleet.mu.Lock()
	defer d.fleet.mu.Unlock()
	return d.fleet.curNode.label()
}

// relay is one local connection carried to a resource through the node in use: the node it went
// through, and the framing of its PostgreSQL stream, so that ending it can tell the client why.
type relay struct {
	node   tunnel.Key
	res    string // the resource
	routed bool   // node was chosen for the resource (route.go), not the node in use
	local  net.Conn
	up     net.Conn
	tr     pgframe.Tracker
	wmu    sync.Mutex // held while bytes are written to local
	ended  atomic.Bool
}

// track registers a relay through the node in use; untrack it when it ends. A relay whose dial
// went through a node that has been left since is ended at once.
func (d *Daemon) track(local, up net.Conn, v via, res string) *relay {
	r := &relay{node: v.key, res: res, routed: v.routed, local: local, up: up}
	f := &d.fleet
	f.mu.Lock()
	f.sessions[r] = struct{}{}
	stale := f.cur != v.key
	next := f.curNode.label()
	if v.routed {
		rt := f.routes[res]
		stale = rt == nil || rt.key != v.key
		next = rt.labelOrEmpty()
	}
	f.mu.Unlock()
	if stale {
		msg := "ferry: the Ferry node this connection went through was left; reconnect"
		if next != "" {
			msg += " to use node " + next
		}
		r.end(msg, d.log)
	}
	return r
}

func (d *Daemon) untrack(r *relay) {
	d.fleet.mu.Lock()
	delete(d.fleet.sessions, r)
	d.fleet.mu.Unlock()
}

// nodeContext ends when the node in use changes (or the daemon closes).
func (d *Daemon) nodeContext() context.Context {
	d.fleet.mu.Lock()
	defer d.fleet.mu.Unlock()
	return d.fleet.nodeCtx
}

// currentNode is the key of the node in use.
func (d *Daemon) currentNode() tunnel.Key {
	d.fleet.mu.Lock()
	defer d.fleet.mu.Unlock()
	return d.fleet.cur
}

// end ends the relay because its node was left: the node side is closed at once, and the local
// client gets a FATAL ErrorResponse (SQLSTATE 08006, connection_failure) when it stands between two
// server messages (pgframe); in the middle of one no message can be framed, so the connection is
// closed and the log says why.
func (r *relay) end(msg string, log interface{ Warn(string, ...any) }) {
	if r.ended.Swap(true) {
		return
	}
	_ = r.up.Close()
	_ = r.local.SetWriteDeadline(time.Now().Add(2 * time.Second)) // unblocks a write in flight
	r.wmu.Lock()
	framed := r.tr.Boundary()
	if framed {
		b, err := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08006", Message: msg,
			Hint: "Ferry moved to another node; connect again (ferry status shows the node in use)."}).Encode(nil)
		if err == nil {
			_, err = r.local.Write(b)
		}
		framed = err == nil
	}
	r.wmu.Unlock()
	_ = r.local.Close()
	if framed {
		log.Warn("session ended: its node was left (the client got a FATAL 08006)", "reason", msg)
	} else {
		log.Warn("session closed: its node was left, in the middle of a server message, so no FATAL could be framed", "reason", msg)
	}
}

// relayConn is the local side of a relay as the splice sees it: what the client sends is followed
// for its startup packets, what it receives for message boundaries, and nothing more reaches it
// once the relay has ended.
type relayConn struct {
	net.Conn
	r *relay
}

func (c relayConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.r.tr.Client(p[:n])
	}
	return n, err
}

func (c relayConn) Write(p []byte) (int, error) {
	c.r.wmu.Lock()
	defer c.r.wmu.Unlock()
	if c.r.ended.Load() {
		return 0, net.ErrClosed
	}
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.r.tr.Server(p[:n])
	}
	return n, err
}

// CloseWrite passes the end of the node's stream on, unless the relay is ending: then end writes
// the FATAL first and closes.
func (c relayConn) CloseWrite() error {
	if c.r.ended.Load() {
		return nil
	}
	closeWrite(c.Conn)
	return nil
}
