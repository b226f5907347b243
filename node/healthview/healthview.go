// Package healthview is the fleet's account of resource health: every node stores its last check
// of each resource it is a candidate for in the catalog (catalog.PutHealth), and any node reads
// them back here and summarises them per resource (which node said what), so that healthcheck,
// diagnostics, the resource lists and doctor answer for the whole fleet.
//
// What is shown for a resource: the results of its candidate nodes (node/routing: its proxy
// cluster's workers, or the gateways, matching its egress filter), in the node list's order (by
// name). A result of a candidate that is offline is kept and marked Stale (its last word); a
// result of a node that is no longer a candidate (its tags, the resource's filter or cluster
// changed) is hidden, and that node deletes it at its next round. An online candidate without a
// result yet shows "not checked yet". A resource without an online candidate shows the reason
// ("no node can reach it: …") instead of a result.
package healthview

import (
	"context"
	"fmt"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/routing"
	"github.com/ferryhq/ferry/resource"
)

// Summarize is resource name's health as the fleet sees it: choice is its candidates
// (routing.Candidates), results each node's last result by node ID. Nodes lists the candidates'
// results (see the package comment); the summary's own fields are those of the first healthy
// online candidate, else of the online candidate checked last, else "not checked yet"; with no
// online candidate, the summary is unhealthy with Reason (and Error) choice.Reason.
func Summarize(name string, choice routing.Choice, results map[string]api.Health) api.Health {
	var nodes []api.Health
	for _, c := range choice.Candidates {
		h, ok := results[c.ID]
		if !ok {
			if !c.Online {
				continue // nothing to say: it never checked, and it does not run
			}
			h = NotChecked(name)
		}
		h.Resource, h.NodeID, h.NodeName, h.Stale = name, c.ID, c.Name, !c.Online
		h.Nodes, h.Reason = nil, ""
		nodes = append(nodes, h)
	}
	var top api.Health
	switch {
	case len(choice.Online) == 0:
		reason := choice.Reason
		if reason == "" {
			reason = "no node can reach it"
		}
		top = api.Health{Resource: name, State: api.HealthUnhealthy, Error: reason, Reason: reason}
	default:
		top = NotChecked(name)
		best := -1
		for i, h := range nodes {
			if h.Stale || !h.Checked {
				continue
			}
			if h.State == api.HealthHealthy {
				best = i
				break
			}
			if best < 0 || h.Time.After(nodes[best].Time) {
				best = i
			}
		}
		if best >= 0 {
			top = nodes[best]
		}
	}
	top.Nodes = nodes
	return top
}

// NotChecked is the result of a resource no check has finished for yet.
func NotChecked(name string) api.Health {
	return api.Health{Resource: name, State: api.HealthUnhealthy, Error: "not checked yet"}
}

// Read summarises the health of every resource in rs (Summarize) from the nodes and results in
// cat, by resource name.
func Read(ctx context.Context, cat *catalog.Catalog, rs []resource.Resource, now time.Time) (map[string]api.Health, error) {
	ns, err := cat.Nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("read fleet health: %w", err)
	}
	resourceID := ""
	if len(rs) == 1 {
		resourceID = rs[0].ID
	}
	stored, err := cat.HealthResults(ctx, resourceID)
	if err != nil {
		return nil, fmt.Errorf("read fleet health: %w", err)
	}
	byResource := map[string]map[string]api.Health{}
	for _, x := range stored {
		if byResource[x.ResourceID] == nil {
			byResource[x.ResourceID] = map[string]api.Health{}
		}
		byResource[x.ResourceID][x.NodeID] = x.Health
	}
	nodes := catalog.RoutingNodes(ns, now)
	out := make(map[string]api.Health, len(rs))
	for _, r := range rs {
		choice, err := routing.Candidates(r.ProxyClusterID, r.EgressFilter, nodes)
		if err != nil {
			reason := fmt.Sprintf("no node can reach it: its egress filter %q does not parse: %v", r.EgressFilter, err)
			choice = routing.Choice{Reason: reason}
		}
		out[r.Name] = Summarize(r.Name, choice, byResource[r.ID])
	}
	return out, nil
}

// ByNode is resource r's stored results as the API's Route needs them: each node's last result by
// node ID (every node that has one, candidate or not: the caller picks its candidates). It is
// what fills api.RouteNode.Health and CheckedAt.
func ByNode(ctx context.Context, cat *catalog.Catalog, resourceID string) (map[string]api.Health, error) {
	stored, err := cat.HealthResults(ctx, resourceID)
	if err != nil {
		return nil, err
	}
	out := make(map[string]api.Health, len(stored))
	for _, x := range stored {
		out[x.NodeID] = x.Health
	}
	return out, nil
}

// RouteHealth is node nodeID's word in summary sum (Summarize) as api.RouteNode carries it: its
// state ("healthy" or "unhealthy") and when it checked, or "" and the zero time when it has not
// checked yet (or is no candidate). With sum from the resource list's summaries, filling a Route
// costs no further catalog read.
func RouteHealth(sum *api.Health, nodeID string) (state string, checkedAt time.Time) {
	if sum == nil {
		return "", time.Time{}
	}
	for _, n := range sum.Nodes {
		if n.NodeID == nodeID && n.Checked {
			return n.State, n.Time
		}
	}
	return "", time.Time{}
}
