package controlapi

import (
	"errors"
	"net/http"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
)

// registerNodeRoutes adds the deployment's nodes to the control API:
//
//	GET    /v1/nodes                    every enrolled device: the nodes a client may use (api.GatewayNodeList)
//	GET    /v1/admin/nodes              admin: every node with its details (api.NodeList)
//	GET    /v1/admin/nodes/{id}         admin: one node by ID or name
//	PUT    /v1/admin/nodes/{id}/tags    admin: replace its tags (api.NodeTags)
//	DELETE /v1/admin/nodes/{id}         admin: delete a stopped node's record (409 while it runs)
func (sv *Server) registerNodeRoutes(mux *router) {
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		ns, err := sv.cat.Nodes(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		now := time.Now()
		out := api.GatewayNodeList{Nodes: []api.GatewayNode{}}
		for _, x := range ns {
			out.Nodes = append(out.Nodes, api.GatewayNode{ID: x.ID, Name: x.Name, WireGuardEndpoint: x.WireGuardEndpoint,
				WireGuardPublicKey: x.WireGuardPublicKey, Tags: x.Tags, State: x.State(now)})
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/admin/nodes", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		ns, err := sv.cat.Nodes(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		now := time.Now()
		out := api.NodeList{Nodes: []api.Node{}}
		for _, x := range ns {
			out.Nodes = append(out.Nodes, apiNode(x, now))
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("GET /v1/admin/nodes/{id}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		x, err := sv.cat.Node(r.Context(), r.PathValue("id"))
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, apiNode(x, time.Now()))
	}))
	mux.HandleFunc("PUT /v1/admin/nodes/{id}/tags", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		var in api.NodeTags
		if err := readJSON(r, &in); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		x, err := sv.cat.UpdateNodeTags(r.Context(), r.PathValue("id"), in.Tags)
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "node.update", x.Name, x.ID+" tags="+api.FormatNodeTags(x.Tags))
		writeJSON(w, http.StatusOK, apiNode(x, time.Now()))
	}))
	mux.HandleFunc("DELETE /v1/admin/nodes/{id}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		x, err := sv.cat.DeleteNode(r.Context(), r.PathValue("id"))
		if errors.Is(err, catalog.ErrNodeOnline) {
			writeError(w, http.StatusConflict, err)
			return
		}
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "node.delete", x.Name, x.ID)
		writeJSON(w, http.StatusOK, struct{}{})
	}))
}

func apiNode(x catalog.Node, now time.Time) api.Node {
	return api.Node{
		ID: x.ID, Name: x.Name, Kind: x.Kind, ClusterID: x.ClusterID, Tags: x.Tags,
		WireGuardPublicKey: x.WireGuardPublicKey, WireGuardEndpoint: x.WireGuardEndpoint,
		EnrollURL: x.EnrollURL, EnrollCertSHA256: x.EnrollCertSHA256, Version: x.Version,
		StartedAt: x.StartedAt, LastHeartbeat: x.LastHeartbeat,
		HeartbeatAgeSeconds: int64(max(0, now.Sub(x.LastHeartbeat).Seconds())),
		State:               x.State(now),
	}
}
