package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ferryhq/ferry/netstack"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/pgproxy"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// reconcileInterval is how often the node re-checks WireGuard peers and open sessions against the
// catalog, besides right after each admin change. Revocations take effect within it.
const reconcileInterval = time.Second

// session is one proxied connection, kept so that revocations can end it.
type session struct {
	user     string
	device   netip.Addr
	resource string
	end      context.CancelCauseFunc
	done     <-chan struct{} // closed when the session has ended (its FATAL written, its records kept)
}

// sessions is the registry of open proxied connections.
type sessions struct {
	mu   sync.Mutex
	next int64
	open map[int64]*session
}

func (ss *sessions) add(s *session) (remove func()) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.open == nil {
		ss.open = map[int64]*session{}
	}
	ss.next++
	id := ss.next
	ss.open[id] = s
	return func() {
		ss.mu.Lock()
		delete(ss.open, id)
		ss.mu.Unlock()
	}
}

func (ss *sessions) snapshot() []*session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]*session, 0, len(ss.open))
	for _, s := range ss.open {
		out = append(out, s)
	}
	return out
}

// forward decides each new tunnelled TCP flow: a flow to a resource's virtual networking address
// from an enrolled device goes to the PostgreSQL proxy, which refuses it with FATAL 28000 when the
// user is not granted the resource; anything else is answered with RST. ctx only bounds the
// decision; the session runs under the node's own context.
func (n *Node) forward(ctx context.Context, f netstack.Flow) (func(net.Conn), error) {
	r, err := n.cat.ResourceByVNAddress(ctx, f.Local)
	if err != nil {
		return nil, err
	}
	u, err := n.cat.UserByDevice(ctx, f.Remote.Addr())
	if err != nil {
		return nil, err
	}
	acc, err := n.cat.AccessOf(ctx, u)
	if err != nil {
		return nil, err
	}
	t := n.up.Target(r)
	s := pgproxy.Session{User: u.Name, ClientAddr: f.Remote.String()}
	if !acc.Allows(r) {
		s.Denied = &pgproxy.Refusal{Code: "28000",
			Message: fmt.Sprintf("ferry: user %q is not granted access to resource %q", u.Name, r.Name),
			Hint:    "Ask a Ferry administrator to grant one of your roles this resource."}
		if u.Suspended {
			s.Denied.Message = fmt.Sprintf("ferry: user %q is suspended", u.Name)
			s.Denied.Hint = "Ask a Ferry administrator."
		}
		n.log.Warn("access denied", "user", u.Name, "resource", r.Name, "client", f.Remote.String())
	}
	return func(c net.Conn) {
		sctx, end := context.WithCancelCause(n.ctx)
		defer end(nil)
		done := make(chan struct{})
		remove := n.sessions.add(&session{user: u.Name, device: f.Remote.Addr(), resource: r.Name, end: end, done: done})
		defer remove()
		defer close(done)
		n.metrics.session(c, func(c net.Conn) { n.proxy.Serve(sctx, c, t, s) })
	}, nil
}

// reconcilePeers makes the tunnel's peers the catalog's active devices. A device the tunnel refuses
// (a key stored by an older node that did not check keys) is skipped and logged once; the other
// peers are still applied.
func (n *Node) reconcilePeers(ctx context.Context) error {
	n.peerMu.Lock()
	defer n.peerMu.Unlock()
	devices, err := n.cat.ActiveDevices(ctx)
	if err != nil {
		return err
	}
	want := map[tunnel.Key]catalog.Device{}
	bad := map[string]bool{}
	for _, d := range devices {
		k, err := tunnel.ParseKey(d.PublicKey)
		if err != nil {
			bad[d.PublicKey] = true
			n.logBadPeer(d, err)
			continue
		}
		want[k] = d
	}
	have, err := n.tun.Peers()
	if err != nil {
		return fmt.Errorf("list WireGuard peers: %w", err)
	}
	var errs []error
	for _, p := range have {
		if _, ok := want[p.PublicKey]; !ok {
			if err := n.tun.RemovePeer(p.PublicKey); err != nil && !errors.Is(err, tunnel.ErrPeerNotFound) {
				errs = append(errs, fmt.Errorf("remove WireGuard peer: %w", err))
				continue
			}
			n.log.Info("WireGuard peer removed", "public_key", p.PublicKey.String())
		}
		delete(want, p.PublicKey)
	}
	for _, d := range want {
		if err := n.addDevicePeer(d); err != nil {
			bad[d.PublicKey] = true
			n.logBadPeer(d, err)
		}
	}
	n.badPeers = bad // forget devices that were fixed or removed, so a new failure is logged again
	return errors.Join(errs...)
}

