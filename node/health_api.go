package node

import (
	"errors"
	"net/http"
	"sort"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/health"
)

// registerHealthRoutes adds the health endpoints of the control API (admin only):
//
//	POST /v1/admin/datasources/{name}/healthcheck  run the check now, answer its api.Health
//	GET  /v1/admin/datasources/{name}/diagnostics  the last api.Health, step by step
//	GET  /v1/admin/health                          the last api.Health of every resource (api.HealthList)
func (n *Node) registerHealthRoutes(mux *router) {
	mux.HandleFunc("POST /v1/admin/datasources/{name}/healthcheck", n.admin(func(w http.ResponseWriter, r *http.Request) {
		h, err := n.health.Check(r.Context(), r.PathValue("name"))
		switch {
		case errors.Is(err, health.ErrUnknownResource):
			writeError(w, http.StatusNotFound, err)
		case err != nil:
			writeError(w, http.StatusInternalServerError, err)
		default:
			writeJSON(w, http.StatusOK, h)
		}
	}))
	mux.HandleFunc("GET /v1/admin/datasources/{name}/diagnostics", n.admin(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !n.resourceExists(r, name) {
			writeError(w, http.StatusNotFound, errors.New("diagnostics "+name+": "+health.ErrUnknownResource.Error()))
			return
		}
		writeJSON(w, http.StatusOK, n.health.Last(name))
	}))
	mux.HandleFunc("GET /v1/admin/health", n.admin(func(w http.ResponseWriter, r *http.Request) {
		rs, err := n.cat.Resources(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := api.HealthList{Health: []api.Health{}}
		for _, x := range rs {
			out.Health = append(out.Health, n.health.Last(x.Name))
		}
		sort.Slice(out.Health, func(i, j int) bool { return out.Health[i].Resource < out.Health[j].Resource })
		writeJSON(w, http.StatusOK, out)
	}))
}

func (n *Node) resourceExists(r *http.Request, name string) bool {
	rs, err := n.cat.Resources(r.Context())
	if err != nil {
		return false
	}
	for _, x := range rs {
		if x.Name == name {
			return true
		}
	}
	return false
}

// healthSummary is a resource's last health result without its steps, for resource lists.
func (n *Node) healthSummary(name string) *api.Health {
	h := n.health.Last(name)
	h.Steps = nil
	return &h
}
