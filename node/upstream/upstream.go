// Package upstream is how a node reaches a server: which servers it may reach at all (the
// allowed_server_hosts list), where it dials them (host overrides, the configured DNS server), the CA
// pool it verifies their certificates with, and the credentials it logs in with (managed identity
// access tokens, and usernames and client IDs read from secret stores). The proxy's targets
// (Target) and the health checks (HealthConfig) are both built here, so that a health check reaches a
// server exactly as a session does.
package upstream

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/ferryhq/ferry/node/health"
	"github.com/ferryhq/ferry/node/pgproxy"
	"github.com/ferryhq/ferry/node/secretstore"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/resource"
)

// TokenSource gives managed identity access tokens for the servers' logins.
type TokenSource interface {
	Token(ctx context.Context, clientID string) (token string, expiresOn time.Time, err error)
}

// SecretStores looks up a secret store of the catalog by ID.
type SecretStores interface {
	SecretStore(ctx context.Context, id string) (resource.SecretStore, error)
}

// Config configures an Upstream.
type Config struct {
	// AllowedHosts are the only servers that get an access token (allowed_server_hosts).
	AllowedHosts *serverhost.List
	// RootCAs verify the servers' and Key Vault's certificates (RootPool).
	RootCAs *x509.CertPool
	// HostOverrides maps a lower-case hostname without a trailing dot to the "ip[:port]" dialled
	// instead; TLS still verifies the certificate for the hostname.
	HostOverrides map[string]string
	// DNSServer, when set, is the only DNS server asked for servers' hostnames ("ip:port").
	DNSServer string
	// Tokens gives the health checks' access tokens (the proxy gets its own in pgproxy.Config).
	Tokens TokenSource
	// Credential gives the token credential of a managed identity for reading secret stores
	// (tokensource.Source.Credential).
	Credential func(clientID string) azcore.TokenCredential
	// SecretStores finds a resource's secret store (the catalog).
	SecretStores SecretStores
	// SecretTTL and SecretMaxStaleness: how long a value read from a secret store is used, and how
	// long a stale one still is while the store is unreachable.
	SecretTTL, SecretMaxStaleness time.Duration
	// Timeout bounds one read from a secret store.
	Timeout time.Duration
	Logger  *slog.Logger // nil = slog.Default()
}

// Upstream builds how the node reaches each resource's server.
type Upstream struct {
	cfg     Config
	secrets *secretstore.Reader
}

// New returns an Upstream for cfg.
func New(cfg Config) *Upstream {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	up := &Upstream{cfg: cfg}
	up.secrets = up.newSecretReader()
	return up
}

// RootPool is the system pool plus the PEM certificates of caFiles: what the node trusts for servers
// and Key Vault.
func RootPool(caFiles []string) (*x509.CertPool, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	for _, f := range caFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", f)
		}
	}
	return roots, nil
}

// Resolver returns the resolver for servers' hostnames: the system's, or one that asks only
// dnsServer.
func Resolver(dnsServer string) *net.Resolver {
	if dnsServer == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsServer)
	}}
}

// Lookup resolves a server's hostname as the proxy reaches servers: a host override's "ip[:port]"
// instead of a lookup, else dnsServer's answer (the system's when empty). It is nil when there is
// neither, so that the caller's own lookup applies. It serves clients that take a lookup function
// rather than a dialer (pgx: the catalog database).
func Lookup(overrides map[string]string, dnsServer string) func(ctx context.Context, host string) ([]string, error) {
	if len(overrides) == 0 && dnsServer == "" {
		return nil
	}
	return func(ctx context.Context, host string) ([]string, error) {
		if over, ok := overrides[overrideKey(host)]; ok {
			return []string{over}, nil
		}
		return Resolver(dnsServer).LookupHost(ctx, host)
	}
}

// overrideKey is how a hostname is looked up in HostOverrides: lower case, no trailing dot (the
// same key as the health check's and the allow-list's).
func overrideKey(host string) string { return strings.ToLower(strings.TrimSuffix(host, ".")) }

// Target describes how the proxy reaches and logs in to resource r.
func (up *Upstream) Target(r resource.Resource) pgproxy.Target {
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
		RootCAs:          up.cfg.RootCAs,
		AllowedHosts:     up.cfg.AllowedHosts,
	}
	up.withSecrets(&t, r)
	if over, ok := up.cfg.HostOverrides[overrideKey(r.Hostname)]; ok {
		if _, _, err := net.SplitHostPort(over); err != nil {
			over = net.JoinHostPort(over, strconv.Itoa(r.Port))
		}
		t.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return pgproxy.UpstreamDialer().DialContext(ctx, network, over)
		}
	} else if up.cfg.DNSServer != "" {
		d := &net.Dialer{KeepAlive: 30 * time.Second, Resolver: Resolver(up.cfg.DNSServer)}
		t.Dial = d.DialContext
	}
	return t
}

// CheckHost refuses a resource hostname that is not on allowed_server_hosts. A hostname that is not
// a DNS name or an IP address at all passes here and gets the catalog's validation error, which says
// what a hostname must look like.
func (up *Upstream) CheckHost(host string) error {
	if !resource.ValidHostname(host) {
		return nil
	}
	if err := up.cfg.AllowedHosts.Check(host); err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	return nil
}

// HealthConfig is the health checks' configuration: servers reached the way the proxy reaches them
// (the CA pool, host overrides, allow-list, DNS server, token source and secret stores).
func (up *Upstream) HealthConfig(stepTimeout time.Duration) health.Config {
	return health.Config{
		Tokens:        up.cfg.Tokens,
		RootCAs:       up.cfg.RootCAs,
		HostOverrides: up.cfg.HostOverrides,
		AllowedHosts:  up.cfg.AllowedHosts,
		Resolver:      Resolver(up.cfg.DNSServer),
		StepTimeout:   stepTimeout,
		Secrets:       up.Credentials,
	}
}
