package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/internal/fdlimit"
	"github.com/ferryhq/ferry/internal/splice"
	"github.com/ferryhq/ferry/tunnel"
)

// PersistentKeepalive is the WireGuard keepalive toward the node (seconds matter: NAT and Azure load
// balancers drop idle UDP flows).
const PersistentKeepalive = 25 * time.Second

// Daemon is the running client: one WireGuard tunnel to the node, each connected resource served in
// its connectivity mode (a loopback listener, or its VN address and alias on the TUN: modes.go), and
// the control socket.
type Daemon struct {
	dirs    Dirs
	log     *slog.Logger
	tun     *tunnel.Tunnel
	api     *api.Client
	ctl     *http.Server
	ctlLn   net.Listener
	ctlSock os.FileInfo // the control socket this daemon made; Close removes only that one
	ctlLock io.Closer   // the control socket's lock file, held until Close (lockSocket)

	mu        sync.Mutex
	state     State
	listeners map[string]*listener // by resource name
	wg        sync.WaitGroup
	ctx       context.Context
	cancel    context.CancelFunc
	loggedOut chan struct{} // closed by Logout

	opts     daemonOptions
	settings api.Settings // the org's network settings as last read (modes.go)
	vn       *vnet        // virtual networking (vnet.go); nil until some resource needs it and it came up
	vnWhy    string       // why virtual-networking resources are served on loopback; "" when they are not
	vnUp     sync.Mutex   // serializes attempts to bring up virtual networking (ensureVNet)
	vnLast   time.Time    // the last attempt, guarded by vnUp
	vnTrying atomic.Bool  // a background attempt runs (retryVNet)

	link    nodeLink   // the node's reachability, as the watchdog sees it (reconnect.go)
	fleet   fleet      // which node is in use, failover and the node list (failover.go, fleet.go)
	routeMu sync.Mutex // serializes choices of node per resource (route.go)
	// routeRefresh serializes the re-reads of refused connections (routeFresh); routeRefreshAt is
	// when the last began and routeRefreshList what it read.
	routeRefresh     sync.Mutex
	routeRefreshAt   time.Time
	routeRefreshList []api.Resource
	routing          atomic.Bool // an ensureRoutes runs
	account          account     // this device's status when the node does not answer (account.go)

	splices *splice.Pool // the copy buffers of proxied connections, lent while data flows
}

type listener struct {
	res      api.Resource
	ln       net.Listener
	fallback bool // a virtual-networking resource served here because there is no TUN
}

