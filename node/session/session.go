// Package session is the node's admission and revocation: it decides each new tunnelled flow
// (device → user → resource → grant → route: is this node one of the resource's candidate nodes,
// route.go), keeps the registry of open proxied sessions, and reconciles both the sessions and the
// tunnel's WireGuard peers with the catalog, so that a grant revoked, a user suspended or deleted,
// a device or resource deleted, or a route that no longer includes this node ends what it allowed. It depends only on
// the catalog's read methods it needs (Catalog), the tunnel's peers (Peers) and how a session is
// served (Config.Serve); reconcile runs periodically and whenever Kick asks (after a change).
package session

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ferryhq/ferry/netstack"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/pgproxy"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// Catalog is what admission and revocation read from the catalog (and Enroll writes).
type Catalog interface {
	ResourceByVNAddress(ctx context.Context, ap netip.AddrPort) (resource.Resource, error)
	UserByDevice(ctx context.Context, addr netip.Addr) (catalog.User, error)
	AccessOf(ctx context.Context, u catalog.User) (catalog.Access, error)
	Resources(ctx context.Context) ([]resource.Resource, error)
	Nodes(ctx context.Context) ([]catalog.Node, error)
	ActiveDevices(ctx context.Context) ([]catalog.Device, error)
	Enroll(ctx context.Context, secret, publicKey, deviceName string, apply func(catalog.Device) error) (catalog.Device, catalog.User, error)
}

// Lookup is what admission reads for each new flow: the catalog itself, or a read cache of it
// (node/catcache) that answers from its last snapshot while the catalog database is unreachable.
type Lookup interface {
	ResourceByVNAddress(ctx context.Context, ap netip.AddrPort) (resource.Resource, error)
	UserByDevice(ctx context.Context, addr netip.Addr) (catalog.User, error)
	AccessOf(ctx context.Context, u catalog.User) (catalog.Access, error)
	// NodesAsOf is the deployment's nodes and the time to judge whether each is online at
	// (catalog.Node.Online): now, or a snapshot's time while the catalog is unreachable.
	NodesAsOf(ctx context.Context) ([]catalog.Node, time.Time, error)
}

// catalogLookup is the catalog itself as a Lookup (no cache).
type catalogLookup struct{ Catalog }

func (c catalogLookup) NodesAsOf(ctx context.Context) ([]catalog.Node, time.Time, error) {
	ns, err := c.Nodes(ctx)
	return ns, time.Now(), err
}

// Peers is the tunnel's set of WireGuard peers (*tunnel.Tunnel is one).
type Peers interface {
	Peers() ([]tunnel.PeerStatus, error)
	AddPeer(p tunnel.Peer) error
	RemovePeer(key tunnel.Key) error
}

// ReconcileInterval is how often the node re-checks WireGuard peers and open sessions against the
// catalog, besides right after each Kick. Revocations take effect within it.
const ReconcileInterval = time.Second

// Config configures a Manager.
type Config struct {
	// Catalog is read by reconcile, AddPeers and Enroll: always the catalog itself, never a cache,
	// so that reconcile acts only on what the catalog says now. When a read fails (the catalog is
	// unreachable) reconcile ends no session and removes no WireGuard peer.
	Catalog Catalog
	// Lookup is what admission reads; nil = Catalog.
	Lookup Lookup
	// NodeID is this node's ID: admission and reconcile find its record (its proxy cluster and
	// tags) in the node list, and admit only the resources it is a candidate for (route.go). ""
	// leaves routing unchecked (a Manager without a node, in tests).
	NodeID string
	// Self is this node's own record as the node last knew it (its config before it registered,
	// then what the catalog stored), used when the node list does not have it: the catalog's record
	// deleted and not yet registered again, or the node list unreadable. nil = none.
	Self  func() catalog.Node
	Peers Peers
	// Target describes how the proxy reaches and logs in to a resource (node/upstream).
	Target func(r resource.Resource) pgproxy.Target
	// Serve serves one admitted session until it ends; ctx ends it (its cause is a *pgproxy.Refusal
	// when the session was revoked).
	Serve  func(ctx context.Context, c net.Conn, t pgproxy.Target, s pgproxy.Session)
	Logger *slog.Logger // nil = slog.Default()
	// Interval is the periodic reconcile's; 0 = ReconcileInterval.
	Interval time.Duration
}

