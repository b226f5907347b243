// Package node is ferry-node: it holds the catalog, accepts enrolled devices over WireGuard, serves
// the control API inside the tunnel, and proxies each tunnelled PostgreSQL connection to its Azure
// Database for PostgreSQL server, logging in with a managed-identity access token, and records every
// connection and query.
package node

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/catcache"
	"github.com/ferryhq/ferry/node/controlapi"
	"github.com/ferryhq/ferry/node/health"
	"github.com/ferryhq/ferry/node/pgproxy"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/node/session"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/tokensource"
	"github.com/ferryhq/ferry/node/upstream"
	"github.com/ferryhq/ferry/tunnel"
)

// Files in the state directory.
const (
	keyFile     = "wireguard.key"
	certFile    = "enroll.crt"
	certKeyFile = "enroll.key"
	dbFile      = "ferry.db"
)

// DefaultAdmin is the name of the first admin user created by Init.
const DefaultAdmin = "admin"

// Init creates a node's state in dir: its WireGuard private key, the TLS certificate of its enrollment
// endpoint, the catalog with a first admin user, and cfg as dir/config.json. It returns a single-use
// enrollment token for that admin ("" when the enrollment port is 0, picked at each start). It
// refuses a config that does not validate and a dir that already holds a node; a failed Init leaves
// no files behind.
func Init(ctx context.Context, dir string, cfg Config, adminName string) (tok string, err error) {
	return initNode(ctx, dir, cfg, false, adminName)
}

// Join creates the state of a new node of an existing deployment in dir: its WireGuard key, its
// enrollment certificate, its ID and cfg as dir/config.json. cfg.CatalogURL names the deployment's
// catalog, which must already hold a deployment (made by Init); no user is created. The node
// registers itself when it starts. A failed Join leaves no files behind.
func Join(ctx context.Context, dir string, cfg Config) error {
	if cfg.CatalogURL == "" {
		return errors.New("join a deployment: give the catalog's URL (--join sqlite:/path/to/ferry.db or postgres://HOST/DATABASE)")
	}
	_, err := initNode(ctx, dir, cfg, true, "")
	return err
}

func initNode(ctx context.Context, dir string, cfg Config, join bool, adminName string) (tok string, err error) {
	// Flags first: the environment fills in each catalog setting the flags left empty.
	var env Config
	env.applyEnv()
	cfg.CatalogURL = cmp.Or(cfg.CatalogURL, env.CatalogURL)
	cfg.CatalogClientID = cmp.Or(cfg.CatalogClientID, env.CatalogClientID)
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	if !join && cfg.ClusterID != "" {
		return "", errors.New("init node: --cluster is for a node joining a deployment (--join CATALOG_URL): create the deployment first, then its proxy clusters (`ferry admin clusters add NAME`)")
	}
	if adminName == "" {
		adminName = DefaultAdmin
	}
	if _, err := os.Stat(filepath.Join(dir, keyFile)); err == nil {
		return "", fmt.Errorf("init node: %s already holds a node; use another --state directory", dir)
	}
	if err := os.MkdirAll(dir, stateDirMode); err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	if err := checkStateDirEmpty(dir); err != nil { // it is about to become 0700
		return "", fmt.Errorf("init node: %w", err)
	}
	if err := secureStateDir(dir, slog.Default()); err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	if err := checkStateDirEntries(dir); err != nil { // private now: nothing can be added any more
		return "", fmt.Errorf("init node: %w", err)
	}
	// A failed init leaves nothing behind, so that it can simply be run again.
	defer func() {
		if err != nil {
			for _, f := range []string{keyFile, certFile, certKeyFile, ConfigFile, nodeFile, dbFile, dbFile + "-wal", dbFile + "-shm"} {
				_ = os.Remove(filepath.Join(dir, f))
			}
			_ = os.Remove(dir) // only if empty
		}
	}()
	key, err := tunnel.GenerateKey()
	if err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, keyFile), []byte(key.String()+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("init node: write key: %w", err)
	}
	if err := writeSelfSignedCert(dir, cfg.PublicHost); err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	if err := SaveConfig(filepath.Join(dir, ConfigFile), cfg); err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	if _, err := writeNodeIdentity(dir); err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	db, err := openCatalogDB(ctx, dir, cfg, catalogLogin{mustExist: join})
	if err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	defer db.Close()
	if join {
		ok, err := catalog.Exists(ctx, db)
		if err != nil {
			return "", fmt.Errorf("init node: %w", err)
		}
		if !ok {
			return "", fmt.Errorf("init node: the catalog at %s holds no deployment yet (it is not a Ferry catalog; nothing was written to it); check the URL, or create the deployment with `ferry-node init` (without --join) on the first node", store.Redact(cfg.CatalogURL))
		}
	}
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	users, err := cat.Users(ctx)
	if err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	switch {
	case join && len(users) == 0:
		return "", fmt.Errorf("init node: the catalog at %s holds no deployment yet; create it with `ferry-node init` (without --join) on the first node", store.Redact(cfg.CatalogURL))
	case join && cfg.ClusterID != "":
		// A worker's cluster must exist; it is refused here rather than at the node's first start.
		if _, err := cat.Cluster(ctx, cfg.ClusterID); err != nil {
			return "", fmt.Errorf("init node: --cluster: %w", err)
		}
		return "", nil
	case join:
		return "", nil
	case len(users) > 0:
		return "", fmt.Errorf("init node: the catalog at %s already holds a deployment; add this node to it with `ferry-node init --join %s`", store.Redact(cfg.CatalogURL), store.Redact(cfg.CatalogURL))
	}
	if err := cat.AddUser(ctx, adminName, true); err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	if _, port, _ := net.SplitHostPort(cfg.EnrollListen); port == "0" {
		return "", nil // the port is picked at start: tokens come from the running node (Node.EnrollToken)
	}
	return enrollToken(ctx, dir, cfg, cat, adminName)
}

