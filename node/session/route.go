package session

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/pgproxy"
	"github.com/ferryhq/ferry/node/routing"
	"github.com/ferryhq/ferry/resource"
)

// Routing (issue 16): a resource is carried only by its candidate nodes (node/routing: its proxy
// cluster's workers, or the gateways, narrowed by its egress filter). The client picks one of them,
// but the node does not trust it to: admission refuses a session for a resource this node is not a
// candidate for, and reconcile ends one whose resource stopped being carried by this node (its
// egress filter or proxy cluster changed, or this node's tags did), as a revocation would.
//
// What is known where:
//   - This node's own record (proxy cluster, tags) is read with the node list: from the catalog, or
//     from the read cache's snapshot while the catalog is unreachable (node/catcache). When the
//     list does not have it (the record deleted and not yet registered again, or the list
//     unreadable), the record the node last knew is used (Config.Self): its own cluster and tags are
//     known locally, so admission never needs the catalog to refuse what this node may not carry.
//   - The other nodes only tell a refusal's kind: 28000 (another node carries it) or 08001 (no
//     online node does). While the catalog is unreachable their online state is judged as of the
//     snapshot's time. When the node list cannot be read at all, a resource this node does not
//     carry is refused with 28000 (fail closed: the refusal does not depend on the list).

// self returns this node from nodes (its catalog record), else the record it last knew
// (Config.Self); always online, since it runs. ok is false when the Manager has no NodeID: routing
// is then not checked.
func (m *Manager) self(nodes []catalog.Node) (routing.Node, bool) {
	if m.cfg.NodeID == "" {
		return routing.Node{}, false
	}
	for _, n := range nodes {
		if n.ID == m.cfg.NodeID {
			s := n.Routing(time.Now())
			s.Online = true
			return s, true
		}
	}
	s := routing.Node{ID: m.cfg.NodeID, Name: m.cfg.NodeID, Online: true}
	if m.cfg.Self != nil {
		rec := m.cfg.Self()
		s = rec.Routing(time.Now())
		s.ID, s.Online = m.cfg.NodeID, true
		if s.Name == "" {
			s.Name = m.cfg.NodeID
		}
	}
	return s, true
}

// routeRefusal returns why this node refuses a session to r, or nil when it is one of r's
// candidate nodes: FATAL 28000 when another online node is a candidate (a modified client, or one
// that has not seen the change yet), FATAL 08001 when no online node is, and 08001 when r's stored
// egress filter does not parse (no node can carry it).
func (m *Manager) routeRefusal(ctx context.Context, r resource.Resource) *pgproxy.Refusal {
	nodes, asOf, listErr := m.cfg.Lookup.NodesAsOf(ctx)
	if listErr != nil {
		nodes = nil
	}
	self, ok := m.self(nodes)
	if !ok {
		return nil
	}
	served, why, err := routing.Serves(r.ProxyClusterID, r.EgressFilter, self)
	if err != nil {
		return badFilter(r, err)
	}
	if served {
		return nil
	}
	notServed := &pgproxy.Refusal{Code: "28000", Outcome: audit.OutcomeDenied,
		Message: fmt.Sprintf("ferry: resource %q is not served by node %q: %s", r.Name, self.Name, why),
		Hint:    "An up-to-date Ferry client connects through one of the resource's nodes by itself; ask a Ferry administrator if it does not."}
	if listErr != nil {
		m.log.Warn("node list unavailable; refusing a resource this node does not carry without naming its nodes", "resource", r.Name, "err", listErr)
		return notServed
	}
	rn := make([]routing.Node, 0, len(nodes))
	for _, n := range nodes {
		x := n.Routing(asOf)
		if n.ID == self.ID {
			x = self
		}
		rn = append(rn, x)
	}
	choice, err := routing.Candidates(r.ProxyClusterID, r.EgressFilter, rn)
	if err != nil {
		return badFilter(r, err)
	}
	if len(choice.Online) == 0 {
		return &pgproxy.Refusal{Code: "08001", Outcome: audit.OutcomeFailed,
			Message: fmt.Sprintf("ferry: resource %q cannot be reached: %s", r.Name, choice.Reason),
			Hint:    "Ask a Ferry administrator: the resource's egress filter or proxy cluster names no running node (`ferry admin datasources show " + r.Name + "`)."}
	}
	var names []string
	for _, n := range choice.Online {
		names = append(names, n.Name)
	}
	notServed.Hint = fmt.Sprintf("Connect through one of its nodes (%s); an up-to-date Ferry client does so by itself.", strings.Join(names, ", "))
	return notServed
}

// badFilter is the refusal of a resource whose stored egress filter does not parse (stored by a
// release that did not parse filters): no node carries it until an administrator fixes it.
func badFilter(r resource.Resource, err error) *pgproxy.Refusal {
	return &pgproxy.Refusal{Code: "08001", Outcome: audit.OutcomeFailed,
		Message: fmt.Sprintf("ferry: resource %q cannot be reached: no node can reach it: its egress filter does not parse: %v", r.Name, err),
		Hint:    "A Ferry administrator can fix it with `ferry admin datasources update " + r.Name + " --egress-filter ...`."}
}
