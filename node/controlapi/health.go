package controlapi

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
func (sv *Server) registerHealthRoutes(mux *router) {
	mux.HandleFunc("POST /v1/admin/datasources/{name}/healthcheck", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		h, err := sv.health.Check(r.Context(), r.PathValue("name"))
		switch {
		case errors.Is(err, health.ErrUnknownResource):
			writeError(w, http.StatusNotFound, err)
		case err != nil:
			writeError(w, http.StatusInternalServerError, err)
		default:
			writeJSON(w, http.StatusOK, h)
		}
	}))
	mux.HandleFunc("GET /v1/admin/datasources/{name}/diagnostics", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !sv.resourceExists(r, name) {
			writeError(w, http.StatusNotFound, errors.New("diagnostics "+name+": "+health.ErrUnknownResource.Error()))
			return
		}
		writeJSON(w, http.StatusOK, sv.health.Last(name))
	}))
	mux.HandleFunc("GET /v1/admin/health", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		rs, err := sv.cat.Resources(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := api.HealthList{Health: []api.Health{}}
		for _, x := range rs {
			out.Health = append(out.Health, sv.health.Last(x.Name))
		}
		sort.Slice(out.Health, func(i, j int) bool { return out.Health[i].Resource < out.Health[j].Resource })
		writeJSON(w, http.StatusOK, out)
	}))
}

func (sv *Server) resourceExists(r *http.Request, name string) bool {
	rs, err := sv.cat.Resources(r.Context())
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
func (sv *Server) healthSummary(name string) *api.Health {
	h := sv.health.Last(name)
	h.Steps = nil
	return &h
}