// logBadPeer logs, once per key until it stops failing, that device d cannot be a WireGuard peer.
func (n *Node) logBadPeer(d catalog.Device, err error) {
	if n.badPeers[d.PublicKey] {
		return
	}
	n.log.Error("skipping a device the tunnel cannot take; remove it with `ferry admin users devices USER --delete KEY`",
		"user", d.User, "device", d.Name, "address", d.Address, "public_key", d.PublicKey, "err", err)
}

// kick asks the reconcile loop to run now (after an admin change).
func (n *Node) kick() {
	select {
	case n.kickc <- struct{}{}:
	default:
	}
}

// reconcileLoop keeps WireGuard peers and open sessions in line with the catalog until the node closes.
func (n *Node) reconcileLoop() {
	defer n.wg.Done()
	t := time.NewTicker(reconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.kickc:
		}
		if err := n.reconcile(n.ctx); err != nil && n.ctx.Err() == nil {
			n.log.Error("reconcile access", "err", err)
		}
	}
}

// reconcile ends sessions the catalog no longer allows, telling the client why, then removes
// WireGuard peers whose device was deleted or whose user was suspended or deleted, and adds missing
// ones. Sessions go first: their FATAL travels through the peer that is about to be removed. A
// failure of either step is logged and does not keep the other from running.
func (n *Node) reconcile(ctx context.Context) error {
	if err := n.endSessions(ctx); err != nil && ctx.Err() == nil {
		n.log.Error("reconcile sessions", "err", err)
	}
	if err := n.reconcilePeers(ctx); err != nil && ctx.Err() == nil {
		n.log.Error("reconcile WireGuard peers", "err", err)
	}
	return nil
}

// sessionFlushWait bounds how long reconcile waits for the ended sessions of a device that loses its
// WireGuard peer to deliver their FATAL before the peer is removed.
const sessionFlushWait = 5 * time.Second

// endSessions ends the sessions the catalog no longer allows (grant revoked, user suspended or
// deleted, device or resource deleted), each with a FATAL that says why; the proxy also cancels what
// the session runs on the server. For a device that is about to lose its WireGuard peer (suspended
// or deleted user, deleted device) it waits, at most sessionFlushWait, until those sessions have
// ended, so the client has read the FATAL before the tunnel goes.
func (n *Node) endSessions(ctx context.Context) error {
	open := n.sessions.snapshot()
	if len(open) == 0 {
		return nil
	}
	rs, err := n.cat.Resources(ctx)
	if err != nil {
		return err
	}
	byName := map[string]resource.Resource{}
	for _, r := range rs {
		byName[r.Name] = r
	}
	type userAccess struct {
		user catalog.User
		acc  catalog.Access
	}
	access := map[netip.Addr]*userAccess{}
	var leaving []<-chan struct{}
	for _, s := range open {
		ua, ok := access[s.device]
		if !ok {
			u, err := n.cat.UserByDevice(ctx, s.device)
			switch {
			case err == nil:
				a, err := n.cat.AccessOf(ctx, u)
				if err != nil {
					return err
				}
				ua = &userAccess{user: u, acc: a}
			case !errors.Is(err, catalog.ErrNotFound):
				return err // the catalog failed: end nothing on its word
			}
			access[s.device] = ua // nil: device or user gone
		}
		r, exists := byName[s.resource]
		var why, hint, outcome string
		switch {
		case ua == nil:
			why, outcome = fmt.Sprintf("terminating connection: the Ferry device or user %q was removed", s.user), audit.OutcomeRemoved
		case ua.user.Suspended:
			why, outcome = fmt.Sprintf("terminating connection: user %q was suspended by a Ferry administrator", s.user), audit.OutcomeSuspended
			hint = "Ask a Ferry administrator to reinstate your account."
		case !exists:
			why, outcome = fmt.Sprintf("terminating connection: resource %q was deleted", s.resource), audit.OutcomeDeleted
		case !ua.acc.Allows(r):
			why, outcome = fmt.Sprintf("terminating connection: access of user %q to resource %q was revoked", s.user, s.resource), audit.OutcomeRevoked
		default:
			continue
		}
		if hint == "" {
			hint = "Ask a Ferry administrator if you need this access."
		}
		n.log.Info("ending session", "user", s.user, "resource", s.resource, "reason", why)
		s.end(&pgproxy.Refusal{Code: "57P01", Message: why, Hint: hint, Outcome: outcome})
		if ua == nil || ua.user.Suspended {
			leaving = append(leaving, s.done)
		}
	}
	if len(leaving) == 0 {
		return nil
	}
	wait := time.NewTimer(sessionFlushWait)
	defer wait.Stop()
	for _, done := range leaving {
		select {
		case <-done:
		case <-wait.C:
			n.log.Warn("ended sessions still closing; removing their WireGuard peers anyway", "sessions", len(leaving))
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
