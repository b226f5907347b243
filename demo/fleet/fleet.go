//go:build linux

// Package fleet runs Ferry as separate processes on the hosts of a netlab lab, as a fleet runs on
// separate machines: the Azure emulator (IMDS, the PostgreSQL front and Key Vault, bound to the
// catalog host's lab address) on a catalog host, each ferry-node process on a host of its own, and
// ferry client processes (the daemon, the CLI, psql) on client hosts. The multi-host tests
// (demo/fleettest) use it. It needs what netlab needs (Linux, root, ip) and the Go toolchain to
// build the binaries (Build).
package fleet

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/netlab"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/tunnel"
)

// Ports every node listens on inside its own host (each host has its own ports, so the defaults
// never collide).
const (
	EnrollPort    = node.DefaultEnrollPort
	WireGuardPort = node.DefaultWireGuardPort
)

// Binaries are the paths of the built ferry-node and ferry (CLI, no desktop app) binaries.
type Binaries struct {
	Node, Client string
}

// Build builds ferry-node and the ferry CLI (both CGO_ENABLED=0, as shipped for the node and as
// the README's quick CLI build) into dir, from the module that holds the current directory.
func Build(ctx context.Context, dir string) (Binaries, error) {
	b := Binaries{Node: filepath.Join(dir, "ferry-node"), Client: filepath.Join(dir, "ferry")}
	if err := build(ctx, b.Node, "./cmd/ferry-node"); err != nil {
		return Binaries{}, err
	}
	if err := build(ctx, b.Client, "."); err != nil {
		return Binaries{}, err
	}
	return b, nil
}

// BuildNode builds ferry-node alone (CGO_ENABLED=0, as shipped) into dir and returns its path.
func BuildNode(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "ferry-node")
	if err := build(ctx, out, "./cmd/ferry-node"); err != nil {
		return "", err
	}
	return out, nil
}

// build builds the package pkg of the module that holds the current directory into out.
func build(ctx context.Context, out, pkg string) error {
	mod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("fleet: find the module (is the Go toolchain on PATH?): %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(mod)))
	if root == "." || root == "" || filepath.Base(strings.TrimSpace(string(mod))) != "go.mod" {
		return errors.New("fleet: find the module: the current directory is not inside Ferry's source tree")
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("fleet: go build %s: %w: %s", pkg, err, b)
	}
	return nil
}

// Catalog is the catalog host: the Azure emulator listening on the host's lab address, with the
// demo's identity, role and database made (demo.ClientID, demo.Role, demo.Database), and, after
// StartDB, a second Azure Database for PostgreSQL server (DBHostname) holding the fleet's shared
// catalog database.
type Catalog struct {
	Host *netlab.Host
	Emu  *azureemu.Emulator
	// DB is the catalog database's server (nil until StartDB).
	DB *azureemu.Emulator

	lab *netlab.Lab
	key *rsa.PrivateKey
	log *slog.Logger
}

// StartCatalog starts the emulator inside h (its listeners bind h's lab address, so only the
// lab's hosts reach them), makes the demo's principal and database, and names the server
// (Emu.Hostname) in every host's /etc/hosts. With l nil and h netlab.Here(), it runs on loopback
// (nodes reach it through their host overrides). Close stops it.
func StartCatalog(ctx context.Context, l *netlab.Lab, h *netlab.Host, log *slog.Logger) (*Catalog, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("fleet: token signing key: %w", err)
	}
	c := &Catalog{Host: h, lab: l, key: key, log: log}
	c.Emu, err = c.startEmulator(ctx, azureemu.Config{
		Users: []azureemu.Identity{{ClientID: demo.ClientID, ObjectID: demo.ObjectID, DisplayName: demo.IdentityName}, demo.CatalogIdentity},
	}, azureemu.Start)
	if err != nil {
		return nil, err
	}
	if err := c.Emu.CreatePrincipal(ctx, demo.Role, demo.ObjectID); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if err := c.Emu.CreateDatabase(ctx, demo.Database, demo.Role); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("fleet: %w", err)
	}
	return c, nil
}

