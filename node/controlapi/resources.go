package controlapi

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/resource"
)

// registerCatalogRoutes adds resource CRUD and org settings to the control API.
func (sv *Server) registerCatalogRoutes(mux *router) {
	mux.HandleFunc("GET /v1/admin/datasources/{name}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		res, err := sv.cat.ResourceByName(r.Context(), r.PathValue("name"))
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		rt, err := sv.routes(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := api.Datasource{Resource: res}
		out.Route, out.Candidates = rt.of(res)
		sv.fillRouteHealth(r.Context(), res.ID, out.Route)
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("PUT /v1/admin/datasources/{name}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		var in resource.Input // a left-out tls_required is true
		if err := readJSON(r, &in); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		next := in.Get()
		// The stored hostname too must be on the list: a resource left over from before the list
		// changed is refused until its hostname is.
		if err := sv.checkHost(next.Hostname); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		before, after, err := sv.cat.UpdateResource(r.Context(), r.PathValue("name"), func(x *resource.Resource) {
			next.ID, next.Type = x.ID, x.Type
			if next.VNAddress == "" {
				next.VNAddress = x.VNAddress
			}
			if next.LoopbackAddress == "" {
				next.LoopbackAddress = x.LoopbackAddress
			}
			*x = next
		})
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.health.Kick() // check the changed resource now
		changes := resource.Diff(before, after)
		sv.changed(r, "datasource.update", before.Name, strings.Join(changes, "; "))
		writeJSON(w, http.StatusOK, api.DatasourceUpdate{Before: before, After: after, Changes: changes})
	}))
	mux.HandleFunc("DELETE /v1/admin/datasources/{name}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		if err := sv.cat.DeleteResource(r.Context(), r.PathValue("name")); err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "datasource.delete", r.PathValue("name"), "")
		writeJSON(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("GET /v1/admin/settings", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		s, err := sv.settings(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, s)
	}))
	mux.HandleFunc("PUT /v1/admin/settings", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		var s api.Settings
		if err := readJSON(r, &s); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		moved, err := sv.cat.UpdateSettings(r.Context(), catalog.Settings(s))
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		b, _ := json.Marshal(s)
		sv.changed(r, "settings.update", "org", string(b))
		out, err := sv.settings(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, api.SettingsUpdate{Settings: out, Moved: nonNil(moved)})
	}))
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
