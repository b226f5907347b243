package node

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/resource"
)

// Config is ferry-node's configuration file (JSON, config.json in the state directory unless
// --config names another). Durations are Go duration strings ("10s").
type Config struct {
	// PublicHost is the name or IP clients use to reach this node (enrollment and WireGuard).
	PublicHost string `json:"public_host"`
	// Name is the node's name in the catalog: a DNS label, unique in the deployment (default: the
	// host name's first label, written by `ferry-node init`).
	Name string `json:"name,omitempty"`
	// Tags are the node's tags when it first registers ("region": "westeurope"); afterwards the
	// catalog's tags (`ferry admin nodes update NAME --tags ...`) win.
	Tags map[string]string `json:"tags,omitempty"`
	// ClusterID makes the node a worker of that proxy cluster (`ferry-node init --join ... --cluster
	// ID`): it carries only the resources naming the cluster. Empty: a gateway.
	ClusterID string `json:"cluster_id,omitempty"`
	// EnrollListen is the TCP address of the HTTPS enrollment endpoint, e.g. ":8443".
	EnrollListen string `json:"enroll_listen"`
	// WireGuardPort is the UDP port of the WireGuard endpoint; 0 picks a free port at each start
	// (tests and demos only: enrolled clients remember the port).
	WireGuardPort int `json:"wireguard_port"`
	// IMDSEndpoint, when set, replaces Azure IMDS (http://169.254.169.254) for token requests:
	// for the Azure emulator in tests and demos. Empty means the real IMDS.
	IMDSEndpoint string `json:"imds_endpoint,omitempty"`
	// CAFiles are extra PEM files of CAs trusted for servers' TLS certificates, besides the system pool.
	CAFiles []string `json:"ca_files,omitempty"`
	// HostOverrides maps a server hostname to the "ip:port" to dial instead (private endpoints, tests);
	// TLS still verifies the certificate against the hostname.
	HostOverrides map[string]string `json:"host_overrides,omitempty"`
	// AllowedServerHosts are the only servers the node sends a managed-identity access token to: a
	// resource whose hostname is not on the list cannot be created or updated, is not health-checked
	// and gets no login. Entries: "*.DOMAIN" (any name below DOMAIN, on a label boundary), a DNS name,
	// or an IP address (an IP literal as a hostname is refused unless listed). Absent means
	// serverhost.Defaults, the Azure Database for PostgreSQL domains of the public and sovereign
	// clouds; a list replaces them, so keep those entries when adding a private endpoint's custom DNS
	// name. The control API cannot change it.
	AllowedServerHosts []string `json:"allowed_server_hosts,omitempty"`
	// CatalogURL is where the catalog (resources, users, roles, devices, settings) lives: empty means
	// the SQLite file in the state dir; "sqlite:/PATH" another SQLite file (nodes on one machine); a postgres:// URL (or libpq key=value string) a PostgreSQL
	// database shared by the nodes of a fleet. Without a password in it, the node logs in with its
	// managed identity's token (CatalogClientID), only over TLS verified against its CA files
	// (sslmode=verify-full) to a host allowed_server_hosts allows. FERRY_NODE_CATALOG_URL overrides it.
	CatalogURL string `json:"catalog_url,omitempty"`
	// CatalogClientID is the client ID of the user-assigned managed identity the node logs in to a
	// PostgreSQL catalog with; empty means the system-assigned identity.
	// FERRY_NODE_CATALOG_CLIENT_ID overrides it.
	CatalogClientID string `json:"catalog_client_id,omitempty"`
	// DNSServer, when set ("ip:port"), is the only DNS server the node asks for servers' hostnames
	// (proxy and health checks); empty means the system's resolver. Tests point it at a closed
	// loopback port so that no lookup leaves the machine.
	DNSServer string `json:"dns_server,omitempty"`
	// SecretTTL is how long a value read from a secret store (Key Vault) is used before it is read
	// again, so a rotated secret reaches new logins within it (default 5m).
	SecretTTL Duration `json:"secret_ttl,omitzero"`
	// SecretMaxStaleness is how long a value read from a secret store keeps being used while the
	// store cannot be reached (default 1h); after it, logins fail with FATAL 08001.
	SecretMaxStaleness Duration `json:"secret_max_staleness,omitzero"`
	// TokenTimeout bounds every access-token request and every secret store read (default 10s).
	TokenTimeout Duration `json:"token_timeout,omitzero"`
	// LoginTimeout bounds an upstream login (default 15s).
	LoginTimeout Duration `json:"login_timeout,omitzero"`
	// DeadClientTimeout is how soon a client that vanished without closing its connections (its
	// process killed, its machine asleep or off the network) is noticed and its upstream sessions
	// closed: TCP keepalive inside the tunnel, idle half of it, then 4 probes (default 2m).
	DeadClientTimeout Duration `json:"dead_client_timeout,omitzero"`
	// EnrollTokenTTL is the lifetime of enrollment tokens (default 24h).
	EnrollTokenTTL Duration `json:"enroll_token_ttl,omitzero"`
	// HealthInterval is the time between two health checks of a resource (default 60s). New and
	// changed resources are checked at once.
	HealthInterval Duration `json:"health_interval,omitzero"`
	// HealthStepTimeout bounds each step of a health check (default 10s).
	HealthStepTimeout Duration `json:"health_step_timeout,omitzero"`
	// HealthConcurrency bounds the health checks running at once (default 4).
	HealthConcurrency int `json:"health_concurrency,omitzero"`
	// MetricsListen is the TCP address of the Prometheus metrics endpoint (/metrics, /livez,
	// /readyz), e.g. "127.0.0.1:9108"; empty turns it off. `ferry-node init` writes 127.0.0.1:9108.
	MetricsListen string `json:"metrics_listen,omitempty"`
	// HTTPReadTimeout bounds, on the enrollment endpoint and the control API, the TLS handshake and
	// the reading of a request's header and body (default 10s): a client that sends slowly is cut.
	HTTPReadTimeout Duration `json:"http_read_timeout,omitzero"`
	// HTTPWriteTimeout bounds handling a request and writing its answer (default 60s).
	HTTPWriteTimeout Duration `json:"http_write_timeout,omitzero"`
	// HTTPIdleTimeout closes a kept-alive connection that has been idle this long (default 60s).
	HTTPIdleTimeout Duration `json:"http_idle_timeout,omitzero"`
	// HTTPMaxConns caps the open connections of each of the two endpoints (default 512); more wait
	// in the kernel's accept queue until one closes.
	HTTPMaxConns int `json:"http_max_conns,omitzero"`
	// HTTPMaxConnsPerSource caps the open connections of each endpoint from one source: an IPv4
	// address or an IPv6 /64, inside the tunnel one device (default 32); more are closed at once.
	HTTPMaxConnsPerSource int `json:"http_max_conns_per_source,omitzero"`
	// SessionTestHook is for tests only (never read from the file) and nil in production: it is
	// pgproxy.Config.TestHook, through which a test makes one session panic.
	SessionTestHook func(net.Conn) net.Conn `json:"-"`
	// HeartbeatTestInterval is for tests only (never read from the file): when set, the node writes
	// its heartbeat this often instead of every catalog.NodeHeartbeatInterval.
	HeartbeatTestInterval time.Duration `json:"-"`
}

