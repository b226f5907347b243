// Package catcache is the node's read cache of what it needs to authorise: the catalog's devices,
// users (admin, suspended), roles' grants, resources and nodes (which node carries which resource,
// node/routing), kept as a snapshot that is re-read every
// Interval while the catalog answers. Reads go to the catalog; when the catalog database cannot be
// reached (store.IsUnavailable), they are answered from the last good snapshot instead, so that open
// sessions continue and known devices keep connecting to the resources they were granted, until
// the catalog answers again. While the catalog is known to be unreachable reads do not wait for it:
// Run probes it every Interval and, once a snapshot can be read again, reads go back to the catalog
// (and with them the revocations made meanwhile). A read the snapshot cannot answer fails with an
// *UnreachableError, never with catalog.ErrNotFound: a device missing from an old snapshot is not
// a deleted one.
package catcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/resource"
)

// Interval is how often the snapshot is re-read while the catalog answers, and how often the
// catalog is probed while it does not. It bounds how old the snapshot is when an outage begins.
const Interval = time.Second

// UnreachableError says the catalog database could not be reached and the cache could not answer
// in its place. It unwraps to the catalog's error, so store.IsUnavailable holds for it.
type UnreachableError struct {
	Since time.Time // when the catalog stopped answering
	Err   error     // the catalog's last error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("the catalog is unreachable (since %s, %s): %v",
		e.Since.UTC().Format(time.RFC3339), time.Since(e.Since).Round(time.Second), e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Status is the cache's view of the catalog, for health reports.
type Status struct {
	Reachable bool
	// DownSince is when the catalog stopped answering (zero while it answers).
	DownSince time.Time
	// Err is the catalog's last error while it does not answer.
	Err error
	// SnapshotAt is when the last good snapshot was read (zero before the first).
	SnapshotAt time.Time
}

// snapshot is the catalog as read at one time.
type snapshot struct {
	at        time.Time
	resources []resource.Resource
	byVN      map[netip.AddrPort]resource.Resource
	owners    map[netip.Addr]catalog.User // device tunnel address → its user
	access    map[string]catalog.Access   // user name → access
	nodes     []catalog.Node              // the deployment's nodes, this one included once registered
}

// Cache answers the node's authorisation reads from the catalog, or from its last good snapshot
// while the catalog cannot be reached.
type Cache struct {
	cat   *catalog.Catalog
	log   *slog.Logger
	now   func() time.Time
	kickc chan struct{}

	mu        sync.Mutex
	snap      *snapshot
	downSince time.Time // zero while the catalog answers
	lastErr   error
}

// New returns a Cache over cat; call Refresh (at the node's start) and Run.
func New(cat *catalog.Catalog, log *slog.Logger) *Cache {
	if log == nil {
		log = slog.Default()
	}
	return &Cache{cat: cat, log: log, now: time.Now, kickc: make(chan struct{}, 1)}
}

// Kick asks Run to read a new snapshot now (after a change of the catalog).
func (c *Cache) Kick() {
	select {
	case c.kickc <- struct{}{}:
	default:
	}
}

// Refresh reads a new snapshot. A failure to reach the catalog marks it unreachable (reads are then
// answered from the snapshot); a successful read marks it reachable again.
func (c *Cache) Refresh(ctx context.Context) error {
	s, err := c.read(ctx)
	if err != nil {
		c.failed(err)
		return err
	}
	c.mu.Lock()
	c.snap = s
	was := c.downSince
	c.downSince, c.lastErr = time.Time{}, nil
	c.mu.Unlock()
	if !was.IsZero() {
		c.log.Info("the catalog is reachable again", "unreachable_for", s.at.Sub(was).Round(time.Second).String())
	}
	return nil
}

// Run refreshes the snapshot (or probes an unreachable catalog) every Interval, and after each
// Kick, until ctx ends.
func (c *Cache) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = Interval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.kickc:
		}
		rctx, cancel := context.WithTimeout(ctx, max(interval*5, 5*time.Second))
		err := c.Refresh(rctx)
		cancel()
		if err != nil && ctx.Err() == nil && !IsUnreachable(err) {
			c.log.Error("read the catalog's snapshot", "err", err)
		}
	}
}

// read reads the catalog's authorisation state.
func (c *Cache) read(ctx context.Context) (*snapshot, error) {
	rs, err := c.cat.Resources(ctx)
	if err != nil {
		return nil, err
	}
	devs, err := c.cat.Devices(ctx)
	if err != nil {
		return nil, err
	}
	users, err := c.cat.Users(ctx)
	if err != nil {
		return nil, err
	}
	roles, err := c.cat.Roles(ctx)
	if err != nil {
		return nil, err
	}
	// The node list only routes (which node carries which resource). A list that cannot be read
	// while the rest of the catalog answers (a node record that does not decode) keeps the previous
	// snapshot's, so that it does not keep the grants and revocations above out of the snapshot.
	nodes, err := c.cat.Nodes(ctx)
	if err != nil {
		if IsUnreachable(err) {
			return nil, err
		}
		c.log.Error("read the catalog's node list; the snapshot keeps the previous one", "err", err)
		c.mu.Lock()
		if c.snap != nil {
			nodes = c.snap.nodes
		}
		c.mu.Unlock()
	}
	s := &snapshot{at: c.now(), resources: rs, nodes: nodes, byVN: map[netip.AddrPort]resource.Resource{},
		owners: map[netip.Addr]catalog.User{}, access: map[string]catalog.Access{}}
	for _, r := range rs {
		if ap, err := netip.ParseAddrPort(r.VNAddress); err == nil {
			s.byVN[ap] = r
		}
	}
	grants := map[string][]catalog.Grant{}
	for _, r := range roles {
		for _, u := range r.Users {
			grants[u] = append(grants[u], r.Grants...)
		}
	}
	byName := map[string]catalog.User{}
	for _, u := range users {
		byName[u.Name] = u.User
		s.access[u.Name] = catalog.NewAccess(u.User, grants[u.Name])
	}
	for _, d := range devs {
		u, ok := byName[d.User]
		if !ok {
			continue // the user was deleted between the two reads: the device goes with it
		}
		s.owners[d.Address] = u
	}
	return s, nil
}