// StartDaemon brings up the tunnel to the node, restores the resources that were connected, and serves
// the control socket at dirs.Socket(). It returns once the socket listens; stop it with Close.
func StartDaemon(ctx context.Context, dirs Dirs, logger *slog.Logger, opts ...DaemonOption) (*Daemon, error) {
	if logger == nil {
		logger = slog.Default()
	}
	st, err := LoadState(dirs)
	if err != nil {
		return nil, fmt.Errorf("start daemon: %w", err)
	}
	d := &Daemon{dirs: dirs, log: logger, state: st, listeners: map[string]*listener{}, loggedOut: make(chan struct{}), splices: splice.NewPool()}
	for _, o := range opts {
		o(&d.opts)
	}
	d.ctx, d.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if n, err := fdlimit.Raise(); err != nil { // every local session holds a socket
		d.log.Warn("could not raise the open-file limit", "limit", n, "err", err)
	}
	if err := d.start(ctx); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *Daemon) start(ctx context.Context) error {
	// A second daemon of the same user is refused before anything else starts: its tunnel would
	// handshake with the node under the same key and take the running daemon's session over.
	if err := os.MkdirAll(d.dirs.Runtime, 0o700); err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	if err := checkRuntimeDir(d.dirs.Runtime); err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	sock := d.dirs.Socket()
	if err := d.claimSocket(sock); err != nil {
		return err
	}
	key, err := tunnel.ParseKey(d.state.PrivateKey)
	if err != nil {
		return fmt.Errorf("start daemon: device key: %w", err)
	}
	nodeKey, err := tunnel.ParseKey(d.state.NodePublicKey)
	if err != nil {
		return fmt.Errorf("start daemon: node key: %w", err)
	}
	endpoint, err := resolveEndpoint(ctx, d.state.WireGuardEndpoint)
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	addr, err := netip.ParseAddr(d.state.DeviceAddress)
	if err != nil {
		return fmt.Errorf("start daemon: device address: %w", err)
	}
	// The node is this stack's only peer and the stack carries nothing but Ferry's own connections,
	// so everything goes to the node: a later change of the org's VN subnet needs no new allowed IPs.
	allowed := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	d.link.peer = tunnel.Peer{PublicKey: nodeKey, AllowedIPs: allowed, Endpoint: endpoint, PersistentKeepalive: PersistentKeepalive}
	d.link.endpoint = d.state.WireGuardEndpoint
	d.startFleet(nodeKey, time.Now())
	d.tun, err = tunnel.New(ctx, tunnel.Config{
		PrivateKey: key,
		Addresses:  []netip.Addr{addr},
		Peers:      []tunnel.Peer{d.link.peer},
		Logger:     d.log,
	})
	if err != nil {
		return fmt.Errorf("start daemon: tunnel: %w", err)
	}
	d.api = api.NewClient(d.tun.Stack().DialContext, 15*time.Second)
	// Before anything asks the node: a node that is down at start is left for another from here.
	d.wg.Add(2)
	go d.watchNodes()
	go d.followNodes()
	d.startVNet(ctx)

	d.ctl = &http.Server{Handler: d.controlHandler(), ReadHeaderTimeout: 10 * time.Second}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.ctl.Serve(d.ctlLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("control socket stopped", "err", err)
		}
	}()
	d.wg.Add(1)
	go d.followCatalog()
	for _, name := range d.state.Connected {
		if _, err := d.Connect(ctx, name); err != nil {
			d.log.Warn("could not restore connection", "resource", name, "err", err)
		}
	}
	d.log.Info("daemon started", "user", d.state.User, "device", d.state.DeviceAddress, "node", d.state.WireGuardEndpoint, "socket", sock)
	return nil
}

// claimSocket refuses to start when another daemon serves sock, removes a stale socket of an
// earlier run, and listens on sock at once: the socket is what tells daemons of one device apart,
// so it is taken before the tunnel comes up. A daemon that started at the same moment and listened
// first gets the same refusal as one that runs already, and neither touches the other's tunnel.
// Connections wait in the socket's backlog until the daemon serves them.
// errSocketLocked: another daemon holds the control socket's lock.
var errSocketLocked = errors.New("control socket locked")

func (d *Daemon) claimSocket(sock string) error {
	refused := fmt.Errorf("start daemon: another ferry daemon already serves %s", sock)
	lock, err := lockSocket(sock)
	if errors.Is(err, errSocketLocked) {
		return refused
	}
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	d.ctlLock = lock
	switch err := checkSocket(sock); {
	case errors.Is(err, errNoSocket):
	case err != nil:
		return fmt.Errorf("start daemon: %w", err) // another user's: neither dialled nor removed
	default:
		seen, err := os.Lstat(sock)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("start daemon: control socket: %w", err)
		}
		if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
			if err := checkPeer(c, sock); err != nil {
				return fmt.Errorf("start daemon: %w", err)
			}
			c.Close()
			return refused
		}
		// A stale socket of an earlier run: removed only while it is the one that did not answer,
		// never one another daemon made since.
		if seen != nil {
			if err := removeOwnSocket(sock, seen); err != nil {
				return fmt.Errorf("start daemon: %w", err)
			}
		}
	}
	ln, err := net.Listen("unix", sock)
	if errors.Is(err, syscall.EADDRINUSE) {
		return refused // another daemon listened between the check and here
	}
	if err != nil {
		return fmt.Errorf("start daemon: control socket: %w", err)
	}
	// The socket is removed by Close, and only while it is still this one (removeOwnSocket).
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	d.ctlLn = ownerOnly{Listener: ln, log: d.log}
	_ = os.Chmod(sock, 0o600) // the directory is private already; this is belt and braces
	if d.ctlSock, err = os.Lstat(sock); err != nil {
		return fmt.Errorf("start daemon: control socket: %w", err)
	}
	return nil
}

