package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// maxBody caps request bodies of both HTTP endpoints (bytes).
const maxBody = 1 << 20

// writeJSON sends v with a Content-Length, so that a flushed answer is complete on the wire.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encode answer"}`)
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, api.Error{Error: err.Error()})
}

func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return fmt.Errorf("read request body: it is larger than this endpoint's limit of %d bytes", mbe.Limit)
		}
		return fmt.Errorf("read request body: %w", err)
	}
	return nil
}

// enrollHandler serves POST /v1/enroll on the public HTTPS endpoint.
func (n *Node) enrollHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/enroll", func(w http.ResponseWriter, r *http.Request) {
		var req api.EnrollRequest
		if err := readJSON(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		key, err := tunnel.ParseKey(req.PublicKey)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("public_key: %w", err))
			return
		}
		// A key that cannot be a WireGuard peer is refused before anything is stored: stored, it
		// would be a device the tunnel refuses at every reconcile and at every start.
		if err := n.tun.CheckPeerKey(key); err != nil {
			n.log.Warn("enrollment refused", "remote", r.RemoteAddr, "err", err)
			writeError(w, http.StatusBadRequest, fmt.Errorf("public_key: %w; enroll with a key made by `ferry login` or wg genkey | wg pubkey", err))
			return
		}
		if err := catalog.ValidateDeviceName(req.DeviceName); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("device_name: %w", err))
			return
		}
		d, u, err := n.enroll(r.Context(), req.Secret, key, req.DeviceName)
		switch {
		case errors.Is(err, catalog.ErrTokenUnknown), errors.Is(err, catalog.ErrTokenUsed), errors.Is(err, catalog.ErrTokenExpired), errors.Is(err, catalog.ErrUserSuspended):
			n.log.Warn("enrollment refused", "remote", r.RemoteAddr, "err", err)
			writeError(w, http.StatusForbidden, err)
			return
		case errors.Is(err, catalog.ErrConflict):
			writeError(w, http.StatusConflict, err)
			return
		case errors.Is(err, catalog.ErrBadDeviceName), errors.Is(err, tunnel.ErrBadPeerKey):
			writeError(w, http.StatusBadRequest, err)
			return
		case err != nil:
			n.log.Error("enrollment failed", "err", err)
			writeError(w, http.StatusInternalServerError, errors.New("enrollment failed on the node; see the node's log"))
			return
		}
		subnet, err := n.cat.VNSubnet(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		n.log.Info("device enrolled", "user", u.Name, "device", d.Name, "address", d.Address)
		writeJSON(w, http.StatusOK, api.EnrollResponse{
			User:              u.Name,
			Admin:             u.Admin,
			DeviceAddress:     d.Address.String(),
			NodePublicKey:     n.pub.String(),
			WireGuardEndpoint: net.JoinHostPort(n.cfg.PublicHost, strconv.Itoa(int(n.tun.Port()))),
			VNSubnet:          subnet.String(),
		})
	})
	mux.HandleFunc("POST /v1/device-status", n.deviceStatus)
	return mux
}

// enroll redeems the token for key and makes the device a WireGuard peer, both or neither: the peer
// is added inside the catalog transaction, which rolls back when that fails, and removed again when
// the commit fails. peerMu keeps the reconcile loop from seeing the peer before its device.
func (n *Node) enroll(ctx context.Context, secret string, key tunnel.Key, name string) (catalog.Device, catalog.User, error) {
	n.peerMu.Lock()
	defer n.peerMu.Unlock()
	added := false
	d, u, err := n.cat.Enroll(ctx, secret, key.String(), name, func(d catalog.Device) error {
		p, err := devicePeer(d)
		if err != nil {
			return err
		}
		if err := n.tun.AddPeer(p); err != nil {
			return fmt.Errorf("add WireGuard peer: %w", err)
		}
		added = true
		return nil
	})
	if err != nil && added {
		if rerr := n.tun.RemovePeer(key); rerr != nil {
			n.log.Error("remove the WireGuard peer of a failed enrollment", "public_key", key.String(), "err", rerr)
		}
	}
	return d, u, err
}

type ctxKey struct{}

// router is a ServeMux that remembers its patterns, so that the OpenAPI document can be checked
// against the routes the node really serves.
type router struct {
	mux      *http.ServeMux
	patterns []string
}

// HandleFunc registers h for pattern ("METHOD /path").
func (r *router) HandleFunc(pattern string, h http.HandlerFunc) {
	r.patterns = append(r.patterns, pattern)
	r.mux.HandleFunc(pattern, h)
}

// APIRoutes lists the control API's routes as "METHOD /path" patterns (net/http ServeMux syntax).
func APIRoutes() []string {
	n := &Node{}
	return n.apiRouter().patterns
}

// apiHandler serves the control API inside the tunnel. The caller is identified by its tunnel address.
func (n *Node) apiHandler() http.Handler {
	mux := n.apiRouter().mux
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			writeError(w, http.StatusForbidden, errors.New("unknown caller"))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		u, err := n.cat.UserByDevice(ctx, ap.Addr())
		if err != nil {
			writeError(w, http.StatusForbidden, errors.New("this device is not enrolled; run `ferry login TOKEN`"))
			return
		}
		if u.Suspended {
			writeError(w, http.StatusForbidden, fmt.Errorf("user %s is suspended; ask a Ferry administrator", u.Name))
			return
		}
		mux.ServeHTTP(w, r.WithContext(context.WithValue(ctx, ctxKey{}, u)))
	})
}

