package controlapi

import (
	"errors"
	"net/http"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
)

// registerClusterRoutes adds the proxy clusters to the control API:
//
//	GET    /v1/admin/clusters        admin: every cluster with its workers (api.ClusterList)
//	POST   /v1/admin/clusters        admin: add one (api.ClusterAdd; an empty ID gives a new one)
//	GET    /v1/admin/clusters/{id}   admin: one cluster by ID or name
//	DELETE /v1/admin/clusters/{id}   admin: delete one (409 while resources name it or it has workers)
func (sv *Server) registerClusterRoutes(mux *router) {
	mux.HandleFunc("GET /v1/admin/clusters", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		cs, err := sv.cat.Clusters(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := api.ClusterList{Clusters: []api.Cluster{}}
		for _, c := range cs {
			out.Clusters = append(out.Clusters, apiCluster(c))
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("GET /v1/admin/clusters/{id}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		c, err := sv.cat.Cluster(r.Context(), r.PathValue("id"))
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, apiCluster(c))
	}))
	mux.HandleFunc("POST /v1/admin/clusters", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		var in api.ClusterAdd
		if err := readJSON(r, &in); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		c, err := sv.cat.AddCluster(r.Context(), in.Name, in.ID)
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "cluster.add", c.Name, c.ID)
		writeJSON(w, http.StatusCreated, apiCluster(c))
	}))
	mux.HandleFunc("DELETE /v1/admin/clusters/{id}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		c, err := sv.cat.DeleteCluster(r.Context(), r.PathValue("id"))
		if errors.Is(err, catalog.ErrInUse) {
			writeError(w, http.StatusConflict, err)
			return
		}
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "cluster.delete", c.Name, c.ID)
		writeJSON(w, http.StatusOK, apiCluster(c))
	}))
}

func apiCluster(c catalog.Cluster) api.Cluster {
	w := c.Workers
	if w == nil {
		w = []string{}
	}
	return api.Cluster{ID: c.ID, Name: c.Name, CreatedAt: c.CreatedAt, Workers: w}
}