func resolveEndpoint(ctx context.Context, hostport string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("node WireGuard endpoint %q: %w", hostport, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("node WireGuard endpoint %q: bad port", hostport)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("resolve node WireGuard endpoint %q: %w", hostport, err)
	}
	return netip.AddrPortFrom(ips[0].Unmap(), uint16(p)), nil
}

// API returns the node's control API client, through the tunnel.
func (d *Daemon) API() *api.Client { return d.api }

// ResourceStatus is one row of the daemon's status.
type ResourceStatus struct {
	api.Resource
	Address   string `json:"address"` // where local clients connect, e.g. 127.0.0.1:10001 or alias.ferry.internal:5432
	Connected bool   `json:"connected"`
	// Serving is how the client serves the resource now (or would on connect): ModeLoopback or
	// ModeVirtualNetworking; Resource.ConnectivityMode is only how it is configured.
	Serving string `json:"serving"`
	// Fallback: the resource is set to virtual networking but served on its loopback address
	// because this client has no TUN (Status.VNUnavailable says why and what to do).
	Fallback bool `json:"fallback,omitempty"`
	// Node is the node that new connections to a connected resource go to (its name, else its
	// endpoint); "" when none is chosen yet or none can carry it.
	Node string `json:"node,omitempty"`
}

// Status is the daemon's answer to GET /local/v1/status.
type Status struct {
	User          string `json:"user"`
	Admin         bool   `json:"admin"`
	Device        string `json:"device"`
	NodeReachable bool   `json:"node_reachable"`
	NodeError     string `json:"node_error,omitempty"`
	// Suspended: the node says the user was suspended by an administrator (NodeError says so too).
	Suspended bool `json:"suspended,omitempty"`
	// DeviceRemoved: the node says this device is no longer enrolled (deleted, or its user deleted).
	DeviceRemoved bool `json:"device_removed,omitempty"`
	// VNUnavailable: virtual networking could not be brought up, so virtual-networking resources are
	// served on loopback addresses; the text says why and the command that fixes it.
	VNUnavailable string `json:"vn_unavailable,omitempty"`
	// Node is the name of the node in use (its WireGuard endpoint when the node list does not name
	// it), NodeEndpoint where it is reached; PreferredNode the node this device enrolled with, to
	// which the client returns when it answers again.
	Node          string `json:"node"`
	NodeEndpoint  string `json:"node_endpoint"`
	PreferredNode string `json:"preferred_node,omitempty"`
	// NodeChange is the last change of node and why ("" when the preferred node was never left).
	NodeChange string `json:"node_change,omitempty"`
	// NodeListError says why the node list the node in use gave was refused.
	NodeListError string           `json:"node_list_error,omitempty"`
	Resources     []ResourceStatus `json:"resources"`
}