// startEmulator starts an emulator inside the host with start (azureemu.Start or
// demo.StartCatalogDB), signing with the catalog host's key (so that every emulator of the host
// accepts the tokens any of their IMDS issues), and names it in the lab.
func (c *Catalog) startEmulator(ctx context.Context, cfg azureemu.Config, start func(context.Context, azureemu.Config) (*azureemu.Emulator, error)) (*azureemu.Emulator, error) {
	cfg.ListenIP = c.Host.Addr().String()
	cfg.SigningKey = c.key
	cfg.Logger = c.log.With("component", "azureemu")
	if c.Emu != nil {
		cfg.TenantID, cfg.System = c.Emu.TenantID(), c.Emu.System()
	}
	var emu *azureemu.Emulator
	err := c.Host.Do(func() error {
		var err error
		emu, err = start(ctx, cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: start the Azure emulator on %s: %w", c.Host.Name, err)
	}
	if c.lab == nil {
		return emu, nil
	}
	if err := c.lab.AddName(emu.Hostname(), c.Host); err != nil {
		_ = emu.Close()
		return nil, fmt.Errorf("fleet: %w", err)
	}
	return emu, nil
}

// StartDB starts the catalog database's server on the catalog host (demo.StartCatalogDB): it
// accepts the tokens of Emu's IMDS.
func (c *Catalog) StartDB(ctx context.Context) error {
	if c.DB != nil {
		return nil
	}
	db, err := c.startEmulator(ctx, azureemu.Config{}, demo.StartCatalogDB)
	if err != nil {
		return err
	}
	c.DB = db
	return nil
}

// CatalogURL is the shared catalog's URL for a node's catalog_url (demo.CatalogURL).
func (c *Catalog) CatalogURL() string { return demo.CatalogURL(c.DB) }

// Close stops the emulators.
func (c *Catalog) Close() error {
	var errs []error
	if c.DB != nil {
		errs = append(errs, c.DB.Close())
	}
	if c.Emu != nil {
		errs = append(errs, c.Emu.Close())
	}
	return errors.Join(errs...)
}

// NodeConfig is the config of a node on host h using the catalog host's emulator: reached at h's
// lab address, IMDS, server and vault all the emulator's at the catalog host's address, the access
// token for the emulator's server (and the catalog database's, after StartDB) only, and no DNS
// (every other name fails at once). After StartDB the node keeps its catalog in the shared catalog
// database (CatalogURL), logging in as CatalogIdentity.
func (c *Catalog) NodeConfig(h *netlab.Host) node.Config {
	cfg := demo.NodeConfig(c.Emu) // the emulator's IMDS, CA, server and vault, and no DNS
	cfg.PublicHost, cfg.EnrollListen, cfg.WireGuardPort = h.Addr().String(), h.HostPort(EnrollPort), WireGuardPort
	cfg.MetricsListen = "127.0.0.1:9108"
	if c.DB != nil {
		demo.WithCatalog(&cfg, c.DB)
	}
	return cfg
}

// Node is a ferry-node process on a host of its own.
type Node struct {
	Host *netlab.Host
	// Name is the node's name in the deployment (its lab host's name unless the config gave one).
	Name string
	// Dir is the node's state directory; AdminToken the first admin's enrollment token from init.
	Dir, AdminToken string
	bins            Binaries
	proc            *netlab.Proc
	// enroll is the enrollment endpoint clients reach (public host and port); wgPort the
	// WireGuard port.
	enroll string
	wgPort int
}

// InitNode runs `ferry-node init` for a node on h with state in dir and cfg's name (h's name when
// cfg names none), tags, addresses, IMDS endpoint, CA files, host overrides, metrics address and catalog (--catalog-url: the deployment's
// first node, which makes the catalog's first admin, whose token is AdminToken) given as flags, as
// an operator would; cfg's allowed_server_hosts, dns_server and health_interval (no flag of init sets exactly these)
// are then written into the config.json init made. Nodes that join an existing catalog come from
// JoinNode.
func InitNode(ctx context.Context, bins Binaries, h *netlab.Host, dir string, cfg node.Config) (*Node, error) {
	return initNode(ctx, bins, h, dir, cfg, true)
}

// JoinNode makes a node on h that joins the deployment whose catalog is cfg.CatalogURL with
// `ferry-node init --join`, as an operator adds a node: no catalog and no user are made (AdminToken
// is empty), and the node registers itself in the catalog when it runs. With cfg.ClusterID set it
// is a worker of that proxy cluster (--cluster), which must exist.
func JoinNode(ctx context.Context, bins Binaries, h *netlab.Host, dir string, cfg node.Config) (*Node, error) {
	if cfg.CatalogURL == "" {
		return nil, errors.New("fleet: join: the config names no catalog_url")
	}
	return initNode(ctx, bins, h, dir, cfg, false)
}

func initNode(ctx context.Context, bins Binaries, h *netlab.Host, dir string, cfg node.Config, first bool) (*Node, error) {
	_, port, err := net.SplitHostPort(cfg.EnrollListen)
	if err != nil {
		return nil, fmt.Errorf("fleet: node on %s: enroll_listen %q: %w", h.Name, cfg.EnrollListen, err)
	}
	n := &Node{Host: h, Dir: dir, bins: bins, enroll: net.JoinHostPort(cfg.PublicHost, port), wgPort: cfg.WireGuardPort}
	name := cfg.Name
	if name == "" {
		name = h.Name // every host of a lab shares the machine's host name: name the node after its lab host
	}
	n.Name = name
	args := []string{bins.Node, "init", "--state", dir, "--name", name, "--public-host", cfg.PublicHost,
		"--enroll-listen", cfg.EnrollListen, "--wireguard-port", strconv.Itoa(cfg.WireGuardPort),
		"--imds-endpoint", cfg.IMDSEndpoint, "--metrics-listen", cfg.MetricsListen}
	if len(cfg.Tags) > 0 {
		args = append(args, "--tags", api.FormatNodeTags(cfg.Tags))
	}
	for _, f := range cfg.CAFiles {
		args = append(args, "--ca-file", f)
	}
	for host, addr := range cfg.HostOverrides {
		args = append(args, "--host-override", host+"="+addr)
	}
	if cfg.CatalogURL != "" {
		// init logs in to the catalog: its token goes to a host on the allowed list only.
		for _, host := range cfg.AllowedServerHosts {
			args = append(args, "--allow-server-host", host)
		}
		args = append(args, "--catalog-client-id", cfg.CatalogClientID)
		if first {
			args = append(args, "--catalog-url", cfg.CatalogURL)
		} else {
			args = append(args, "--join", cfg.CatalogURL)
			if cfg.ClusterID != "" {
				args = append(args, "--cluster", cfg.ClusterID) // a worker of that proxy cluster
			}
		}
	}
	cmd := h.Command(ctx, args...)
	// The catalog is the flags' (or none), whatever this process's environment says.
	cmd.Env = append(os.Environ(), "FERRY_NODE_CATALOG_URL=", "FERRY_NODE_CATALOG_CLIENT_ID=")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("fleet: ferry-node init on %s: %w: %s", h.Name, err, stderr.String())
	}
	if first {
		n.AdminToken = strings.TrimSpace(string(out))
	}
	// No flag of init sets exactly these.
	patch := map[string]any{"allowed_server_hosts": cfg.AllowedServerHosts, "dns_server": cfg.DNSServer}
	if cfg.HealthInterval > 0 {
		patch["health_interval"] = cfg.HealthInterval
	}
	if err := patchConfig(filepath.Join(dir, node.ConfigFile), patch); err != nil {
		return nil, fmt.Errorf("fleet: node on %s: %w", h.Name, err)
	}
	return n, nil
}

// Endpoint is how a client reaches the node: its WireGuard public key and endpoint, its enrollment
// URL and the SHA-256 of that endpoint's certificate (read from the node's state directory).
func (n *Node) Endpoint() (client.State, error) {
	b, err := os.ReadFile(filepath.Join(n.Dir, "wireguard.key"))
	if err != nil {
		return client.State{}, fmt.Errorf("fleet: node key: %w", err)
	}
	key, err := tunnel.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return client.State{}, fmt.Errorf("fleet: node key: %w", err)
	}
	pemBytes, err := os.ReadFile(filepath.Join(n.Dir, "enroll.crt"))
	if err != nil {
		return client.State{}, fmt.Errorf("fleet: node certificate: %w", err)
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return client.State{}, errors.New("fleet: node certificate: no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return client.State{}, fmt.Errorf("fleet: node certificate: %w", err)
	}
	return client.State{
		NodePublicKey:     key.PublicKey().String(),
		WireGuardEndpoint: net.JoinHostPort(n.PublicHost(), strconv.Itoa(n.wgPort)),
		NodeURL:           "https://" + n.enroll,
		NodeCertSHA256:    api.CertSHA256(cert),
	}, nil
}

// patchConfig sets keys of the JSON object in path, keeping the rest and the file's mode.
func patchConfig(path string, set map[string]any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("read config %s: %w", path, err)
	}
	for k, v := range set {
		m[k] = v
	}
	if b, err = json.MarshalIndent(m, "", "  "); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// Start runs `ferry-node run` inside the node's host and waits until its enrollment endpoint
// accepts connections from the host from (another host of the lab: the check crosses the bridge;
// or netlab.Here(), attached to the lab or on loopback).
func (n *Node) Start(ctx context.Context, from *netlab.Host) error {
	if n.proc != nil && !isDone(n.proc) {
		return fmt.Errorf("fleet: node on %s is running", n.Host.Name)
	}
	cmd := n.Host.Command(context.Background(), n.bins.Node, "run", "--state", n.Dir)
	// Killed with the process that started it, whatever ends that; in a process group of its own,
	// so that a terminal's Ctrl-C reaches the process that started it, which stops it in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	p, err := netlab.Start(cmd)
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	n.proc = p
	if err := p.WaitDial(ctx, from, n.enroll); err != nil {
		p.Kill()
		return fmt.Errorf("fleet: node on %s not ready: %w\n%s", n.Host.Name, err, p.Output())
	}
	return nil
}

// Stop stops the node with SIGTERM (SIGKILL after 10 s; the error says so).
func (n *Node) Stop() error {
	if n.proc == nil {
		return nil
	}
	return n.proc.Stop(syscall.SIGTERM, 10*time.Second)
}

// Kill kills the node at once (kill -9), as a crashed VM.
func (n *Node) Kill() {
	if n.proc != nil {
		n.proc.Kill()
	}
}

// Pid is the process ID of the node's current (or last) process; 0 before Start.
func (n *Node) Pid() int {
	if n.proc == nil {
		return 0
	}
	return n.proc.Pid()
}

// EnrollAddr is the enrollment endpoint's address as clients reach it (public host and port).
func (n *Node) EnrollAddr() string { return n.enroll }

// PublicHost is the name or address clients reach the node at.
func (n *Node) PublicHost() string {
	host, _, _ := net.SplitHostPort(n.enroll)
	return host
}

// WireGuardPort is the node's WireGuard UDP port.
func (n *Node) WireGuardPort() int { return n.wgPort }

// Done is closed when the node's current process has exited (nil before Start).
func (n *Node) Done() <-chan struct{} {
	if n.proc == nil {
		return nil
	}
	return n.proc.Done()
}

// Log is what the node's current (or last) process has logged.
func (n *Node) Log() string {
	if n.proc == nil {
		return ""
	}
	return n.proc.Output()
}

// EnrollToken issues an enrollment token for user with `ferry-node enroll-token`.
func (n *Node) EnrollToken(ctx context.Context, user string) (string, error) {
	out, err := n.Host.Exec(ctx, n.bins.Node, "enroll-token", user, "--state", n.Dir)
	if err != nil {
		return "", fmt.Errorf("fleet: enroll token for %s: %w", user, err)
	}
	return strings.TrimSpace(out), nil
}

func isDone(p *netlab.Proc) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}

