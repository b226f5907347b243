// Package health checks that ferry-node can reach and log in to a resource's Azure Database for
// PostgreSQL server, step by step (resolve the hostname, open TCP, negotiate verified TLS, get an
// access token for the resource's managed identity, log in, run SELECT 1), and says for a failure
// which step failed, why, and what to do. A Scheduler runs the checks of every resource on creation,
// on change, on demand and at an interval, with bounded concurrency, and keeps the last results.
package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/node/tokensource"
	"github.com/ferryhq/ferry/resource"
)

// TokenSource hands out Microsoft Entra ID access tokens for Azure Database for PostgreSQL for a
// managed identity; clientID "" means the system-assigned identity. *tokensource.Source is one.
type TokenSource interface {
	Token(ctx context.Context, clientID string) (token string, expiresOn time.Time, err error)
}

// Resolver looks up a hostname's addresses; *net.Resolver is one.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Defaults of Config.
const (
	DefaultStepTimeout = 10 * time.Second
	DefaultTimeout     = 30 * time.Second
)

// Config configures a Checker.
type Config struct {
	Tokens TokenSource
	// RootCAs verify the server certificates (verify-full); nil = the system pool.
	RootCAs *x509.CertPool
	// HostOverrides maps a lower-case hostname to the "ip[:port]" dialled instead (the node config's
	// host_overrides); TLS still verifies the certificate for the hostname.
	HostOverrides map[string]string
	// AllowedHosts are the servers that may receive an access token (the node config's
	// allowed_server_hosts); a check of a resource whose hostname is not on it fails at its first
	// step, before any lookup. nil = serverhost.Default(), the Azure Database for PostgreSQL domains.
	AllowedHosts *serverhost.List
	// Resolver resolves hostnames without an override; nil = net.DefaultResolver.
	Resolver Resolver
	// StepTimeout bounds each step; default DefaultStepTimeout.
	StepTimeout time.Duration
	// Timeout bounds a whole check; default DefaultTimeout.
	Timeout time.Duration
	// Secrets reads the username and client ID of a resource with a secret store (the "secret
	// store" step); nil fails that step. An error that has a FixHint() string method gives the
	// step's hint.
	Secrets func(ctx context.Context, r resource.Resource) (SecretCredentials, error)
}

// SecretCredentials is what the "secret store" step read. Username is a secret value: it never
// appears in a step's detail, error or hint, where Label stands for it.
type SecretCredentials struct {
	Username string // as read, before LoginUsername's formatting
	ClientID string // "" = system-assigned
	Label    string // e.g. "secret se-1234/pg-user", shown instead of the username
	// ClientIDLabel, when the client ID was read from the store, is shown instead of it.
	ClientIDLabel string
	Detail        string // e.g. "read pg-user (version 0a1b...) from Key Vault https://x.vault.azure.net/"
}

// Checker runs health checks. It is safe for concurrent use.
type Checker struct {
	cfg Config
}

// NewChecker returns a Checker.
func NewChecker(cfg Config) *Checker {
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.AllowedHosts == nil {
		cfg.AllowedHosts = serverhost.Default()
	}
	if cfg.StepTimeout <= 0 {
		cfg.StepTimeout = DefaultStepTimeout
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	return &Checker{cfg: cfg}
}

// Steps is the order of the steps of a check. A resource with a secret store has one more,
// api.StepSecretStore, just before api.StepToken (its client ID may come from the store).
var Steps = []string{api.StepResolve, api.StepTCP, api.StepTLS, api.StepToken, api.StepLogin, api.StepQuery}

// StepFunc is called as each step ends (for interactive output); nil is allowed.
type StepFunc func(step api.HealthStep)

// Check runs every step against r's server and returns the result. It stops at the first failed step;
// the result then names the step, the error and a hint. ctx and Config.Timeout bound the whole check,
// Config.StepTimeout each step.
func (c *Checker) Check(ctx context.Context, r resource.Resource, onStep StepFunc) api.Health {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	start := time.Now()
	h := api.Health{Resource: r.Name, Checked: true, Time: start, State: api.HealthUnhealthy}
	run := &run{c: c, r: r, host: strings.ToLower(strings.TrimSuffix(r.Hostname, "."))}
	defer run.close()
	type step struct {
		name string
		f    func(context.Context) (string, error)
	}
	steps := []step{{api.StepResolve, run.resolve}, {api.StepTCP, run.tcp}, {api.StepTLS, run.tls}}
	if r.SecretStoreID != "" {
		steps = append(steps, step{api.StepSecretStore, run.secret})
	}
	steps = append(steps, step{api.StepToken, run.token}, step{api.StepLogin, run.login}, step{api.StepQuery, run.query})
	for _, sf := range steps {
		name, f := sf.name, sf.f
		sctx, scancel := context.WithTimeout(ctx, c.cfg.StepTimeout)
		t0 := time.Now()
		detail, err := f(sctx)
		if err != nil && sctx.Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w after %s: %w", context.DeadlineExceeded, time.Since(t0).Round(time.Millisecond), err)
		}
		scancel()
		st := api.HealthStep{Name: name, OK: err == nil, DurationMS: ms(time.Since(t0)), Detail: run.scrub(detail)}
		if err != nil {
			st.Error = run.scrub(oneLine(tokensource.Brief(err))) // IMDS's multi-line dump stays in the token source's log
		}
		h.Steps = append(h.Steps, st)
		if onStep != nil {
			onStep(st)
		}
		if err != nil {
			h.FailedStep = name
			h.Error = st.Error
			h.Hint = run.scrub(run.hint(name, err))
			break
		}
	}
	if h.FailedStep == "" {
		h.State = api.HealthHealthy
	}
	h.DurationMS = ms(time.Since(start))
	return h
}

