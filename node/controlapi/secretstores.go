package controlapi

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/resource"
)

// registerSecretStoreRoutes adds secret store CRUD to the control API.
func (sv *Server) registerSecretStoreRoutes(mux *router) {
	mux.HandleFunc("GET /v1/admin/secretstores", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		out, err := sv.cat.SecretStores(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("GET /v1/admin/secretstores/{id}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		s, err := sv.cat.SecretStore(r.Context(), r.PathValue("id"))
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s)
	}))
	mux.HandleFunc("POST /v1/admin/secretstores", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		var in resource.SecretStore
		if err := readJSON(r, &in); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		s, err := sv.cat.AddSecretStore(r.Context(), in)
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "secretstore.add", s.Name, fmt.Sprintf("%s %s %s", s.ID, s.Type, s.VaultURI))
		writeJSON(w, http.StatusOK, s)
	}))
	mux.HandleFunc("PUT /v1/admin/secretstores/{id}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		var in resource.SecretStore
		if err := readJSON(r, &in); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		before, after, err := sv.cat.UpdateSecretStore(r.Context(), r.PathValue("id"), func(s *resource.SecretStore) {
			id, typ := s.ID, s.Type
			*s = in
			s.ID = id
			if s.Type == "" {
				s.Type = typ
			}
		})
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.health.Kick()
		sv.changed(r, "secretstore.update", before.Name, fmt.Sprintf("%s: %s %s -> %s %s", before.ID, before.VaultURI, before.ManagedIdentityClientID, after.VaultURI, after.ManagedIdentityClientID))
		writeJSON(w, http.StatusOK, api.SecretStoreUpdate{Before: before, After: after})
	}))
	mux.HandleFunc("DELETE /v1/admin/secretstores/{id}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		s, err := sv.cat.DeleteSecretStore(r.Context(), r.PathValue("id"))
		if errors.Is(err, catalog.ErrInUse) {
			writeError(w, http.StatusConflict, err)
			return
		}
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "secretstore.delete", s.Name, s.ID)
		writeJSON(w, http.StatusOK, struct{}{})
	}))
}