// EnrollToken issues a new single-use enrollment token for an existing user of the node in dir.
func EnrollToken(ctx context.Context, dir string, cfg Config, user string) (string, error) {
	cfg.applyDefaults()
	db, err := openCatalogDB(ctx, dir, cfg, catalogLogin{mustExist: true})
	if err != nil {
		return "", fmt.Errorf("issue enrollment token: %w", err)
	}
	defer db.Close()
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		return "", fmt.Errorf("issue enrollment token: %w", err)
	}
	return enrollToken(ctx, dir, cfg, cat, user)
}

func enrollToken(ctx context.Context, dir string, cfg Config, cat *catalog.Catalog, user string) (string, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, certKeyFile))
	if err != nil {
		return "", fmt.Errorf("issue enrollment token: load certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return "", fmt.Errorf("issue enrollment token: %w", err)
	}
	u, err := cfg.EnrollURL()
	if err != nil {
		return "", fmt.Errorf("issue enrollment token: %w", err)
	}
	if strings.HasSuffix(u, ":0") {
		return "", errors.New("issue enrollment token: the node's enroll_listen has port 0 (a port picked at each start), so a token cannot name it; issue tokens through the running node with `ferry admin users enroll USER`")
	}
	if _, err := cat.UserInfo(ctx, user); err != nil {
		return "", fmt.Errorf("issue enrollment token: no user %q (add it with `ferry admin users add %s`)", user, user)
	}
	secret, err := cat.CreateEnrollToken(ctx, user, time.Duration(cfg.EnrollTokenTTL))
	if err != nil {
		return "", err
	}
	return api.EnrollToken{URL: u, CertSHA256: api.CertSHA256(leaf), Secret: secret}.Encode(), nil
}

func writeSelfSignedCert(dir, host string) error {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate TLS key: %w", err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "ferry-node " + host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	} else if host != "" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return fmt.Errorf("create TLS certificate: %w", err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return fmt.Errorf("encode TLS key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, certFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("write TLS certificate: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, certKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return fmt.Errorf("write TLS key: %w", err)
	}
	return nil
}

