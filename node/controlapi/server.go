// Package controlapi is the node's two HTTP endpoints: the control API served inside the tunnel
// (one file per area: access, resources, secret stores, enrollment tokens, logs, health), whose
// caller is identified by its tunnel address, and the public enrollment endpoint (enrollment and the
// device status query). A Server holds what the handlers need (catalog, audit log queries, health,
// sessions, the tunnel), and limits.go protects both endpoints from slow or many clients.
package controlapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/catcache"
	"github.com/ferryhq/ferry/node/healthview"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// AuditLog is what the control API reads from the audit log.
type AuditLog interface {
	Connections(ctx context.Context, f audit.ConnectionFilter) ([]audit.Connection, error)
	Queries(ctx context.Context, f audit.QueryFilter) ([]audit.Query, error)
}

// Health is the node's health check scheduler (*health.Scheduler is one).
type Health interface {
	// Kick asks for a check of changed resources now.
	Kick()
	// Check runs resource name's check now.
	Check(ctx context.Context, name string) (api.Health, error)
	// Last is resource name's last result.
	Last(name string) api.Health
}

// Sessions is the node's admission and revocation (*session.Manager is one).
type Sessions interface {
	// Kick applies a change of the catalog to open sessions and WireGuard peers now.
	Kick()
	// Enroll redeems an enrollment token for key and makes the device a WireGuard peer.
	Enroll(ctx context.Context, secret string, key tunnel.Key, name string) (catalog.Device, catalog.User, error)
}

// Authz is the node's read cache of the catalog (*catcache.Cache is one): the caller lookup and
// the caller's resource list are answered from it, so that they keep working while the catalog
// database is unreachable; Unreachable says when it is (admin writes then fail at once with 503).
type Authz interface {
	UserByDevice(ctx context.Context, addr netip.Addr) (catalog.User, error)
	Resources(ctx context.Context) ([]resource.Resource, error)
	AccessOf(ctx context.Context, u catalog.User) (catalog.Access, error)
	// Unreachable is an error while the catalog is known to be unreachable, else nil.
	Unreachable() error
}

// Tunnel is what the endpoints need of the node's WireGuard tunnel (*tunnel.Tunnel is one).
type Tunnel interface {
	Peers() ([]tunnel.PeerStatus, error)
	CheckPeerKey(k tunnel.Key) error
	Port() uint16
}

// Config is a Server's dependencies.
type Config struct {
	Catalog *catalog.Catalog
	// Authz answers the caller lookup and the caller's resources; nil = Catalog (no cache).
	Authz    Authz
	Audit    AuditLog
	Health   Health
	Sessions Sessions
	Tunnel   Tunnel
	// CheckHost refuses a resource hostname the node may not reach (node/upstream).
	CheckHost func(host string) error
	// EnrollToken issues a single-use enrollment token for an existing user.
	EnrollToken    func(ctx context.Context, user string) (string, error)
	EnrollTokenTTL time.Duration
	// PublicHost is the node's public host name or address, for the WireGuard endpoint it tells
	// enrolling devices.
	PublicHost string
	// Key is the node's WireGuard private key: it keys the device status query's MAC.
	Key    tunnel.Key
	Limits Limits
	Logger *slog.Logger // nil = slog.Default()
}

// Server serves the control API and the enrollment endpoint.
type Server struct {
	cat            *catalog.Catalog
	authz          Authz
	audit          AuditLog
	health         Health
	sessions       Sessions
	tun            Tunnel
	checkHost      func(host string) error
	enrollToken    func(ctx context.Context, user string) (string, error)
	enrollTokenTTL time.Duration
	publicHost     string
	key, pub       tunnel.Key
	limits         Limits
	log            *slog.Logger
}

// New returns a Server over cfg's dependencies.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Authz == nil && cfg.Catalog != nil {
		cfg.Authz = uncached{cfg.Catalog}
	}
	return &Server{cat: cfg.Catalog, authz: cfg.Authz, audit: cfg.Audit, health: cfg.Health, sessions: cfg.Sessions, tun: cfg.Tunnel,
		checkHost: cfg.CheckHost, enrollToken: cfg.EnrollToken, enrollTokenTTL: cfg.EnrollTokenTTL, publicHost: cfg.PublicHost,
		key: cfg.Key, pub: cfg.Key.PublicKey(), limits: cfg.Limits, log: cfg.Logger}
}

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