// Status asks the node for the user's resources and marks the connected ones.
func (d *Daemon) Status(ctx context.Context) Status {
	d.mu.Lock()
	st := Status{User: d.state.User, Admin: d.state.Admin, Device: d.state.DeviceAddress, VNUnavailable: d.vnWhy, Resources: []ResourceStatus{}}
	d.mu.Unlock()
	d.fleet.mu.Lock()
	st.Node, st.NodeEndpoint = d.fleet.curNode.label(), d.fleet.curNode.WireGuardEndpoint
	if n, ok := d.fleet.nodeByKey(d.fleet.preferred); ok {
		st.PreferredNode = n.label()
	} else {
		st.PreferredNode = d.state.WireGuardEndpoint
	}
	st.NodeChange, st.NodeListError = d.fleet.note, d.fleet.listErr
	d.fleet.mu.Unlock()
	probe := d.link.probeTimeout()
	sctx, cancel := context.WithTimeout(ctx, probe)
	rs, err := d.resources(sctx)
	cancel()
	if err != nil {
		st.NodeError = err.Error()
		// The account check asks the enrollment node, which may be the dead one: bounded too, so
		// that a status always answers (the node in use and the node change are its news then).
		actx, cancel := context.WithTimeout(ctx, probe)
		acc := d.checkAccount(actx)
		cancel()
		if accountError(acc, st.User) != "" {
			st.NodeError = accountError(acc, st.User)
			st.Suspended, st.DeviceRemoved = acc == api.DeviceSuspended, acc == api.DeviceUnknown
		}
		d.mu.Lock()
		for _, l := range d.listeners {
			st.Resources = append(st.Resources, d.row(l.res))
		}
		if d.vn != nil {
			for _, r := range d.vn.list() {
				st.Resources = append(st.Resources, d.row(r))
			}
		}
		d.mu.Unlock()
	} else {
		st.NodeReachable = true
		d.mu.Lock()
		for _, r := range rs {
			st.Resources = append(st.Resources, d.row(r))
		}
		d.mu.Unlock()
	}
	sort.Slice(st.Resources, func(i, j int) bool { return st.Resources[i].Name < st.Resources[j].Name })
	return st
}

// ErrUnknownResource is returned when a name matches none of the user's resources.
var ErrUnknownResource = errors.New("no such resource")

// Connect starts serving the resource in its connectivity mode (modes.go) and returns its status row.
// Connecting an already connected resource returns its address again.
func (d *Daemon) Connect(ctx context.Context, name string) (ResourceStatus, error) {
	rs, err := d.resources(ctx)
	if err != nil {
		return ResourceStatus{}, fmt.Errorf("connect %s: list resources: %w", name, err)
	}
	i := slices.IndexFunc(rs, func(r api.Resource) bool { return r.Name == name })
	if i < 0 {
		return ResourceStatus{}, fmt.Errorf("connect %s: %w you may reach (see `ferry status`)", name, ErrUnknownResource)
	}
	r := rs[i]
	d.mu.Lock()
	unread := d.settings.ConnectivityMode == ""
	d.mu.Unlock()
	if unread && d.opts.mode == "" {
		if _, err := d.readSettings(ctx); err != nil {
			d.log.Warn("could not read the org's connectivity mode", "err", err)
		}
	}
	d.mu.Lock()
	needVN := d.opts.mode != ModeLoopback && d.vn == nil && d.wantMode(r) == ModeVirtualNetworking
	d.mu.Unlock()
	if needVN {
		d.ensureVNet(ctx)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.serve(r)
}

// Disconnect stops listening for the named resources (all when names is empty). Open sessions end.
func (d *Daemon) Disconnect(names ...string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(names) == 0 {
		for n := range d.listeners {
			names = append(names, n)
		}
		names = append(names, d.vnNames()...)
	}
	var errs []error
	for _, n := range names {
		l, ok := d.listeners[n]
		if !ok && d.vnDisconnect(n) {
			d.dropRoute(n)
			continue
		}
		if !ok {
			errs = append(errs, fmt.Errorf("disconnect %s: it is not connected", n))
			continue
		}
		_ = l.ln.Close()
		delete(d.listeners, n)
		d.dropRoute(n)
		d.state.Connected = slices.DeleteFunc(d.state.Connected, func(s string) bool { return s == n })
		d.log.Info("resource disconnected", "resource", n)
	}
	if err := SaveState(d.dirs, d.state); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// dialTimeout bounds a dial through the tunnel to the node (handshake included: one round trip on a
// healthy link), so a local client whose node has just gone away gets its FATAL 08001 within
// seconds; once the watchdog knows the node is unreachable, dialTimeoutDown applies.
const dialTimeout = 6 * time.Second

func (d *Daemon) acceptLoop(l *listener) {
	defer d.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				d.log.Warn("loopback listener stopped", "resource", l.res.Name, "err", err)
			}
			return
		}
		d.mu.Lock()
		r := l.res // follow may update it
		d.mu.Unlock()
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.carry(c, r)
		}()
	}
}

