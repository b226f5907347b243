package controlapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/health"
	"github.com/ferryhq/ferry/node/healthview"
	"github.com/ferryhq/ferry/resource"
)

// registerHealthRoutes adds the health endpoints of the control API (admin only). Health is kept
// per node and resource (node/healthview): each answer is the fleet's, with every candidate
// node's last result in api.Health.Nodes.
//
//	POST /v1/admin/datasources/{name}/healthcheck  this node checks the resource now if it is a
//	                                               candidate for it; the answer's own fields are
//	                                               that fresh result (else the fleet's summary),
//	                                               Nodes every candidate's latest
//	GET  /v1/admin/datasources/{name}/diagnostics  the fleet's summary, step by step, per node
//	GET  /v1/admin/health                          the summary of every resource (api.HealthList)
func (sv *Server) registerHealthRoutes(mux *router) {
	mux.HandleFunc("POST /v1/admin/datasources/{name}/healthcheck", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		res, err := sv.cat.ResourceByName(r.Context(), name)
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		own, err := sv.health.Check(r.Context(), name)
		candidate := err == nil
		switch {
		case errors.Is(err, health.ErrUnknownResource):
			writeError(w, http.StatusNotFound, err)
			return
		case errors.Is(err, health.ErrNotCandidate):
		case err != nil:
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		sums, err := healthview.Read(r.Context(), sv.cat, []resource.Resource{res}, time.Now())
		if err != nil {
			if !candidate {
				writeError(w, http.StatusInternalServerError, err)
				return
			}
			writeJSON(w, http.StatusOK, own) // the catalog went away after the check: this node's word alone
			return
		}
		out := sums[name]
		if candidate {
			nodes := out.Nodes
			for i := range nodes {
				if nodes[i].NodeID == own.NodeID {
					nodes[i] = own // fresh, even if storing it failed
				}
			}
			out = own
			out.Nodes = nodes
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("GET /v1/admin/datasources/{name}/diagnostics", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		res, err := sv.cat.ResourceByName(r.Context(), name)
		if err != nil {
			writeCatalogError(w, fmt.Errorf("diagnostics %s: %w", name, err))
			return
		}
		sums, err := healthview.Read(r.Context(), sv.cat, []resource.Resource{res}, time.Now())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, sums[name])
	}))
	mux.HandleFunc("GET /v1/admin/health", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		rs, err := sv.cat.Resources(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		sums, err := healthview.Read(r.Context(), sv.cat, rs, time.Now())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := api.HealthList{Health: []api.Health{}}
		for _, x := range rs {
			out.Health = append(out.Health, sums[x.Name])
		}
		sort.Slice(out.Health, func(i, j int) bool { return out.Health[i].Resource < out.Health[j].Resource })
		writeJSON(w, http.StatusOK, out)
	}))
}

// healthSummaries is the fleet's health of each resource in rs, by name, without steps, for
// resource lists. While the catalog cannot be read (the list then comes from the node's cache),
// each is this node's own last result.
func (sv *Server) healthSummaries(ctx context.Context, rs []resource.Resource) map[string]*api.Health {
	var sums map[string]api.Health
	err := sv.authz.Unreachable()
	if err == nil {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		sums, err = healthview.Read(rctx, sv.cat, rs, time.Now())
		cancel()
	}
	out := make(map[string]*api.Health, len(rs))
	for _, x := range rs {
		h, ok := sums[x.Name]
		if err != nil || !ok {
			h = sv.health.Last(x.Name)
		}
		h.Steps = nil
		for i := range h.Nodes {
			h.Nodes[i].Steps = nil
		}
		out[x.Name] = &h
	}
	return out
}

// fillRouteHealth fills api.RouteNode.Health (State) and CheckedAt (Time) of route, resource
// resourceID's, from each node's stored result, where no summary is at hand (one resource's admin
// show); the resource list uses healthview.RouteHealth on its summaries instead. A node that has
// not checked yet stays "". When the results cannot be read the route is left without health
// (logged): it still says which nodes carry the resource.
func (sv *Server) fillRouteHealth(ctx context.Context, resourceID string, route *api.Route) {
	if route == nil || len(route.Nodes) == 0 {
		return
	}
	byNode, err := healthview.ByNode(ctx, sv.cat, resourceID)
	if err != nil {
		sv.log.Warn("route health unavailable", "resource", resourceID, "err", err)
		return
	}
	for i, n := range route.Nodes {
		if h, ok := byNode[n.NodeID]; ok && h.Checked {
			route.Nodes[i].Health, route.Nodes[i].CheckedAt = h.State, h.Time
		}
	}
}