// Duration is a time.Duration that reads and writes as a Go duration string in JSON.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"10s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// DefaultEnrollPort and DefaultWireGuardPort are the node's default listening ports.
const (
	DefaultEnrollPort    = 8443
	DefaultWireGuardPort = 51820
)

func (c *Config) applyDefaults() {
	if c.EnrollListen == "" {
		c.EnrollListen = ":" + strconv.Itoa(DefaultEnrollPort)
	}
	if c.TokenTimeout == 0 {
		c.TokenTimeout = Duration(10 * time.Second)
	}
	if c.LoginTimeout == 0 {
		c.LoginTimeout = Duration(15 * time.Second)
	}
	if c.DeadClientTimeout <= 0 {
		c.DeadClientTimeout = Duration(2 * time.Minute)
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = Duration(60 * time.Second)
	}
	if c.HealthStepTimeout <= 0 {
		c.HealthStepTimeout = Duration(10 * time.Second)
	}
	if c.HealthConcurrency <= 0 {
		c.HealthConcurrency = 4
	}
	if c.EnrollTokenTTL == 0 {
		c.EnrollTokenTTL = Duration(24 * time.Hour)
	}
	if c.PublicHost == "" {
		c.PublicHost, _ = os.Hostname()
	}
	if c.Name == "" {
		h, _ := os.Hostname()
		c.Name = defaultNodeName(h)
	}
	if c.HTTPReadTimeout == 0 {
		c.HTTPReadTimeout = Duration(10 * time.Second)
	}
	if c.HTTPWriteTimeout == 0 {
		c.HTTPWriteTimeout = Duration(60 * time.Second)
	}
	if c.HTTPIdleTimeout == 0 {
		c.HTTPIdleTimeout = Duration(60 * time.Second)
	}
	if c.HTTPMaxConns == 0 {
		c.HTTPMaxConns = 512
	}
	if c.HTTPMaxConnsPerSource == 0 {
		c.HTTPMaxConnsPerSource = 32
	}
	if c.AllowedServerHosts == nil {
		c.AllowedServerHosts = slices.Clone(serverhost.Defaults)
	}
}