// carry takes one local connection through the tunnel to the resource's virtual networking address.
// When the node cannot be reached, the local client gets a PostgreSQL FATAL ErrorResponse (SQLSTATE
// 08001) instead of a dropped connection.
func (d *Daemon) carry(c net.Conn, r api.Resource) {
	defer c.Close()
	v, r, err := d.routeFresh(r)
	if err != nil {
		d.log.Warn("no node can carry the resource", "resource", r.Name, "err", err)
		hint := "Check the node list's state (ferry status), then retry."
		if errors.As(err, new(errNoRoute)) {
			hint = fmt.Sprintf("The resource's proxy cluster or egress filter leaves no online node for it; an administrator can check it (ferry admin datasources show %s).", r.Name)
		}
		refuse(c, "08001", err.Error(), hint)
		return
	}
	up, err := d.dialVia(v, r.VNAddress)
	if now, nerr := d.routeFor(r); nerr == nil && now.key != v.key {
		// The client moved to another node during the dial: nothing has passed yet, so this
		// connection goes through the node now in use instead of failing or being ended at once.
		if err == nil {
			_ = up.Close()
		}
		v = now
		up, err = d.dialVia(v, r.VNAddress)
	}
	if err != nil {
		d.noteProbe(err)
		d.log.Warn("could not reach the node", "resource", r.Name, "err", err)
		refuse(c, "08001", fmt.Sprintf("ferry: could not reach ferry-node for resource %q: %v", r.Name, err),
			"Check that ferry-node is running and reachable (ferry status), then retry.")
		return
	}
	defer up.Close()
	rl := d.track(c, up, v, r.Name)
	defer d.untrack(rl)
	// Once one side has finished, the other gets a moment to drain, then both are closed.
	d.splices.Splice(d.ctx, relayConn{Conn: c, r: rl}, up, 5*time.Second)
}

// dialNode dials addr through the tunnel to the node in use, bounded by dialTimeout.
func (d *Daemon) dialNode(addr string) (net.Conn, error) {
	timeout := d.link.dialTimeout()
	if timeout < dialTimeout {
		d.kickLink() // the node was unreachable: try a new handshake for this connection now
	}
	ctx, cancel := context.WithTimeout(d.nodeContext(), timeout)
	defer cancel()
	// A dial that has not completed by slowDial meets a node that may have restarted and lost the
	// session keys: start a new handshake before the SYN's first retransmission (1 s).
	slow := time.AfterFunc(slowDial, d.kickLink)
	defer slow.Stop()
	return d.tun.Stack().DialContext(ctx, "tcp", addr)
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// refuse answers a PostgreSQL client that has not been proxied: SSLRequest and GSSENCRequest get 'N',
// then a FATAL ErrorResponse follows the StartupMessage (PostgreSQL protocol §55.2.1, §55.7).
func refuse(c net.Conn, code, msg, hint string) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	be := pgproto3.NewBackend(c, c)
	be.SetMaxBodyLen(10000)
	for i := 0; i < 3; i++ {
		m, err := be.ReceiveStartupMessage()
		if err != nil {
			return
		}
		switch m.(type) {
		case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
			if _, err := c.Write([]byte{'N'}); err != nil {
				return
			}
		case *pgproto3.StartupMessage:
			be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg, Hint: hint})
			_ = be.Flush()
			return
		default: // CancelRequest: nothing to cancel
			return
		}
	}
}