// failed notes a catalog error: one that says the catalog cannot be reached marks it unreachable.
func (c *Cache) failed(err error) {
	if !IsUnreachable(err) {
		return
	}
	c.mu.Lock()
	first := c.downSince.IsZero()
	if first {
		c.downSince = c.now()
	}
	c.lastErr = err
	c.mu.Unlock()
	if first {
		c.log.Warn("the catalog is unreachable; authorising from the last snapshot until it is back", "err", err)
	}
}

// fallback returns the snapshot to answer from when the catalog is unreachable, or ok false while
// it answers.
func (c *Cache) fallback() (s *snapshot, down *UnreachableError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.downSince.IsZero() {
		return nil, nil
	}
	return c.snap, &UnreachableError{Since: c.downSince, Err: c.lastErr}
}

// Status reports whether the catalog answers, since when it does not, and the snapshot's age.
func (c *Cache) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Status{Reachable: c.downSince.IsZero(), DownSince: c.downSince, Err: c.lastErr}
	if c.snap != nil {
		st.SnapshotAt = c.snap.at
	}
	return st
}

// Unreachable returns an *UnreachableError while the catalog is known to be unreachable, else nil.
func (c *Cache) Unreachable() error {
	if _, down := c.fallback(); down != nil {
		return down
	}
	return nil
}

// answer runs read against the catalog unless it is known to be unreachable; when it is (or read
// finds it so), it returns the snapshot to answer from. A snapshot that is nil means: no answer
// (return down).
func answer[T any](c *Cache, read func() (T, error)) (v T, s *snapshot, down *UnreachableError, err error) {
	if s, down = c.fallback(); down == nil {
		v, err = read()
		if err == nil || !IsUnreachable(err) {
			return v, nil, nil, err
		}
		c.failed(err)
		if s, down = c.fallback(); down == nil {
			return v, nil, nil, err
		}
	}
	return v, s, down, nil
}

// ResourceByVNAddress is catalog.Catalog's, or the snapshot's while the catalog is unreachable.
func (c *Cache) ResourceByVNAddress(ctx context.Context, ap netip.AddrPort) (resource.Resource, error) {
	r, s, down, err := answer(c, func() (resource.Resource, error) { return c.cat.ResourceByVNAddress(ctx, ap) })
	if down == nil {
		return r, err
	}
	if s != nil {
		if r, ok := s.byVN[ap]; ok {
			return r, nil
		}
	}
	return resource.Resource{}, fmt.Errorf("look up resource at %s: %w", ap, down)
}

// UserByDevice is catalog.Catalog's, or the snapshot's while the catalog is unreachable.
func (c *Cache) UserByDevice(ctx context.Context, addr netip.Addr) (catalog.User, error) {
	u, s, down, err := answer(c, func() (catalog.User, error) { return c.cat.UserByDevice(ctx, addr) })
	if down == nil {
		return u, err
	}
	if s != nil {
		if u, ok := s.owners[addr]; ok {
			return u, nil
		}
	}
	return catalog.User{}, fmt.Errorf("look up device %s: %w", addr, down)
}

// AccessOf is catalog.Catalog's, or the snapshot's while the catalog is unreachable.
func (c *Cache) AccessOf(ctx context.Context, u catalog.User) (catalog.Access, error) {
	a, s, down, err := answer(c, func() (catalog.Access, error) { return c.cat.AccessOf(ctx, u) })
	if down == nil {
		return a, err
	}
	if s != nil {
		if a, ok := s.access[u.Name]; ok {
			return a, nil
		}
	}
	return catalog.Access{}, fmt.Errorf("read the access of %s: %w", u.Name, down)
}

// Resources is catalog.Catalog's, or the snapshot's while the catalog is unreachable.
func (c *Cache) Resources(ctx context.Context) ([]resource.Resource, error) {
	rs, s, down, err := answer(c, func() ([]resource.Resource, error) { return c.cat.Resources(ctx) })
	if down == nil {
		return rs, err
	}
	if s != nil {
		return s.resources, nil
	}
	return nil, fmt.Errorf("list resources: %w", down)
}

// NodesAsOf is catalog.Catalog's Nodes and the time to judge their heartbeats at (whether each is
// online, catalog.Node.Online): now when the catalog answers; while it is unreachable, the
// snapshot's nodes as of the snapshot's time, since no heartbeat can be read meanwhile (a node
// online then is taken to run still, one offline then to be down still).
func (c *Cache) NodesAsOf(ctx context.Context) ([]catalog.Node, time.Time, error) {
	ns, s, down, err := answer(c, func() ([]catalog.Node, error) { return c.cat.Nodes(ctx) })
	if down == nil {
		return ns, c.now(), err
	}
	if s != nil {
		return s.nodes, s.at, nil
	}
	return nil, time.Time{}, fmt.Errorf("list nodes: %w", down)
}

// IsUnreachable reports whether err says the catalog could not be reached: an *UnreachableError,
// an error store.IsUnavailable knows, or a connection that broke in the middle of a statement
// (unexpected EOF, a closed connection), which pgx reports without a network error.
func IsUnreachable(err error) bool {
	if err == nil {
		return false
	}
	var ue *UnreachableError
	return errors.As(err, &ue) || store.IsUnavailable(err) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || strings.HasSuffix(err.Error(), "conn closed")
}