// Node is a running ferry-node.
type Node struct {
	id    string // the node's ID in the catalog (node.json)
	dir   string
	cfg   Config
	log   *slog.Logger
	db    *sql.DB   // the audit log's database (the SQLite file)
	store *store.DB // the catalog's database
	cat   *catalog.Catalog
	// authz is the read cache of what the node authorises with (node/catcache): admission,
	// reconcile and the control API's caller lookup read through it, so that a catalog outage does
	// not end sessions or lock known devices out.
	authz  *catcache.Cache
	audit  *audit.Log
	tokens *tokensource.Source
	// up is how the node reaches servers: allow-list, CA pool, host overrides, credentials.
	up    *upstream.Upstream
	proxy *pgproxy.Proxy
	tun   *tunnel.Tunnel
	pub   tunnel.Key
	key   tunnel.Key // the node's WireGuard private key (also keys the device status query's MAC)

	health    *health.Scheduler
	api       *controlapi.Server // the control API and the enrollment endpoint
	metrics   *metrics
	metricsLn net.Listener

	enrollLn   net.Listener
	enrollCert tls.Certificate
	registered bool         // the node's record is in the catalog: Close marks it stopped
	startedAt  atomic.Int64 // Unix seconds this process registered the node's record at
	// self is the node's own record as it last knew it: from its config until it registers, then
	// as the catalog stored it. Admission uses it when the node list lacks the node (session.Config.Self).
	self    atomic.Pointer[catalog.Node]
	servers []*http.Server
	wg      sync.WaitGroup
	ctx     context.Context // ends when the node closes; sessions run under it
	cancel  context.CancelFunc
	// sessions admits tunnelled flows, keeps the open sessions and ends those the catalog no
	// longer allows, and keeps the tunnel's peers in line with the catalog's devices.
	sessions *session.Manager
}

