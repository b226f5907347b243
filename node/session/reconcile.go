package session

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/pgproxy"
	"github.com/ferryhq/ferry/node/routing"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// DevicePeer is device d as a WireGuard peer: its key, and its tunnel address as its only allowed IP.
func DevicePeer(d catalog.Device) (tunnel.Peer, error) {
	k, err := tunnel.ParseKey(d.PublicKey)
	if err != nil {
		return tunnel.Peer{}, err
	}
	if !d.Address.Is4() || !api.TunnelSubnet.Contains(d.Address) || d.Address == api.NodeTunnelAddress {
		return tunnel.Peer{}, fmt.Errorf("device address %v is not a client address in %s", d.Address, api.TunnelSubnet)
	}
	return tunnel.Peer{PublicKey: k, AllowedIPs: []netip.Prefix{netip.PrefixFrom(d.Address, 32)}}, nil
}

// addDevicePeer makes device d a WireGuard peer.
func (m *Manager) addDevicePeer(d catalog.Device) error {
	p, err := DevicePeer(d)
	if err != nil {
		return err
	}
	return m.cfg.Peers.AddPeer(p)
}

// AddPeers makes the catalog's active devices WireGuard peers, at the node's start, and returns how
// many became one. Devices become peers one by one, so that one the tunnel refuses (a key stored by
// an older node that did not check keys) is skipped and logged instead of keeping the node down.
func (m *Manager) AddPeers(ctx context.Context) (int, error) {
	m.peerMu.Lock()
	defer m.peerMu.Unlock()
	devices, err := m.cfg.Catalog.ActiveDevices(ctx)
	if err != nil {
		return 0, err
	}
	peers := 0
	for _, d := range devices {
		if err := m.addDevicePeer(d); err != nil {
			m.badPeers[d.PublicKey] = true // logged here, not again by the reconcile loop
			m.log.Error("skipping a device the tunnel cannot take; remove it with `ferry admin users devices USER --delete KEY`",
				"user", d.User, "device", d.Name, "address", d.Address, "public_key", d.PublicKey, "err", err)
			continue
		}
		peers++
	}
	return peers, nil
}

// Enroll redeems the token for key and makes the device a WireGuard peer, both or neither: the peer
// is added inside the catalog transaction, which rolls back when that fails, and removed again when
// the commit fails. peerMu keeps the reconcile loop from seeing the peer before its device.
func (m *Manager) Enroll(ctx context.Context, secret string, key tunnel.Key, name string) (catalog.Device, catalog.User, error) {
	m.peerMu.Lock()
	defer m.peerMu.Unlock()
	added := false
	d, u, err := m.cfg.Catalog.Enroll(ctx, secret, key.String(), name, func(d catalog.Device) error {
		p, err := DevicePeer(d)
		if err != nil {
			return err
		}
		if err := m.cfg.Peers.AddPeer(p); err != nil {
			return fmt.Errorf("add WireGuard peer: %w", err)
		}
		added = true
		return nil
	})
	if err != nil && added {
		if rerr := m.cfg.Peers.RemovePeer(key); rerr != nil {
			m.log.Error("remove the WireGuard peer of a failed enrollment", "public_key", key.String(), "err", rerr)
		}
	}
	return d, u, err
}

// reconcilePeers makes the tunnel's peers the catalog's active devices. A device the tunnel refuses
// (a key stored by an older node that did not check keys) is skipped and logged once; the other
// peers are still applied.
func (m *Manager) reconcilePeers(ctx context.Context) error {
	m.peerMu.Lock()
	defer m.peerMu.Unlock()
	devices, err := m.cfg.Catalog.ActiveDevices(ctx)
	if err != nil {
		return err
	}
	want := map[tunnel.Key]catalog.Device{}
	bad := map[string]bool{}
	for _, d := range devices {
		k, err := tunnel.ParseKey(d.PublicKey)
		if err != nil {
			bad[d.PublicKey] = true
			m.logBadPeer(d, err)
			continue
		}
		want[k] = d
	}
	have, err := m.cfg.Peers.Peers()
	if err != nil {
		return fmt.Errorf("list WireGuard peers: %w", err)
	}
	var errs []error
	for _, p := range have {
		if _, ok := want[p.PublicKey]; !ok {
			if err := m.cfg.Peers.RemovePeer(p.PublicKey); err != nil && !errors.Is(err, tunnel.ErrPeerNotFound) {
				errs = append(errs, fmt.Errorf("remove WireGuard peer: %w", err))
				continue
			}
			m.log.Info("WireGuard peer removed", "public_key", p.PublicKey.String())
		}
		delete(want, p.PublicKey)
	}
	for _, d := range want {
		if err := m.addDevicePeer(d); err != nil {
			bad[d.PublicKey] = true
			m.logBadPeer(d, err)
		}
	}
	m.badPeers = bad // forget devices that were fixed or removed, so a new failure is logged again
	return errors.Join(errs...)
}