// allowList parses AllowedServerHosts; an empty list is refused, as no resource could be reached.
func (c *Config) allowList() (*serverhost.List, error) {
	if len(c.AllowedServerHosts) == 0 {
		return nil, fmt.Errorf("%s is empty: no server could be reached; remove the key for the Azure defaults (%s)", serverhost.ConfigKey, strings.Join(serverhost.Defaults, ", "))
	}
	return serverhost.Parse(c.AllowedServerHosts)
}

// EnrollURL is the https URL clients enroll at.
func (c *Config) EnrollURL() (string, error) {
	_, port, err := net.SplitHostPort(c.EnrollListen)
	if err != nil {
		return "", fmt.Errorf("enroll_listen %q: %w", c.EnrollListen, err)
	}
	return "https://" + net.JoinHostPort(c.PublicHost, port), nil
}

// ConfigFile is the default config file name inside the state directory.
const ConfigFile = "config.json"

// LoadConfig reads a config file; a missing file gives the defaults.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return c, fmt.Errorf("read node config: %w", err)
	}
	if err == nil {
		if err := json.Unmarshal(b, &c); err != nil {
			return c, fmt.Errorf("read node config %s: %w", path, err)
		}
	}
	c.applyEnv()
	c.applyDefaults()
	return c, nil
}

// applyEnv takes the settings the environment overrides: FERRY_NODE_CATALOG_URL and
// FERRY_NODE_CATALOG_CLIENT_ID (set and non-empty).
func (c *Config) applyEnv() {
	if v := os.Getenv("FERRY_NODE_CATALOG_URL"); v != "" {
		c.CatalogURL = v
	}
	if v := os.Getenv("FERRY_NODE_CATALOG_CLIENT_ID"); v != "" {
		c.CatalogClientID = v
	}
}

// SaveConfig writes c to path (mode 0600).
func SaveConfig(path string, c Config) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("write node config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write node config: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write node config: %w", err)
	}
	return nil
}

// Validate checks the config's values, so that `ferry-node init` refuses what `run` would fail on.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.PublicHost == "" || !resource.ValidHostname(c.PublicHost) {
		bad("public host %q is neither a DNS name nor an IP address (give the name only, without scheme or port)", c.PublicHost)
	}
	if _, port, err := net.SplitHostPort(c.EnrollListen); err != nil {
		bad("enroll listen address %q: use HOST:PORT or :PORT", c.EnrollListen)
	} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		bad("enroll listen address %q: the port must be 0-65535", c.EnrollListen)
	}
	if err := api.ValidateNodeName(c.Name); err != nil {
		bad("name: %v", err)
	}
	if c.ClusterID != "" && !api.ValidClusterID(c.ClusterID) {
		bad("cluster_id %q is not a proxy cluster ID (n- and 16 lower-case hex digits; `ferry admin clusters list` lists them)", c.ClusterID)
	}
	if err := api.ValidateNodeTags(c.Tags); err != nil {
		bad("%v", err)
	}
	if _, err := parseCatalogURL(c.CatalogURL); err != nil {
		errs = append(errs, err)
	}
	if c.WireGuardPort < 0 || c.WireGuardPort > 65535 {
		bad("WireGuard port %d is out of range 0-65535", c.WireGuardPort)
	}
	if c.IMDSEndpoint != "" {
		u, err := url.Parse(c.IMDSEndpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("IMDS endpoint %q is not an http://HOST:PORT URL", c.IMDSEndpoint)
		}
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			bad("metrics listen address %q: use HOST:PORT", c.MetricsListen)
		}
	}
	if c.DNSServer != "" {
		if _, err := netip.ParseAddrPort(c.DNSServer); err != nil {
			bad("DNS server %q: use IP:PORT", c.DNSServer)
		}
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"http_read_timeout", c.HTTPReadTimeout}, {"http_write_timeout", c.HTTPWriteTimeout}, {"http_idle_timeout", c.HTTPIdleTimeout},
		{"secret_ttl", c.SecretTTL}, {"secret_max_staleness", c.SecretMaxStaleness}} {
		if d.v < 0 {
			bad("%s %s is negative: give a duration such as \"10s\"", d.name, time.Duration(d.v))
		}
	}
	if c.HTTPMaxConns < 0 || c.HTTPMaxConnsPerSource < 0 {
		bad("http_max_conns %d and http_max_conns_per_source %d must be positive", c.HTTPMaxConns, c.HTTPMaxConnsPerSource)
	}
	for _, f := range c.CAFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			bad("CA file: %v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(b) {
			bad("CA file %s holds no PEM certificate", f)
		}
	}
	if _, err := c.allowList(); err != nil {
		errs = append(errs, err)
	}
	for host, addr := range c.HostOverrides {
		if !resource.ValidHostname(host) || addr == "" {
			bad("host override %q=%q: use HOSTNAME=IP[:PORT]", host, addr)
		}
	}
	return errors.Join(errs...)
}