// apiRouter registers every control API route.
func (n *Node) apiRouter() *router {
	mux := &router{mux: http.NewServeMux()}
	mux.HandleFunc("GET /v1/me", func(w http.ResponseWriter, r *http.Request) {
		u := caller(r)
		writeJSON(w, http.StatusOK, api.Me{User: u.Name, Admin: u.Admin, Device: r.RemoteAddr})
	})
	mux.HandleFunc("GET /v1/settings", func(w http.ResponseWriter, r *http.Request) {
		s, err := n.settings(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("GET /v1/resources", func(w http.ResponseWriter, r *http.Request) {
		rs, err := n.cat.Resources(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		acc, err := n.cat.AccessOf(r.Context(), caller(r))
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := api.ResourceList{Resources: []api.Resource{}}
		for _, x := range rs {
			if !acc.Allows(x) {
				continue
			}
			out.Resources = append(out.Resources, api.Resource{
				Name: x.Name, Type: x.Type, Database: x.Database, Username: x.Username,
				ConnectivityMode: x.ConnectivityMode, LoopbackAddress: x.LoopbackAddress, VNAddress: x.VNAddress,
				Subdomain: x.Subdomain, Tags: x.Tags, Health: n.healthSummary(x.Name),
			})
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/admin/datasources", n.admin(func(w http.ResponseWriter, r *http.Request) {
		rs, err := n.cat.Resources(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		if rs == nil {
			rs = []resource.Resource{}
		}
		writeJSON(w, http.StatusOK, api.DatasourceList{Datasources: rs})
	}))
	mux.HandleFunc("POST /v1/admin/datasources", n.admin(func(w http.ResponseWriter, r *http.Request) {
		var in resource.Input // a left-out tls_required is true
		if err := readJSON(r, &in); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		res := in.Get()
		if err := n.checkServerHost(res.Hostname); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		out, err := n.cat.AddResource(r.Context(), res)
		var fe *resource.FieldError
		switch {
		case errors.Is(err, catalog.ErrConflict):
			writeError(w, http.StatusConflict, err)
			return
		case errors.As(err, &fe):
			writeError(w, http.StatusBadRequest, err)
			return
		case err != nil:
			writeError(w, http.StatusBadRequest, err)
			return
		}
		n.health.Kick() // check the new resource now
		n.changed(r, "datasource.add", out.Name, fmt.Sprintf("vn_address=%s loopback_address=%s", out.VNAddress, out.LoopbackAddress))
		writeJSON(w, http.StatusCreated, out)
	}))
	mux.HandleFunc("GET /v1/admin/logs/connections", n.admin(func(w http.ResponseWriter, r *http.Request) {
		f, err := connectionFilter(r)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		cs, err := n.audit.Connections(r.Context(), f)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := api.ConnectionList{Connections: []api.Connection{}}
		for _, c := range cs {
			out.Connections = append(out.Connections, apiConnection(c))
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("GET /v1/admin/logs/queries", n.admin(func(w http.ResponseWriter, r *http.Request) {
		f, err := queryFilter(r)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		qs, err := n.audit.Queries(r.Context(), f)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		out := api.QueryList{Queries: []api.Query{}}
		for _, q := range qs {
			out.Queries = append(out.Queries, apiQuery(q))
		}
		writeJSON(w, http.StatusOK, out)
	}))
	n.registerAccessRoutes(mux)
	n.registerEnrollTokenRoutes(mux)
	n.registerCatalogRoutes(mux)
	n.registerSecretStoreRoutes(mux)
	n.registerHealthRoutes(mux)
	n.registerNodeRoutes(mux)
	return mux
}

// admin wraps a handler that needs the admin permission level.
func (n *Node) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if u := caller(r); !u.Admin {
			writeError(w, http.StatusForbidden, fmt.Errorf("user %s is not an administrator", u.Name))
			return
		}
		h(w, r)
	}
}

func limit(r *http.Request) int {
	n, err := strconv.Atoi(r.URL.Query().Get("limit"))
	if err != nil || n <= 0 {
		return 100
	}
	return n
}

// settings reads the org's network settings with their defaults.
func (n *Node) settings(ctx context.Context) (api.Settings, error) {
	var s api.Settings
	var err error
	for _, f := range []struct {
		key, def string
		out      *string
	}{
		{catalog.SettingDefaultMode, resource.ModeLoopback, &s.ConnectivityMode},
		{catalog.SettingVNSubnet, resource.DefaultVNSubnet.String(), &s.VNSubnet},
		{catalog.SettingDNSDomain, catalog.DefaultDNSDomain, &s.DNSDomain},
		{catalog.SettingLoopbackRange, resource.DefaultLoopbackRange.String(), &s.LoopbackRange},
	} {
		if *f.out, err = n.cat.Setting(ctx, f.key, f.def); err != nil {
			return s, err
		}
	}
	return s, nil
}
