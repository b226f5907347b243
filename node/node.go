// Package node is ferry-node: it holds the catalog, accepts enrolled devices over WireGuard, serves
// the control API inside the tunnel, and proxies each tunnelled PostgreSQL connection to its Azure
// Database for PostgreSQL server, logging in with a managed-identity access token, and records every
// connection and query.
package node

import (
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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/health"
	"github.com/ferryhq/ferry/node/pgproxy"
	"github.com/ferryhq/ferry/node/secretstore"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/tokensource"
	"github.com/ferryhq/ferry/resource"
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
	if cfg.CatalogURL == "" && cfg.CatalogClientID == "" {
		cfg.applyEnv() // flags first
	}
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return "", fmt.Errorf("init node: %w", err)
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
			for _, f := range []string{keyFile, certFile, certKeyFile, ConfigFile, dbFile, dbFile + "-wal", dbFile + "-shm"} {
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
	db, err := openCatalogDB(ctx, dir, cfg, catalogLogin{})
	if err != nil {
		return "", fmt.Errorf("init node: %w", err)
	}
	defer db.Close()
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		return "", fmt.Errorf("init node: %w", err)
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
	db, err := openCatalogDB(ctx, dir, cfg, catalogLogin{})
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
	dir    string
	cfg    Config
	log    *slog.Logger
	db     *sql.DB   // the audit log's database (the SQLite file)
	store  *store.DB // the catalog's database
	cat    *catalog.Catalog
	audit  *audit.Log
	tokens *tokensource.Source
	// secrets reads resources' usernames and client IDs from their secret stores (Key Vault).
	secrets *secretstore.Reader
	proxy   *pgproxy.Proxy
	tun     *tunnel.Tunnel
	roots   *x509.CertPool
	// allowed is the config's allowed_server_hosts: the only servers that get an access token.
	allowed *serverhost.List
	pub     tunnel.Key
	key     tunnel.Key // the node's WireGuard private key (also keys the device status query's MAC)

	health    *health.Scheduler
	metrics   *metrics
	metricsLn net.Listener

	enrollLn net.Listener
	servers  []*http.Server
	wg       sync.WaitGroup
	ctx      context.Context // ends when the node closes; sessions run under it
	cancel   context.CancelFunc
	sessions sessions
	kickc    chan struct{}

	// peerMu orders changes of WireGuard peers: the reconcile loop's peer step and enrollment (which
	// adds a peer inside its catalog transaction), so that reconcile never removes a peer whose
	// device is about to be committed.
	peerMu sync.Mutex
	// badPeers are the devices' keys the tunnel refused, logged once each (reconcile loop only).
	badPeers map[string]bool
}

// Start opens the node's state in dir and starts its WireGuard endpoint, its enrollment endpoint,
// its control API inside the tunnel and its PostgreSQL proxy. It returns once everything listens.
// Stop it with Close.
func Start(ctx context.Context, dir string, cfg Config, logger *slog.Logger) (*Node, error) {
	cfg.applyDefaults()
	if logger == nil {
		logger = slog.Default()
	}
	n := &Node{dir: dir, cfg: cfg, log: logger, kickc: make(chan struct{}, 1)}
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
	if n.allowed, err = n.cfg.allowList(); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	n.roots, err = x509.SystemCertPool()
	if err != nil || n.roots == nil {
		n.roots = x509.NewCertPool()
	}
	for _, f := range n.cfg.CAFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("start node: read CA file: %w", err)
		}
		if !n.roots.AppendCertsFromPEM(b) {
			return fmt.Errorf("start node: CA file %s holds no PEM certificate", f)
		}
	}
	if n.tokens, err = tokensource.New(tokensource.Config{IMDSEndpoint: n.cfg.IMDSEndpoint, Timeout: time.Duration(n.cfg.TokenTimeout), Logger: n.log}); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	if n.store, err = openCatalogDB(ctx, n.dir, n.cfg, catalogLogin{tokens: n.tokens, roots: n.roots, allowed: n.allowed, log: n.log}); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	if n.cat, err = catalog.Open(ctx, n.store); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	// The audit log stays in the state dir's SQLite file (with a SQLite catalog: the same handle).
	if n.store.Dialect() == store.SQLite {
		n.db = n.store.DB
	} else if n.db, err = audit.OpenDB(filepath.Join(n.dir, dbFile)); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	if n.audit, err = audit.Open(ctx, n.db); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	n.secrets = n.newSecretReader()
	n.metrics = newMetrics(n.log, n.audit.Stats)
	n.proxy = pgproxy.New(pgproxy.Config{Tokens: countingTokens{TokenSource: n.tokens, m: n.metrics}, Audit: n.audit, Logger: n.log, LoginTimeout: time.Duration(n.cfg.LoginTimeout),
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
	// Devices become peers one by one, so that one the tunnel refuses (a key stored by an older
	// node that did not check keys) is skipped and logged instead of keeping the node down.
	devices, err := n.cat.ActiveDevices(ctx)
	if err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	peers := 0
	n.badPeers = map[string]bool{}
	for _, d := range devices {
		if err := n.addDevicePeer(d); err != nil {
			n.badPeers[d.PublicKey] = true // logged here, not again by the reconcile loop
			n.log.Error("skipping a device the tunnel cannot take; remove it with `ferry admin users devices USER --delete KEY`",
				"user", d.User, "device", d.Name, "address", d.Address, "public_key", d.PublicKey, "err", err)
			continue
		}
		peers++
	}
	n.tun.Stack().SetForwarder(1024, n.forward)

	apiLn, err := n.tun.Stack().ListenTCP(netip.AddrPortFrom(api.NodeTunnelAddress, api.APIPort))
	if err != nil {
		return fmt.Errorf("start node: control API listener: %w", err)
	}
	n.serve(n.httpServer(n.apiHandler(), maxBody), n.limitConns(apiLn, "control API"))

	cert, err := tls.LoadX509KeyPair(filepath.Join(n.dir, certFile), filepath.Join(n.dir, certKeyFile))
	if err != nil {
		return fmt.Errorf("start node: load enrollment certificate: %w", err)
	}
	ln, err := net.Listen("tcp", n.cfg.EnrollListen)
	if err != nil {
		return fmt.Errorf("start node: enrollment endpoint: %w", err)
	}
	n.enrollLn = ln
	n.serve(n.enrollServer(),
		tls.NewListener(n.limitConns(ln, "enrollment"), &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	n.wg.Add(1)
	go n.reconcileLoop()
	n.watchCatalog()
	if err := n.startHealth(ctx); err != nil {
		return err
	}
	n.log.Info("node started", "wireguard_port", n.tun.Port(), "enroll", ln.Addr().String(), "public_key", n.pub.String(), "devices", peers)
	return nil
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

func devicePeer(d catalog.Device) (tunnel.Peer, error) {
	k, err := tunnel.ParseKey(d.PublicKey)
	if err != nil {
		return tunnel.Peer{}, err
	}
	if !d.Address.Is4() || !api.TunnelSubnet.Contains(d.Address) || d.Address == api.NodeTunnelAddress {
		return tunnel.Peer{}, fmt.Errorf("device address %v is not a client address in %s", d.Address, api.TunnelSubnet)
	}
	return tunnel.Peer{PublicKey: k, AllowedIPs: []netip.Prefix{netip.PrefixFrom(d.Address, 32)}}, nil
}

// addDevicePeer makes device d a WireGuard peer.
func (n *Node) addDevicePeer(d catalog.Device) error {
	p, err := devicePeer(d)
	if err != nil {
		return err
	}
	return n.tun.AddPeer(p)
}

// target describes how the proxy reaches and logs in to resource r.
func (n *Node) target(r resource.Resource) pgproxy.Target {
	t := pgproxy.Target{
		Resource:         r.Name,
		Host:             r.Hostname,
		Port:             r.Port,
		Database:         r.Database,
		Username:         r.LoginUsername(),
		RestrictDatabase: r.RestrictDatabase,
		RedactParams:     r.RedactQueryParameters,
		ClientID:         r.ManagedIdentityClientID,
		TLSRequired:      r.TLSRequired,
		RootCAs:          n.roots,
		AllowedHosts:     n.allowed,
	}
	n.withSecrets(&t, r)
	// The same key as the health check's: lower case, no trailing dot.
	if over, ok := n.cfg.HostOverrides[strings.ToLower(strings.TrimSuffix(r.Hostname, "."))]; ok {
		if _, _, err := net.SplitHostPort(over); err != nil {
			over = net.JoinHostPort(over, strconv.Itoa(r.Port))
		}
		t.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return pgproxy.UpstreamDialer().DialContext(ctx, network, over)
		}
	} else if n.cfg.DNSServer != "" {
		d := &net.Dialer{KeepAlive: 30 * time.Second, Resolver: n.cfg.resolver()}
		t.Dial = d.DialContext
	}
	return t
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
			n.kick()
		}
	}()
}