// logBadPeer logs, once per key until it stops failing, that device d cannot be a WireGuard peer.
func (m *Manager) logBadPeer(d catalog.Device, err error) {
	if m.badPeers[d.PublicKey] {
		return
	}
	m.log.Error("skipping a device the tunnel cannot take; remove it with `ferry admin users devices USER --delete KEY`",
		"user", d.User, "device", d.Name, "address", d.Address, "public_key", d.PublicKey, "err", err)
}

// Kick asks the reconcile loop to run now (after a change of the catalog).
func (m *Manager) Kick() {
	select {
	case m.kickc <- struct{}{}:
	default:
	}
}

// Run keeps WireGuard peers and open sessions in line with the catalog until ctx ends: every
// Config.Interval and after each Kick.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.kickc:
		}
		if err := m.Reconcile(ctx); err != nil && ctx.Err() == nil {
			m.log.Error("reconcile access", "err", err)
		}
	}
}

// Reconcile ends sessions the catalog no longer allows, telling the client why, then removes
// WireGuard peers whose device was deleted or whose user was suspended or deleted, and adds missing
// ones. Sessions go first: their FATAL travels through the peer that is about to be removed. A
// failure of either step is logged and does not keep the other from running.
func (m *Manager) Reconcile(ctx context.Context) error {
	if err := m.endSessions(ctx); err != nil && ctx.Err() == nil {
		m.log.Error("reconcile sessions", "err", err)
	}
	if err := m.reconcilePeers(ctx); err != nil && ctx.Err() == nil {
		m.log.Error("reconcile WireGuard peers", "err", err)
	}
	return nil
}

// sessionFlushWait bounds how long reconcile waits for the ended sessions of a device that loses its
// WireGuard peer to deliver their FATAL before the peer is removed.
const sessionFlushWait = 5 * time.Second

// endSessions ends the sessions the catalog no longer allows (grant revoked, user suspended or
// deleted, device or resource deleted, resource no longer carried by this node: route.go), each
// with a FATAL that says why; the proxy also cancels what
// the session runs on the server. For a device that is about to lose its WireGuard peer (suspended
// or deleted user, deleted device) it waits, at most sessionFlushWait, until those sessions have
// ended, so the client has read the FATAL before the tunnel goes.
func (m *Manager) endSessions(ctx context.Context) error {
	open := m.sessions.snapshot()
	if len(open) == 0 {
		return nil
	}
	rs, err := m.cfg.Catalog.Resources(ctx)
	if err != nil {
		return err
	}
	byName := map[string]resource.Resource{}
	for _, r := range rs {
		byName[r.Name] = r
	}
	// The node list only tells this node's record; without it the record this node last knew is
	// used (as admission does), so that a list that cannot be read (a node record that does not
	// decode) does not stop the revocations below.
	nodes, err := m.cfg.Catalog.Nodes(ctx)
	if err != nil {
		m.log.Warn("reconcile: node list unavailable; routing open sessions by this node's last known record", "err", err)
		nodes = nil
	}
	self, routed := m.self(nodes)
	type userAccess struct {
		user catalog.User
		acc  catalog.Access
	}
	access := map[netip.Addr]*userAccess{}
	var leaving []<-chan struct{}
	for _, s := range open {
		ua, ok := access[s.device]
		if !ok {
			u, err := m.cfg.Catalog.UserByDevice(ctx, s.device)
			switch {
			case err == nil:
				a, err := m.cfg.Catalog.AccessOf(ctx, u)
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
		case routed:
			served, reason, err := routing.Serves(r.ProxyClusterID, r.EgressFilter, self)
			if err != nil {
				reason = "its egress filter does not parse: " + err.Error()
			}
			if served {
				continue
			}
			why, outcome = fmt.Sprintf("terminating connection: resource %q is no longer served by node %q: %s", s.resource, self.Name, reason), audit.OutcomeRerouted
			hint = "Connect again: an up-to-date Ferry client connects through one of the resource's nodes."
		default:
			continue
		}
		if hint == "" {
			hint = "Ask a Ferry administrator if you need this access."
		}
		m.log.Info("ending session", "user", s.user, "resource", s.resource, "reason", why)
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
			m.log.Warn("ended sessions still closing; removing their WireGuard peers anyway", "sessions", len(leaving))
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
