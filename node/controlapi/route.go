package controlapi

import (
	"context"
	"fmt"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/routing"
	"github.com/ferryhq/ferry/resource"
)

// routes routes resources to nodes: the deployment's nodes as node/routing takes them, read once per
// answer, with each node's name.
type routes struct {
	nodes []routing.Node
}

// routes reads the catalog's nodes, online as the nodes API derives it (catalog.Node.Online).
func (sv *Server) routes(ctx context.Context) (routes, error) {
	ns, err := sv.cat.Nodes(ctx)
	if err != nil {
		return routes{}, fmt.Errorf("route resources: %w", err)
	}
	return routes{nodes: catalog.RoutingNodes(ns, time.Now())}, nil
}

// of is r's route (its online candidate nodes, routing.Candidates, or why there is none) and every
// candidate, online or not. A stored egress filter that does not parse routes nowhere, and says so.
func (rt routes) of(r resource.Resource) (*api.Route, []api.CandidateNode) {
	c, err := routing.Candidates(r.ProxyClusterID, r.EgressFilter, rt.nodes)
	if err != nil {
		return &api.Route{Nodes: []api.RouteNode{}, Reason: fmt.Sprintf("no node can reach it: its egress filter %q does not parse (%v); fix it with `ferry admin datasources update %s --egress-filter ...`", r.EgressFilter, err, r.Name)}, nil
	}
	out := &api.Route{Nodes: []api.RouteNode{}, Reason: c.Reason}
	for _, n := range c.Online {
		out.Nodes = append(out.Nodes, api.RouteNode{NodeID: n.ID})
	}
	all := []api.CandidateNode{}
	for _, n := range c.Candidates {
		state := api.NodeOffline
		if n.Online {
			state = api.NodeOnline
		}
		all = append(all, api.CandidateNode{NodeID: n.ID, Name: n.Name, State: state})
	}
	return out, all
}