// Client is a device: ferry CLI processes and psql inside a host, with the client's config and
// runtime directories.
type Client struct {
	Host   *netlab.Host
	Dirs   client.Dirs
	bins   Binaries
	daemon *netlab.Proc
}

// NewClient is a client on h keeping its state under dir.
func NewClient(bins Binaries, h *netlab.Host, dir string) *Client {
	return &Client{Host: h, Dirs: client.Dirs{Config: filepath.Join(dir, "config"), Runtime: filepath.Join(dir, "run")}, bins: bins}
}

func (c *Client) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := c.Host.Command(ctx, append([]string{c.bins.Client}, args...)...)
	cmd.Env = append(os.Environ(), client.EnvConfigDir+"="+c.Dirs.Config, client.EnvRuntimeDir+"="+c.Dirs.Runtime)
	return cmd
}

// Ferry runs the ferry CLI with args inside the client's host and returns its standard output;
// the error carries its standard error.
func (c *Client) Ferry(ctx context.Context, args ...string) (string, error) {
	cmd := c.command(ctx, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("fleet: ferry %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// StartDaemon runs `ferry daemon` inside the client's host and waits until `ferry status` says
// the node is reachable.
func (c *Client) StartDaemon(ctx context.Context) error {
	cmd := c.command(context.Background(), "daemon")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p, err := netlab.Start(cmd)
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	c.daemon = p
	for {
		_, err := c.Ferry(ctx, "status")
		if err == nil {
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("fleet: client daemon on %s exited: %v\n%s", c.Host.Name, p.Err(), p.Output())
		case <-ctx.Done():
			p.Kill()
			return fmt.Errorf("fleet: client daemon on %s not ready: %w (last: %v)\n%s", c.Host.Name, ctx.Err(), err, p.Output())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// StopDaemon stops the daemon with SIGTERM (SIGKILL after 10 s; the error says so).
func (c *Client) StopDaemon() error {
	if c.daemon == nil {
		return nil
	}
	return c.daemon.Stop(syscall.SIGTERM, 10*time.Second)
}

// DaemonLog is what the daemon has logged.
func (c *Client) DaemonLog() string {
	if c.daemon == nil {
		return ""
	}
	return c.daemon.Output()
}

// Psql runs psql with the connection string conn and one query inside the client's host and
// returns its trimmed output (unaligned, tuples only; psql's error text on failure).
func (c *Client) Psql(ctx context.Context, conn, query string) (string, error) {
	cmd := c.Host.Command(ctx, "psql", conn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Control is the client's daemon control (client.Control: status, connect, and the node API
// through the node in use), reached through the daemon's socket in the client's runtime directory.
func (c *Client) Control() *client.Control { return client.NewControl(c.Dirs) }

// Session is a psql process that holds one session open inside a client's host, reading its
// statements from a pipe (Send) with verbose errors (SQLSTATE shown).
type Session struct {
	proc  *netlab.Proc
	stdin io.WriteCloser
}

// StartSession starts psql with the connection string conn inside the client's host. Close ends it.
func (c *Client) StartSession(conn string) (*Session, error) {
	cmd := c.Host.Command(context.Background(), "psql", conn, "-X", "-A", "-t", "-v", "VERBOSITY=verbose")
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("fleet: psql session: %w", err)
	}
	p, err := netlab.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("fleet: psql session: %w", err)
	}
	return &Session{proc: p, stdin: stdin}, nil
}

// Send writes one statement (or psql meta-command) line to the session's psql.
func (s *Session) Send(line string) error {
	if _, err := io.WriteString(s.stdin, line+"\n"); err != nil {
		return fmt.Errorf("fleet: psql session: %w", err)
	}
	return nil
}

// WaitOutput waits until psql has printed want (or has exited, or ctx ends) and reports whether it
// has.
func (s *Session) WaitOutput(ctx context.Context, want string) bool {
	for {
		if strings.Contains(s.proc.Output(), want) {
			return true
		}
		select {
		case <-ctx.Done():
			return strings.Contains(s.proc.Output(), want)
		case <-s.proc.Done():
			return strings.Contains(s.proc.Output(), want)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Output is what psql has printed so far (standard output and error).
func (s *Session) Output() string { return s.proc.Output() }

// Done is closed when psql has exited.
func (s *Session) Done() <-chan struct{} { return s.proc.Done() }

// Close ends psql (end of input, then SIGKILL after 5 s).
func (s *Session) Close() {
	_ = s.stdin.Close()
	select {
	case <-s.proc.Done():
	case <-time.After(5 * time.Second):
		s.proc.Kill()
	}
}

// Pgbench runs pgbench with args and the connection string conn inside the client's host and
// returns its output (standard output and error) when it exits.
func (c *Client) Pgbench(ctx context.Context, conn string, args ...string) (string, error) {
	cmd := c.Host.Command(ctx, append(append([]string{"pgbench"}, args...), conn)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return string(out), err
}