// writeError answers err with status; an error that says the catalog database could not be reached
// is answered 503 with what to do, whatever status the handler chose.
func writeError(w http.ResponseWriter, status int, err error) {
	if catcache.IsUnreachable(err) {
		status, err = http.StatusServiceUnavailable, unreachable(err)
	}
	writeJSON(w, status, api.Error{Error: err.Error()})
}

// unreachable is the answer to a request that needs the catalog while it cannot be reached.
func unreachable(err error) error {
	msg := err.Error()
	if !strings.Contains(msg, "the catalog is unreachable") {
		msg = "the catalog is unreachable: " + msg
	} else if i := strings.Index(msg, "the catalog is unreachable"); i > 0 {
		msg = msg[i:] // say the catalog first, then what failed
	}
	return errors.New(msg + "; try again when it is back")
}

// uncached is a catalog read directly, for a Server without a cache.
type uncached struct{ *catalog.Catalog }

func (uncached) Unreachable() error { return nil }

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

// EnrollHandler serves POST /v1/enroll and POST /v1/device-status on the public HTTPS endpoint.
func (sv *Server) EnrollHandler() http.Handler {
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
		if err := sv.tun.CheckPeerKey(key); err != nil {
			sv.log.Warn("enrollment refused", "remote", r.RemoteAddr, "err", err)
			writeError(w, http.StatusBadRequest, fmt.Errorf("public_key: %w; enroll with a key made by `ferry login` or wg genkey | wg pubkey", err))
			return
		}
		if err := catalog.ValidateDeviceName(req.DeviceName); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("device_name: %w", err))
			return
		}
		d, u, err := sv.sessions.Enroll(r.Context(), req.Secret, key, req.DeviceName)
		switch {
		case errors.Is(err, catalog.ErrTokenUnknown), errors.Is(err, catalog.ErrTokenUsed), errors.Is(err, catalog.ErrTokenExpired), errors.Is(err, catalog.ErrUserSuspended):
			sv.log.Warn("enrollment refused", "remote", r.RemoteAddr, "err", err)
			writeError(w, http.StatusForbidden, err)
			return
		case errors.Is(err, catalog.ErrConflict):
			writeError(w, http.StatusConflict, err)
			return
		case errors.Is(err, catalog.ErrBadDeviceName), errors.Is(err, tunnel.ErrBadPeerKey):
			writeError(w, http.StatusBadRequest, err)
			return
		case catcache.IsUnreachable(err):
			// The public endpoint names no database host: the detail stays in the node's log.
			sv.log.Warn("enrollment refused: the catalog is unreachable", "remote", r.RemoteAddr, "err", err)
			writeError(w, http.StatusServiceUnavailable, errors.New("enrollment: the catalog is unreachable; try again when it is back"))
			return
		case err != nil:
			sv.log.Error("enrollment failed", "err", err)
			writeError(w, http.StatusInternalServerError, errors.New("enrollment failed on the node; see the node's log"))
			return
		}
		subnet, err := sv.cat.VNSubnet(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		sv.log.Info("device enrolled", "user", u.Name, "device", d.Name, "address", d.Address)
		writeJSON(w, http.StatusOK, api.EnrollResponse{
			User:              u.Name,
			Admin:             u.Admin,
			DeviceAddress:     d.Address.String(),
			NodePublicKey:     sv.pub.String(),
			WireGuardEndpoint: net.JoinHostPort(sv.publicHost, strconv.Itoa(int(sv.tun.Port()))),
			VNSubnet:          subnet.String(),
		})
	})
	mux.HandleFunc("POST /v1/device-status", sv.deviceStatus)
	return mux
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

// Routes lists the control API's routes as "METHOD /path" patterns (net/http ServeMux syntax).
func Routes() []string {
	return (&Server{}).apiRouter().patterns
}

// APIHandler serves the control API inside the tunnel. The caller is identified by its tunnel address.
func (sv *Server) APIHandler() http.Handler {
	mux := sv.apiRouter().mux
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			writeError(w, http.StatusForbidden, errors.New("unknown caller"))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		u, err := sv.authz.UserByDevice(ctx, ap.Addr())
		if catcache.IsUnreachable(err) {
			writeError(w, http.StatusServiceUnavailable, err)
			return
		}
		if err != nil {
			writeError(w, http.StatusForbidden, errors.New("this device is not enrolled; run `ferry login TOKEN`"))
			return
		}
		if u.Suspended {
			writeError(w, http.StatusForbidden, fmt.Errorf("user %s is suspended; ask a Ferry administrator", u.Name))
			return
		}
		// A write needs the catalog: while it is known to be unreachable, say so at once rather
		// than after the database's connect timeout. Reads try (those the cache answers succeed).
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := sv.authz.Unreachable(); err != nil {
				writeError(w, http.StatusServiceUnavailable, err)
				return
			}
		}
		mux.ServeHTTP(w, r.WithContext(context.WithValue(ctx, ctxKey{}, u)))
	})
}