// oneLine folds a multi-line error (azidentity's include the IMDS response) into one line, dropping
// blank and ruler lines.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.Trim(l, "-") == "" {
			continue
		}
		parts = append(parts, l)
	}
	return strings.Join(parts, " ")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// run is the state of one check as it moves through the steps.
type run struct {
	c      *Checker
	r      resource.Resource
	host   string // lower-case hostname without a trailing dot
	addr   string // "ip:port" dialled
	conn   net.Conn
	tlsCfg *tls.Config // set once the server's certificate verified for host; login needs it
	tok    string
	pc     *pgconn.PgConn
	// secrets are the texts (the username read from the secret store, and as formatted for the
	// login) that scrub replaces with label in everything a check reports.
	secrets map[string]string // value -> label
}

// scrub replaces a username read from a secret store with its label, and hides the role a server
// names as the one it expected.
func (x *run) scrub(s string) string {
	if x.secrets != nil {
		// The role the server expected is the value the secret should hold.
		s = resource.HideServerNamedRoles(s)
	}
	for v, label := range x.secrets {
		if v != "" {
			s = strings.ReplaceAll(s, v, label)
		}
	}
	return s
}

// secret reads the resource's username and client ID from its secret store.
func (x *run) secret(ctx context.Context) (string, error) {
	if x.c.cfg.Secrets == nil {
		return "", errors.New("the node cannot read secret stores")
	}
	cr, err := x.c.cfg.Secrets(ctx, x.r)
	if err != nil {
		return "", err
	}
	x.r.Username, x.r.ManagedIdentityClientID = cr.Username, cr.ClientID
	x.secrets = map[string]string{x.r.LoginUsername(): cr.Label, cr.Username: cr.Label}
	if cr.ClientIDLabel != "" {
		x.secrets[cr.ClientID] = cr.ClientIDLabel
	}
	return cr.Detail, nil
}

func (x *run) close() {
	if x.conn != nil {
		x.conn.Close()
	}
	if x.pc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		x.pc.Close(ctx)
		cancel()
	}
}

func (x *run) hostPort() string { return net.JoinHostPort(x.r.Hostname, strconv.Itoa(x.r.Port)) }

func (x *run) resolve(ctx context.Context) (string, error) {
	if x.r.Port < 1 || x.r.Port > 65535 {
		return "", fmt.Errorf("resource port %d is not 1-65535", x.r.Port)
	}
	if err := x.c.cfg.AllowedHosts.Check(x.r.Hostname); err != nil {
		return "", err
	}
	port := strconv.Itoa(x.r.Port)
	if over, ok := x.c.cfg.HostOverrides[x.host]; ok {
		if _, _, err := net.SplitHostPort(over); err != nil {
			over = net.JoinHostPort(over, port)
		}
		x.addr = over
		return x.r.Hostname + " → " + over + " (host override)", nil
	}
	addrs, err := x.c.cfg.Resolver.LookupHost(ctx, x.r.Hostname)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", x.r.Hostname, err)
	}
	if len(addrs) == 0 {
		return "", fmt.Errorf("resolve %s: no addresses", x.r.Hostname)
	}
	x.addr = net.JoinHostPort(addrs[0], port)
	return x.r.Hostname + " → " + strings.Join(addrs, ", "), nil
}

func (x *run) tcp(ctx context.Context) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", x.addr)
	if err != nil {
		return "", fmt.Errorf("connect to %s (%s): %w", x.hostPort(), x.addr, err)
	}
	x.conn = c
	return "connected to " + x.addr, nil
}

