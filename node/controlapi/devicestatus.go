package controlapi

import (
	"errors"
	"net/http"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/catcache"
	"github.com/ferryhq/ferry/tunnel"
)

// errNotAuthenticated is the one answer to every device status query that is not proven to come
// from the holder of the key it names, so that such a caller learns nothing about any device.
var errNotAuthenticated = errors.New("device status: the request is not authenticated by a device key (check this computer's clock)")

// deviceStatus serves POST /v1/device-status on the public enrollment endpoint: it tells a device
// whose WireGuard peer is gone (user suspended, device or user deleted) why, and tells only that
// device (see package api, "Device status query").
func (sv *Server) deviceStatus(w http.ResponseWriter, r *http.Request) {
	var req api.DeviceStatusRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	devKey, err := tunnel.ParseKey(req.PublicKey)
	if err != nil {
		writeError(w, http.StatusUnauthorized, errNotAuthenticated)
		return
	}
	key, err := api.DeviceStatusKey(sv.key, devKey)
	skew := time.Since(time.Unix(req.Time, 0))
	if err != nil || skew > api.DeviceStatusSkew || skew < -api.DeviceStatusSkew || len(req.Nonce) != 32 ||
		!api.ValidMAC(req.MAC, req.RequestMAC(key)) {
		writeError(w, http.StatusUnauthorized, errNotAuthenticated)
		return
	}
	out := api.DeviceStatus{Status: api.DeviceUnknown}
	d, err := sv.cat.DeviceByPublicKey(r.Context(), devKey.String())
	if err == nil {
		u, uerr := sv.cat.UserByDevice(r.Context(), d.Address)
		err = uerr
		if err == nil {
			out.Status, out.User = api.DeviceActive, u.Name
			if u.Suspended {
				out.Status = api.DeviceSuspended
			}
		}
	}
	if catcache.IsUnreachable(err) {
		sv.log.Warn("device status query: the catalog is unreachable", "err", err)
		writeError(w, http.StatusServiceUnavailable, errors.New("device status: the catalog is unreachable; try again when it is back"))
		return
	}
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		sv.log.Error("device status query", "err", err)
		writeError(w, http.StatusInternalServerError, errors.New("device status: the node could not read its catalog; see the node's log"))
		return
	}
	out.MAC = out.AnswerMAC(key, req.Nonce)
	writeJSON(w, http.StatusOK, out)
}