// Logout removes this device from the node, disconnects everything and deletes the local state
// (the device's key). The daemon then has nothing to serve: LoggedOut is closed and the caller should
// Close it.
func (d *Daemon) Logout(ctx context.Context) error {
	if err := d.api.Logout(ctx); err != nil {
		return fmt.Errorf("log out: tell the node: %w", err)
	}
	_ = d.Disconnect()
	if err := os.Remove(d.dirs.statePath()); err != nil {
		return fmt.Errorf("log out: remove local state: %w", err)
	}
	d.log.Info("logged out", "user", d.state.User)
	close(d.loggedOut)
	return nil
}

// LoggedOut is closed once Logout has succeeded.
func (d *Daemon) LoggedOut() <-chan struct{} { return d.loggedOut }

// Dial opens a TCP connection through the tunnel to a virtual networking address ("ip:port").
func (d *Daemon) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return d.tun.Stack().DialContext(ctx, "tcp", addr)
}

// Close disconnects everything, stops the tunnel and removes the control socket.
func (d *Daemon) Close() error {
	if d.cancel != nil {
		d.cancel()
	}
	if d.ctl != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_ = d.ctl.Shutdown(ctx)
		cancel()
		if err := removeOwnSocket(d.dirs.Socket(), d.ctlSock); err != nil {
			d.log.Warn("control socket left in place", "err", err)
		}
	} else if d.ctlLn != nil {
		_ = d.ctlLn.Close()
		_ = removeOwnSocket(d.dirs.Socket(), d.ctlSock)
	}
	if d.ctlLock != nil {
		_ = d.ctlLock.Close() // after the socket is gone, so the next daemon finds none
	}
	d.mu.Lock()
	for n, l := range d.listeners {
		_ = l.ln.Close()
		delete(d.listeners, n)
	}
	d.mu.Unlock()
	d.closeVNet()
	d.wg.Wait()
	if d.tun != nil {
		return d.tun.Close()
	}
	return nil
}

// controlHandler serves the control socket: /local/v1/* is the daemon itself; every other /v1/ path is
// relayed to the node's control API through the tunnel, so the CLI's admin commands need no key of
// their own.
func (d *Daemon) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /local/v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Status(r.Context()))
	})
	mux.HandleFunc("POST /local/v1/connect", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Name string }
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.Name == "" {
			writeJSON(w, http.StatusBadRequest, api.Error{Error: "connect: give a resource name"})
			return
		}
		st, err := d.Connect(r.Context(), req.Name)
		if err != nil {
			code := http.StatusBadGateway
			if errors.Is(err, ErrUnknownResource) {
				code = http.StatusNotFound
			} else if strings.Contains(err.Error(), "listen on") {
				code = http.StatusConflict
			}
			writeJSON(w, code, api.Error{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /local/v1/disconnect", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Names []string }
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, api.Error{Error: "disconnect: bad request"})
			return
		}
		if err := d.Disconnect(req.Names...); err != nil {
			writeJSON(w, http.StatusBadRequest, api.Error{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("POST /local/v1/logout", func(w http.ResponseWriter, r *http.Request) {
		if err := d.Logout(r.Context()); err != nil {
			writeJSON(w, http.StatusBadGateway, api.Error{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	})
	nodeURL := &url.URL{Scheme: "http", Host: netip.AddrPortFrom(api.NodeTunnelAddress, api.APIPort).String()}
	relay := httputil.NewSingleHostReverseProxy(nodeURL)
	// No keep-alive (as api.NewClient): every node answers at the same in-tunnel address, so after a
	// change of node a pooled connection, made through the node left, would carry the next admin
	// call to a node that knows nothing of it (reset: a write failed with a 502).
	relay.Transport = &http.Transport{DialContext: d.tun.Stack().DialContext, ResponseHeaderTimeout: 30 * time.Second, DisableKeepAlives: true}
	relay.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		writeJSON(w, http.StatusBadGateway, api.Error{Error: "could not reach ferry-node through the tunnel: " + err.Error()})
	}
	mux.Handle("/v1/", relay)
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