// Start opens the node's state in dir and starts its WireGuard endpoint, its enrollment endpoint,
// its control API inside the tunnel and its PostgreSQL proxy. It returns once everything listens.
// Stop it with Close.
func Start(ctx context.Context, dir string, cfg Config, logger *slog.Logger) (*Node, error) {
	cfg.applyDefaults()
	if logger == nil {
		logger = slog.Default()
	}
	n := &Node{dir: dir, cfg: cfg, log: logger}
	n.ctx, n.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := n.start(n.ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	if _, err := os.Lstat(filepath.Join(n.dir, keyFile)); err != nil {
		return fmt.Errorf("start node: read WireGuard key (run `ferry-node init --state %s` first): %w", n.dir, err)
	}
	if err := secureStateDir(n.dir, n.log); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	keyText, err := os.ReadFile(filepath.Join(n.dir, keyFile))
	if err != nil {
		return fmt.Errorf("start node: read WireGuard key (run `ferry-node init --state %s` first): %w", n.dir, err)
	}
	key, err := tunnel.ParseKey(strings.TrimSpace(string(keyText)))
	if err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	n.key, n.pub = key, key.PublicKey()
	allowed, err := n.cfg.allowList()
	if err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	roots, err := upstream.RootPool(n.cfg.CAFiles)
	if err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	if n.id, err = nodeID(n.dir); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	if n.tokens, err = tokensource.New(tokensource.Config{IMDSEndpoint: n.cfg.IMDSEndpoint, Timeout: time.Duration(n.cfg.TokenTimeout), Logger: n.log}); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	// A node starts only with a snapshot of the catalog: without one it could authorise nothing.
	if n.store, err = openCatalogDB(ctx, n.dir, n.cfg, catalogLogin{tokens: n.tokens, roots: roots, allowed: allowed, log: n.log}); err != nil {
		return catalogStartError(err)
	}
	if n.cat, err = catalog.Open(ctx, n.store); err != nil {
		return catalogStartError(err)
	}
	n.authz = catcache.New(n.cat, n.log)
	if err := n.authz.Refresh(ctx); err != nil {
		return catalogStartError(fmt.Errorf("read the catalog: %w", err))
	}
	// The audit log lives with the catalog (a fleet's shared PostgreSQL: one audit trail); the spool
	// in the state dir keeps records while that database refuses them (node/audit, spool.go).
	n.db = n.store.DB
	if n.audit, err = audit.OpenStore(ctx, n.store, audit.Options{SpoolPath: filepath.Join(n.dir, "audit-spool.db"), Logger: n.log}); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	n.metrics = newMetrics(n.log, n.audit.Stats)
	n.metrics.reg.MustRegister(catalogMetrics(n.authz.Status)...)
	n.up = upstream.New(n.upstreamConfig(allowed, roots, n.cat, n.tokens, countingTokens{TokenSource: n.tokens, m: n.metrics}))
	n.proxy = pgproxy.New(pgproxy.Config{Tokens: countingTokens{TokenSource: n.tokens, m: n.metrics}, Audit: proxyAudit{n.audit}, NodeID: n.id, Logger: n.log, LoginTimeout: time.Duration(n.cfg.LoginTimeout),
		OnPanic: n.metrics.panics.Inc, TestHook: n.cfg.SessionTestHook})

	n.tun, err = tunnel.New(ctx, tunnel.Config{
		PrivateKey:  key,
		ListenPort:  n.cfg.WireGuardPort,
		Addresses:   []netip.Addr{api.NodeTunnelAddress},
		Promiscuous: true,
		Logger:      n.log,
		Keepalive:   tunnel.KeepaliveWithin(time.Duration(n.cfg.DeadClientTimeout)),
	})
	if err != nil {
		return fmt.Errorf("start node: WireGuard: %w", err)
	}
	kind := api.NodeKindGateway
	if n.cfg.ClusterID != "" {
		kind = api.NodeKindWorker
	}
	n.self.Store(&catalog.Node{ID: n.id, Name: n.cfg.Name, Kind: kind, ClusterID: n.cfg.ClusterID, Tags: n.cfg.Tags})
	n.sessions = session.New(n.ctx, session.Config{
		Catalog: n.cat,
		Lookup:  n.authz,
		NodeID:  n.id,
		Self:    func() catalog.Node { return *n.self.Load() },
		Peers:   n.tun,
		Target:  n.up.Target,
		Serve: func(ctx context.Context, c net.Conn, t pgproxy.Target, s pgproxy.Session) {
			n.metrics.session(c, func(c net.Conn) { n.proxy.Serve(ctx, c, t, s) })
		},
		Logger: n.log,
	})
	peers, err := n.sessions.AddPeers(ctx)
	if err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	n.tun.Stack().SetForwarder(1024, n.sessions.Admit)

	apiLn, err := n.tun.Stack().ListenTCP(netip.AddrPortFrom(api.NodeTunnelAddress, api.APIPort))
	if err != nil {
		return fmt.Errorf("start node: control API listener: %w", err)
	}
	n.health = n.newHealth()
	n.api = controlapi.New(controlapi.Config{
		Catalog:        n.cat,
		Authz:          n.authz,
		Audit:          n.audit,
		Health:         n.health,
		Sessions:       n.sessions,
		Tunnel:         n.tun,
		CheckHost:      n.up.CheckHost,
		EnrollToken:    n.EnrollToken,
		EnrollTokenTTL: time.Duration(n.cfg.EnrollTokenTTL),
		PublicHost:     n.cfg.PublicHost,
		Key:            n.key,
		Limits: controlapi.Limits{
			ReadTimeout:       time.Duration(n.cfg.HTTPReadTimeout),
			WriteTimeout:      time.Duration(n.cfg.HTTPWriteTimeout),
			IdleTimeout:       time.Duration(n.cfg.HTTPIdleTimeout),
			MaxConns:          n.cfg.HTTPMaxConns,
			MaxConnsPerSource: n.cfg.HTTPMaxConnsPerSource,
		},
		Logger: n.log,
	})
	n.serve(n.api.APIServer(), n.api.LimitConns(apiLn, "control API"))

	cert, err := tls.LoadX509KeyPair(filepath.Join(n.dir, certFile), filepath.Join(n.dir, certKeyFile))
	if err != nil {
		return fmt.Errorf("start node: load enrollment certificate: %w", err)
	}
	ln, err := net.Listen("tcp", n.cfg.EnrollListen)
	if err != nil {
		return fmt.Errorf("start node: enrollment endpoint: %w", err)
	}
	n.enrollLn, n.enrollCert = ln, cert
	if err := n.register(ctx); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	n.registered = true
	n.wg.Add(1)
	go n.heartbeatLoop()
	n.serve(n.api.EnrollServer(),
		tls.NewListener(n.api.LimitConns(ln, "enrollment"), &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.sessions.Run(n.ctx)
	}()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.authz.Run(n.ctx, catcache.Interval)
	}()
	n.watchCatalog()
	if err := n.startHealth(ctx); err != nil {
		return err
	}
	n.log.Info("node started", "id", n.id, "name", n.cfg.Name, "wireguard_port", n.tun.Port(), "enroll", ln.Addr().String(), "public_key", n.pub.String(), "devices", peers)
	return nil
}

// proxyAudit adapts the audit log to what the proxy needs of it (pgproxy.AuditLog).
type proxyAudit struct{ *audit.Log }

func (a proxyAudit) QueryRecorder(id int64, onFail func(error)) pgproxy.QueryRecorder {
	return a.Log.Recorder(id, onFail)
}

func (n *Node) serve(srv *http.Server, ln net.Listener) {
	n.servers = append(n.servers, srv)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// upstreamConfig is how the node reaches servers, from its config: the allow-list and CA pool (parsed
// and read at start), host overrides, DNS server, token source and the catalog's secret stores.
func (n *Node) upstreamConfig(allowed *serverhost.List, roots *x509.CertPool, stores upstream.SecretStores, tokens *tokensource.Source, counted upstream.TokenSource) upstream.Config {
	return upstream.Config{
		AllowedHosts:       allowed,
		RootCAs:            roots,
		HostOverrides:      n.cfg.HostOverrides,
		DNSServer:          n.cfg.DNSServer,
		Tokens:             counted,
		Credential:         tokens.Credential,
		SecretStores:       stores,
		SecretTTL:          time.Duration(n.cfg.SecretTTL),
		SecretMaxStaleness: time.Duration(n.cfg.SecretMaxStaleness),
		Timeout:            time.Duration(n.cfg.TokenTimeout),
		Logger:             n.log,
	}
}

// EnrollToken issues a single-use enrollment token for an existing user, naming the enrollment
// endpoint's bound port (useful when the config asked for port 0).
func (n *Node) EnrollToken(ctx context.Context, user string) (string, error) {
	cfg := n.cfg
	_, port, _ := net.SplitHostPort(n.enrollLn.Addr().String())
	cfg.EnrollListen = net.JoinHostPort("", port)
	return enrollToken(ctx, n.dir, cfg, n.cat, user)
}

// WireGuardPort returns the bound WireGuard UDP port.
func (n *Node) WireGuardPort() uint16 { return n.tun.Port() }

// PublicKey returns the node's WireGuard public key.
func (n *Node) PublicKey() tunnel.Key { return n.pub }

// EnrollAddr returns the enrollment endpoint's bound address.
func (n *Node) EnrollAddr() net.Addr { return n.enrollLn.Addr() }

// Audit returns the node's audit log.
func (n *Node) Audit() *audit.Log { return n.audit }

// CatalogStatus is the node's view of its catalog: whether it answers, since when it does not,
// and the age of the snapshot the node authorises from meanwhile (node/catcache).
func (n *Node) CatalogStatus() catcache.Status { return n.authz.Status() }

// Catalog returns the node's catalog.
func (n *Node) Catalog() *catalog.Catalog { return n.cat }

// Tunnel returns the node's WireGuard tunnel.
func (n *Node) Tunnel() *tunnel.Tunnel { return n.tun }

// Close stops every listener and session and closes the state. It is safe to call more than once.
func (n *Node) Close() error {
	if n.cancel != nil {
		n.cancel()
	}
	if n.health != nil {
		n.health.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range n.servers {
		_ = s.Shutdown(ctx)
	}
	n.servers = nil
	n.wg.Wait()
	if n.tun != nil {
		_ = n.tun.Close()
		n.tun = nil
	}
	n.markStopped()
	n.registered = false
	if n.audit != nil {
		_ = n.audit.Close()
		n.audit = nil
	}
	var err error
	if n.db != nil && (n.store == nil || n.db != n.store.DB) {
		err = n.db.Close()
	}
	n.db = nil
	if n.store != nil {
		if cerr := n.store.Close(); err == nil {
			err = cerr
		}
		n.store = nil
	}
	return err
}

// watchCatalog runs the reconcile loop at once when another node changes a shared catalog (its
// change feed), besides the loop's own ticks; on SQLite this node's own admin changes kick it
// already. When the feed cannot start, the ticks remain.
func (n *Node) watchCatalog() {
	if n.store.Dialect() != store.Postgres {
		return
	}
	ch, err := n.cat.Watch(n.ctx)
	if err != nil {
		n.log.Warn("catalog change feed unavailable; other nodes' changes apply at the next reconcile tick", "err", err)
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for range ch {
			n.sessions.Kick()
			n.authz.Kick()
		}
	}()
}