// Manager admits sessions, keeps them, and ends those the catalog no longer allows.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	ctx   context.Context // sessions run under it
	kickc chan struct{}

	sessions registry

	// peerMu orders changes of WireGuard peers: the reconcile loop's peer step and enrollment (which
	// adds a peer inside its catalog transaction), so that reconcile never removes a peer whose
	// device is about to be committed.
	peerMu sync.Mutex
	// badPeers are the devices' keys the tunnel refused, logged once each (under peerMu).
	badPeers map[string]bool
}

// New returns a Manager whose sessions run under ctx (they end when it does).
func New(ctx context.Context, cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Interval == 0 {
		cfg.Interval = ReconcileInterval
	}
	if cfg.Lookup == nil {
		cfg.Lookup = catalogLookup{cfg.Catalog}
	}
	return &Manager{cfg: cfg, log: cfg.Logger, ctx: ctx, kickc: make(chan struct{}, 1), badPeers: map[string]bool{}}
}

// session is one proxied connection, kept so that revocations can end it.
type session struct {
	user     string
	device   netip.Addr
	resource string
	end      context.CancelCauseFunc
	done     <-chan struct{} // closed when the session has ended (its FATAL written, its records kept)
}

// registry is the set of open proxied connections.
type registry struct {
	mu   sync.Mutex
	next int64
	open map[int64]*session
}

func (ss *registry) add(s *session) (remove func()) {
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

func (ss *registry) snapshot() []*session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]*session, 0, len(ss.open))
	for _, s := range ss.open {
		out = append(out, s)
	}
	return out
}

// Admit decides each new tunnelled TCP flow (a netstack forwarder): a flow to a resource's virtual
// networking address from an enrolled device goes to the PostgreSQL proxy, which refuses it with
// FATAL 28000 when the user is not granted the resource, and, for a granted user, with FATAL 28000
// when this node is not one of the resource's candidate nodes while another is, or FATAL 08001 when
// no online node is (route.go); anything else is answered with RST. ctx only bounds the decision;
// the session runs under the Manager's context.
func (m *Manager) Admit(ctx context.Context, f netstack.Flow) (func(net.Conn), error) {
	r, err := m.cfg.Lookup.ResourceByVNAddress(ctx, f.Local)
	if err != nil {
		return nil, err
	}
	u, err := m.cfg.Lookup.UserByDevice(ctx, f.Remote.Addr())
	if err != nil {
		return nil, err
	}
	acc, err := m.cfg.Lookup.AccessOf(ctx, u)
	if err != nil {
		return nil, err
	}
	t := m.cfg.Target(r)
	s := pgproxy.Session{User: u.Name, ClientAddr: f.Remote.String()}
	if !acc.Allows(r) {
		s.Denied = &pgproxy.Refusal{Code: "28000",
			Message: fmt.Sprintf("ferry: user %q is not granted access to resource %q", u.Name, r.Name),
			Hint:    "Ask a Ferry administrator to grant one of your roles this resource."}
		if u.Suspended {
			s.Denied.Message = fmt.Sprintf("ferry: user %q is suspended", u.Name)
			s.Denied.Hint = "Ask a Ferry administrator."
		}
		m.log.Warn("access denied", "user", u.Name, "resource", r.Name, "client", f.Remote.String())
	} else if s.Denied = m.routeRefusal(ctx, r); s.Denied != nil {
		m.log.Warn("resource not carried by this node; connection refused", "user", u.Name, "resource", r.Name,
			"client", f.Remote.String(), "sqlstate", s.Denied.Code, "reason", s.Denied.Message)
	}
	return func(c net.Conn) {
		sctx, end := context.WithCancelCause(m.ctx)
		defer end(nil)
		done := make(chan struct{})
		remove := m.sessions.add(&session{user: u.Name, device: f.Remote.Addr(), resource: r.Name, end: end, done: done})
		defer remove()
		defer close(done)
		m.cfg.Serve(sctx, c, t, s)
	}, nil
}