// sslRequestCode is the SSLRequest code (PostgreSQL protocol, "Message Formats").
const sslRequestCode = 80877103

func (x *run) tls(ctx context.Context) (string, error) {
	defer func() { x.conn.Close(); x.conn = nil }()
	if dl, ok := ctx.Deadline(); ok {
		x.conn.SetDeadline(dl)
	}
	conn := x.conn // the callback may still run after x.conn is cleared
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:], 8)
	binary.BigEndian.PutUint32(req[4:], sslRequestCode)
	if _, err := x.conn.Write(req[:]); err != nil {
		return "", fmt.Errorf("send SSLRequest to %s: %w", x.hostPort(), err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(x.conn, answer[:]); err != nil {
		if ctx.Err() != nil || isTimeout(err) {
			err = fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
		}
		return "", fmt.Errorf("read the answer to SSLRequest from %s: %w", x.hostPort(), err)
	}
	cfg := &tls.Config{ServerName: x.host, RootCAs: x.c.cfg.RootCAs, MinVersion: tls.VersionTLS12}
	switch answer[0] {
	case 'S':
	case 'N':
		// Whatever the resource's tls_required says: the token goes only over verified TLS.
		return "", fmt.Errorf("server %s refused TLS (answered 'N' to SSLRequest): the node sends the managed-identity access token only over TLS verified for the hostname, whatever the resource's tls_required says", x.hostPort())
	default:
		return "", fmt.Errorf("server %s answered SSLRequest with %q: not a PostgreSQL server", x.hostPort(), answer[0])
	}
	tc := tls.Client(x.conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return "", fmt.Errorf("TLS handshake with %s: %w", x.hostPort(), err)
	}
	x.tlsCfg = cfg
	cs := tc.ConnectionState()
	return fmt.Sprintf("%s, certificate for %s verified", tls.VersionName(cs.Version), strings.Join(cs.PeerCertificates[0].DNSNames, ", ")), nil
}

func (x *run) identity() string {
	if x.r.ManagedIdentityClientID == "" {
		return "system-assigned identity"
	}
	return "user-assigned identity " + x.r.ManagedIdentityClientID
}

func (x *run) token(ctx context.Context) (string, error) {
	if label := x.secrets[x.r.ManagedIdentityClientID]; label != "" && x.r.ManagedIdentityClientID != "" {
		ctx = tokensource.WithClientIDLabel(ctx, label)
	}
	tok, exp, err := x.c.cfg.Tokens.Token(ctx, x.r.ManagedIdentityClientID)
	if err != nil {
		return "", err
	}
	x.tok = tok
	return fmt.Sprintf("access token for the %s, expires in %s", x.identity(), time.Until(exp).Round(time.Minute)), nil
}

func (x *run) login(ctx context.Context) (string, error) {
	if x.tlsCfg == nil {
		return "", fmt.Errorf("log in to %s: no verified TLS session was negotiated, and the access token is sent only over one", x.hostPort())
	}
	cfg, err := pgconn.ParseConfig("")
	if err != nil {
		return "", fmt.Errorf("build connection config: %w", err)
	}
	cfg.Host = x.r.Hostname
	cfg.Port = uint16(x.r.Port)
	cfg.Database = x.r.Database
	cfg.User = x.r.LoginUsername()
	cfg.Password = x.tok
	cfg.TLSConfig = x.tlsCfg
	cfg.Fallbacks = nil
	cfg.SSLNegotiation = "postgres"
	cfg.ConnectTimeout = 0
	addr := x.addr
	cfg.DialFunc = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{x.r.Hostname}, nil }
	cfg.ValidateConnect, cfg.AfterConnect, cfg.AfterNetConnect = nil, nil, nil
	cfg.KerberosSrvName, cfg.KerberosSpn = "", ""
	cfg.RuntimeParams = map[string]string{"application_name": "ferry-node healthcheck"}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("log in to %s as %q, database %q: %w", x.hostPort(), cfg.User, cfg.Database, err)
	}
	x.pc = pc
	return fmt.Sprintf("logged in as %s to database %s", cfg.User, cfg.Database), nil
}

func (x *run) query(ctx context.Context) (string, error) {
	res, err := x.pc.Exec(ctx, "SELECT 1").ReadAll()
	if err != nil {
		return "", fmt.Errorf("SELECT 1: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 || string(res[0].Rows[0][0]) != "1" {
		return "", errors.New("SELECT 1 did not answer 1")
	}
	return "SELECT 1 answered 1", nil
}
