package controlapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/tunnel"
)

// caller returns the user a control API request comes from.
func caller(r *http.Request) catalog.User { return r.Context().Value(ctxKey{}).(catalog.User) }

// writeCatalogError maps catalog errors to HTTP statuses.
func writeCatalogError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		writeError(w, http.StatusNotFound, err)
	case errors.Is(err, catalog.ErrConflict):
		writeError(w, http.StatusConflict, err)
	default:
		writeError(w, http.StatusBadRequest, err)
	}
}

// changed records an admin change in the activity log and applies it to peers and sessions at once.
func (sv *Server) changed(r *http.Request, action, target, detail string) {
	if err := sv.cat.RecordActivity(context.WithoutCancel(r.Context()), catalog.Activity{Actor: caller(r).Name, Action: action, Target: target, Detail: detail}); err != nil {
		sv.log.Error("record admin activity", "err", err)
	}
	sv.log.Info("admin change", "actor", caller(r).Name, "action", action, "target", target, "detail", detail)
	sv.sessions.Kick()
}

// registerAccessRoutes adds the users, roles, devices and activity routes to the control API.
func (sv *Server) registerAccessRoutes(mux *router) {
	mux.HandleFunc("GET /v1/admin/users", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		us, err := sv.cat.Users(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := []api.User{}
		for _, u := range us {
			out = append(out, apiUser(u))
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("GET /v1/admin/users/{name}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		u, err := sv.cat.UserInfo(r.Context(), r.PathValue("name"))
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, apiUser(u))
	}))
	mux.HandleFunc("POST /v1/admin/users", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		var req api.NewUser
		if err := readJSON(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if len(req.Roles) > 0 {
			roles, err := sv.cat.Roles(r.Context())
			if err != nil {
				writeError(w, http.StatusInternalServerError, err)
				return
			}
			have := map[string]bool{}
			for _, x := range roles {
				have[x.Name] = true
			}
			for _, want := range req.Roles {
				if !have[want] {
					writeError(w, http.StatusNotFound, fmt.Errorf("no role named %q (create it with `ferry admin roles add %s`); the user was not added", want, want))
					return
				}
			}
		}
		if err := sv.cat.AddUser(r.Context(), req.Name, req.Admin); err != nil {
			writeCatalogError(w, err)
			return
		}
		for _, role := range req.Roles {
			if err := sv.cat.AssignRole(r.Context(), role, req.Name); err != nil {
				writeCatalogError(w, fmt.Errorf("user %s was created, but: %w", req.Name, err))
				return
			}
		}
		sv.changed(r, "user.add", req.Name, fmt.Sprintf("admin=%v roles=%v", req.Admin, req.Roles))
		writeJSON(w, http.StatusCreated, struct{}{})
	}))
	mux.HandleFunc("POST /v1/admin/users/{name}/suspend", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		suspend := r.URL.Query().Get("suspended") != "false"
		if suspend && name == caller(r).Name {
			writeError(w, http.StatusBadRequest, errors.New("you cannot suspend yourself"))
			return
		}
		if err := sv.cat.SetSuspended(r.Context(), name, suspend); err != nil {
			writeCatalogError(w, err)
			return
		}
		action := "user.suspend"
		if !suspend {
			action = "user.reinstate"
		}
		sv.changed(r, action, name, "")
		writeJSON(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("DELETE /v1/admin/users/{name}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if name == caller(r).Name {
			writeError(w, http.StatusBadRequest, errors.New("you cannot delete yourself"))
			return
		}
		if err := sv.cat.DeleteUser(r.Context(), name); err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "user.delete", name, "")
		writeJSON(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("POST /v1/admin/users/{name}/enroll", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if _, err := sv.cat.UserInfo(r.Context(), name); err != nil {
			writeCatalogError(w, err)
			return
		}
		tok, err := sv.enrollToken(r.Context(), name)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		id := ""
		if p, err := api.ParseEnrollToken(tok); err == nil {
			id = catalog.TokenID(p.Secret)
		}
		sv.changed(r, "user.enroll-token", name, "single-use token issued, id "+id)
		writeJSON(w, http.StatusOK, api.Token{Token: tok, ID: id, ExpiresAt: time.Now().Add(time.Duration(sv.enrollTokenTTL)).UTC()})
	}))
	mux.HandleFunc("GET /v1/admin/users/{name}/devices", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if _, err := sv.cat.UserInfo(r.Context(), name); err != nil {
			writeCatalogError(w, err)
			return
		}
		ds, err := sv.cat.DevicesOf(r.Context(), name)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		shakes := map[string]time.Time{}
		if peers, err := sv.tun.Peers(); err == nil {
			for _, p := range peers {
				shakes[p.PublicKey.String()] = p.LastHandshake
			}
		}
		out := []api.Device{}
		for _, d := range ds {
			out = append(out, api.Device{PublicKey: d.PublicKey, Name: d.Name, Address: d.Address.String(), EnrolledAt: d.EnrolledAt, LastHandshake: shakes[d.PublicKey]})
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("DELETE /v1/admin/devices", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		key, err := tunnel.ParseKey(r.URL.Query().Get("public_key"))
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("public_key: %w", err))
			return
		}
		if err := sv.cat.DeleteDevice(r.Context(), key.String()); err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "device.delete", key.String(), "")
		writeJSON(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("DELETE /v1/me/device", func(w http.ResponseWriter, r *http.Request) {
		ap, _ := netip.ParseAddrPort(r.RemoteAddr)
		d, err := sv.cat.DeviceByAddress(r.Context(), ap.Addr())
		if err != nil {
			writeCatalogError(w, err)
			return
		}
		// Answer before the device (and so its tunnel) goes away, or the answer would be lost with it:
		// wait until the client has read it and closed the connection (at most 2 s).
		writeJSON(w, http.StatusOK, struct{}{})
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
		if err := sv.cat.DeleteDevice(context.WithoutCancel(r.Context()), d.PublicKey); err != nil {
			sv.log.Error("log out device", "user", d.User, "device", d.Name, "err", err)
			return
		}
		sv.changed(r, "device.logout", d.PublicKey, d.Name)
	})
	mux.HandleFunc("GET /v1/admin/roles", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		rs, err := sv.cat.Roles(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := []api.Role{}
		for _, x := range rs {
			role := api.Role{Name: x.Name, Grants: []string{}, Users: x.Users}
			for _, g := range x.Grants {
				role.Grants = append(role.Grants, string(g))
			}
			if role.Users == nil {
				role.Users = []string{}
			}
			out = append(out, role)
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("POST /v1/admin/roles", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		var req api.Role
		if err := readJSON(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if err := sv.cat.AddRole(r.Context(), req.Name); err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "role.add", req.Name, "")
		writeJSON(w, http.StatusCreated, struct{}{})
	}))
	mux.HandleFunc("DELETE /v1/admin/roles/{name}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		if err := sv.cat.DeleteRole(r.Context(), r.PathValue("name")); err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "role.delete", r.PathValue("name"), "")
		writeJSON(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("POST /v1/admin/roles/{name}/grants", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		g := catalog.Grant(r.URL.Query().Get("grant"))
		if err := sv.cat.GrantToRole(r.Context(), r.PathValue("name"), g); err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "role.grant", r.PathValue("name"), string(g))
		writeJSON(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("DELETE /v1/admin/roles/{name}/grants", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		g := catalog.Grant(r.URL.Query().Get("grant"))
		if err := sv.cat.RevokeFromRole(r.Context(), r.PathValue("name"), g); err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "role.revoke", r.PathValue("name"), string(g))
		writeJSON(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("POST /v1/admin/roles/{name}/users/{user}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		if err := sv.cat.AssignRole(r.Context(), r.PathValue("name"), r.PathValue("user")); err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "role.assign", r.PathValue("name"), r.PathValue("user"))
		writeJSON(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("DELETE /v1/admin/roles/{name}/users/{user}", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		if err := sv.cat.UnassignRole(r.Context(), r.PathValue("name"), r.PathValue("user")); err != nil {
			writeCatalogError(w, err)
			return
		}
		sv.changed(r, "role.unassign", r.PathValue("name"), r.PathValue("user"))
		writeJSON(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("GET /v1/admin/activities", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		as, err := sv.cat.Activities(r.Context(), limit)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := []api.Activity{}
		for _, a := range as {
			out = append(out, api.Activity{ID: a.ID, Time: a.Time, Actor: a.Actor, Action: a.Action, Target: a.Target, Detail: a.Detail})
		}
		writeJSON(w, http.StatusOK, out)
	}))
}

func apiUser(u catalog.UserInfo) api.User {
	roles := u.Roles
	if roles == nil {
		roles = []string{}
	}
	return api.User{Name: u.Name, Admin: u.Admin, Suspended: u.Suspended, Roles: roles, Devices: u.Devices, CreatedAt: u.CreatedAt}
}