// apiRouter registers every control API route.
func (sv *Server) apiRouter() *router {
	mux := &router{mux: http.NewServeMux()}
	mux.HandleFunc("GET /v1/me", func(w http.ResponseWriter, r *http.Request) {
		u := caller(r)
		writeJSON(w, http.StatusOK, api.Me{User: u.Name, Admin: u.Admin, Device: r.RemoteAddr})
	})
	mux.HandleFunc("GET /v1/settings", func(w http.ResponseWriter, r *http.Request) {
		s, err := sv.settings(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("GET /v1/resources", func(w http.ResponseWriter, r *http.Request) {
		rs, err := sv.authz.Resources(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		acc, err := sv.authz.AccessOf(r.Context(), caller(r))
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		// The route is left out when the nodes cannot be read (the catalog is down: the resources
		// come from the authorisation cache); clients then use any node, as before routing.
		rt, rtErr := sv.routes(r.Context())
		if rtErr != nil {
			sv.log.Warn("resource list without routes", "err", rtErr)
		}
		out := api.ResourceList{Resources: []api.Resource{}}
		var allowed []resource.Resource
		for _, x := range rs {
			if acc.Allows(x) {
				allowed = append(allowed, x)
			}
		}
		health := sv.healthSummaries(r.Context(), allowed)
		for _, x := range allowed {
			res := api.Resource{
				Name: x.Name, Type: x.Type, Database: x.Database, Username: x.Username,
				ConnectivityMode: x.ConnectivityMode, LoopbackAddress: x.LoopbackAddress, VNAddress: x.VNAddress,
				Subdomain: x.Subdomain, Tags: x.Tags, Health: health[x.Name],
			}
			if rtErr == nil {
				res.Route, _ = rt.of(x)
				for i := 0; res.Route != nil && i < len(res.Route.Nodes); i++ {
					res.Route.Nodes[i].Health, res.Route.Nodes[i].CheckedAt = healthview.RouteHealth(health[x.Name], res.Route.Nodes[i].NodeID)
				}
			}
			out.Resources = append(out.Resources, res)
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/admin/datasources", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		rs, err := sv.cat.Resources(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		if rs == nil {
			rs = []resource.Resource{}
		}
		writeJSON(w, http.StatusOK, api.DatasourceList{Datasources: rs})
	}))
	mux.HandleFunc("POST /v1/admin/datasources", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		var in resource.Input // a left-out tls_required is true
		if err := readJSON(r, &in); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		res := in.Get()
		if err := sv.checkHost(res.Hostname); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		out, err := sv.cat.AddResource(r.Context(), res)
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
		sv.health.Kick() // check the new resource now
		sv.changed(r, "datasource.add", out.Name, fmt.Sprintf("vn_address=%s loopback_address=%s", out.VNAddress, out.LoopbackAddress))
		writeJSON(w, http.StatusCreated, out)
	}))
	mux.HandleFunc("GET /v1/admin/logs/connections", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		f, err := sv.connectionFilter(r)
		if err != nil {
			writeFilterError(w, err)
			return
		}
		cs, err := sv.audit.Connections(r.Context(), f)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		names := sv.nodeNames(r.Context())
		out := api.ConnectionList{Connections: []api.Connection{}}
		for _, c := range cs {
			ac := apiConnection(c)
			ac.NodeName = names[c.NodeID]
			out.Connections = append(out.Connections, ac)
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc("GET /v1/admin/logs/queries", sv.admin(func(w http.ResponseWriter, r *http.Request) {
		f, err := queryFilter(r)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		qs, err := sv.audit.Queries(r.Context(), f)
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
	sv.registerAccessRoutes(mux)
	sv.registerEnrollTokenRoutes(mux)
	sv.registerCatalogRoutes(mux)
	sv.registerSecretStoreRoutes(mux)
	sv.registerHealthRoutes(mux)
	sv.registerNodeRoutes(mux)
	sv.registerClusterRoutes(mux)
	return mux
}

// admin wraps a handler that needs the admin permission level.
func (sv *Server) admin(h http.HandlerFunc) http.HandlerFunc {
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
func (sv *Server) settings(ctx context.Context) (api.Settings, error) {
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
		if *f.out, err = sv.cat.Setting(ctx, f.key, f.def); err != nil {
			return s, err
		}
	}
	return s, nil
}
