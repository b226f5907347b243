package controlapi

import (
	"net/http"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
)

// registerEnrollTokenRoutes adds the routes that list and cancel unused enrollment tokens: a token
// issued by mistake, or to someone who left, can be taken back before anyone redeems it.
func (sv *Server) registerEnrollTokenRoutes(mux *router) {
	mux.HandleFunc("GET /v1/admin/enroll-tokens", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if user != "" {
			if _, err := sv.cat.UserInfo(r.Context(), user); err != nil {
				writeCatalogError(w, err)
				return
			}
		}
		ts, err := sv.cat.PendingEnrollTokens(r.Context(), user)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := api.PendingTokenList{Tokens: []api.PendingToken{}}
		now := time.Now()
		for _, t := range ts {
			out.Tokens = append(out.Tokens, apiPendingToken(t, now))
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("DELETE /v1/admin/enroll-tokens/{id}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		t, err := sv.cat.CancelEnrollToken(r.Context(), r.PathValue("id"))
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "user.enroll-token.cancel", t.User, "id "+t.ID)
		writeJSON(w, http.StatusOK, apiPendingToken(t, time.Now()))
	}))
}

func apiPendingToken(t catalog.EnrollTokenInfo, now time.Time) api.PendingToken {
	return api.PendingToken{ID: t.ID, User: t.User, ExpiresAt: t.ExpiresAt, Expired: now.After(t.ExpiresAt)}
}
