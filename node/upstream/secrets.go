package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ferryhq/ferry/node/health"
	"github.com/ferryhq/ferry/node/pgproxy"
	"github.com/ferryhq/ferry/node/secretstore"
	"github.com/ferryhq/ferry/resource"
)

var clientIDRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// newSecretReader makes the Key Vault reader: the node's managed identity credentials, its CA pool,
// its host overrides (a vault's host name may be mapped like a server's) and DNS server.
func (up *Upstream) newSecretReader() *secretstore.Reader {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second, Resolver: Resolver(up.cfg.DNSServer)}
	overrides := up.cfg.HostOverrides
	tr := &http.Transport{
		// HTTPS_PROXY is honoured for Key Vault, except for a vault whose host is overridden: that
		// one is dialled at its override.
		Proxy: func(req *http.Request) (*url.URL, error) {
			if _, ok := overrides[overrideKey(req.URL.Hostname())]; ok {
				return nil, nil
			}
			return http.ProxyFromEnvironment(req)
		},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if over, ok := overrides[overrideKey(host)]; ok {
				if _, _, err := net.SplitHostPort(over); err != nil {
					over = net.JoinHostPort(over, port)
				}
				addr = over
			}
			return dialer.DialContext(ctx, network, addr)
		},
		TLSClientConfig:       &tls.Config{RootCAs: up.cfg.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
	}
	return secretstore.New(secretstore.Config{
		Credential:   up.cfg.Credential,
		HTTPClient:   &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		TTL:          up.cfg.SecretTTL,
		MaxStaleness: up.cfg.SecretMaxStaleness,
		Timeout:      up.cfg.Timeout,
		Logger:       up.cfg.Logger,
	})
}

// secretError is a failed read from a resource's secret store: its message is the client's FATAL
// (SQLSTATE 08001) and the health step's error; FixHint is the hint.
type secretError struct {
	msg  string
	hint string
	err  error
}

func (e *secretError) Error() string   { return e.msg }
func (e *secretError) Unwrap() error   { return e.err }
func (e *secretError) FixHint() string { return e.hint }

// secretLabel is what logs, audit records and messages show instead of a username read from a
// secret store.
func secretLabel(r resource.Resource) string {
	return "secret " + r.SecretStoreID + "/" + r.UsernamePath
}

// Credentials reads r's username and client ID from its secret store. The username comes back
// as read (not formatted for Single Server). Errors are *secretError and never hold a value.
func (up *Upstream) Credentials(ctx context.Context, r resource.Resource) (health.SecretCredentials, error) {
	out := health.SecretCredentials{Label: secretLabel(r), ClientID: r.ManagedIdentityClientID}
	st, err := up.cfg.SecretStores.SecretStore(ctx, r.SecretStoreID)
	if err != nil {
		return out, &secretError{msg: fmt.Sprintf("could not read username from secret store %s: %v", r.SecretStoreID, err),
			hint: "the resource names a secret store the catalog does not have: set its secret-store-id to one of `ferry admin secretstores list`", err: err}
	}
	identity := "system-assigned managed identity"
	if st.ManagedIdentityClientID != "" {
		identity = "user-assigned managed identity " + st.ManagedIdentityClientID
	}
	read := func(what, path string) (secretstore.Value, error) {
		v, err := up.secrets.Get(ctx, st, path)
		if err != nil {
			hint := ""
			var se *secretstore.Error
			if errors.As(err, &se) {
				hint = se.Hint(identity)
			}
			return v, &secretError{msg: fmt.Sprintf("could not read %s from secret store %s (Key Vault %s): %v", what, st.ID, st.VaultURI, err), hint: hint, err: err}
		}
		return v, nil
	}
	u, err := read("username", r.UsernamePath)
	if err != nil {
		return out, err
	}
	if !roleName(u.Value, r.UseAzureSingleServerUsernames) {
		// Said without the value: a PostgreSQL role name is non-empty printable UTF-8 of at most
		// 63 bytes (the server silently truncates a longer one, and then names the truncated role
		// in its messages, which the scrubbing of the whole value would not catch).
		return out, &secretError{msg: fmt.Sprintf("could not read username from secret store %s (Key Vault %s): secret %q (version %s) is not a role name (empty, over 63 bytes, not UTF-8, or with control characters)", st.ID, st.VaultURI, r.UsernamePath, u.Version),
			hint: "store the PostgreSQL role name in the secret (for a JSON secret, as the string field the path's ?key= names)"}
	}
	out.Username = u.Value
	out.Detail = fmt.Sprintf("read username %s (version %s) from Key Vault %s with the node's %s", r.UsernamePath, u.Version, st.VaultURI, identity)
	if u.Stale {
		out.Detail += fmt.Sprintf("; Key Vault is unreachable, using the value read %s ago", time.Since(u.Read).Round(time.Second))
	}
	if r.ManagedIdentityClientIDPath != "" {
		c, err := read("client ID", r.ManagedIdentityClientIDPath)
		if err != nil {
			return out, err
		}
		if !clientIDRE.MatchString(c.Value) {
			return out, &secretError{msg: fmt.Sprintf("could not read client ID from secret store %s (Key Vault %s): secret %q (version %s) is not a client ID (a UUID)", st.ID, st.VaultURI, r.ManagedIdentityClientIDPath, c.Version),
				hint: "store the user-assigned identity's client ID (a UUID) in the secret, or drop the resource's managed-identity-client-id-path for the system-assigned identity"}
		}
		out.ClientID = c.Value
		out.ClientIDLabel = "secret " + r.SecretStoreID + "/" + r.ManagedIdentityClientIDPath
		out.Detail += fmt.Sprintf(", client ID %s (version %s)", r.ManagedIdentityClientIDPath, c.Version)
	}
	return out, nil
}

// maxRoleName is PostgreSQL's longest role name in bytes (NAMEDATALEN - 1).
const maxRoleName = 63

// roleName reports whether u, read from a secret store, can be a PostgreSQL role name: non-empty
// valid UTF-8 without control or format characters, at most maxRoleName bytes (with Single
// Server's user@server form, the part before the @; the whole at most 512).
func roleName(u string, singleServer bool) bool {
	if u == "" || len(u) > 512 || !utf8.ValidString(u) ||
		strings.IndexFunc(u, func(c rune) bool { return unicode.IsControl(c) || unicode.Is(unicode.Cf, c) }) >= 0 {
		return false
	}
	role := u
	if singleServer {
		role, _, _ = strings.Cut(u, "@")
	}
	return role != "" && len(role) <= maxRoleName
}

// withSecrets makes t read its username and client ID from r's secret store at login time.
func (up *Upstream) withSecrets(t *pgproxy.Target, r resource.Resource) {
	if r.SecretStoreID == "" {
		return
	}
	t.Username, t.ClientID = "", ""
	t.UsernameLabel = secretLabel(r)
	if r.ManagedIdentityClientIDPath != "" {
		t.ClientIDLabel = "secret " + r.SecretStoreID + "/" + r.ManagedIdentityClientIDPath
	}
	t.Credentials = func(ctx context.Context) (string, string, error) {
		cr, err := up.Credentials(ctx, r)
		if err != nil {
			var se *secretError
			if errors.As(err, &se) {
				return "", "", &pgproxy.Refusal{Code: "08001", Message: se.msg, Hint: se.hint}
			}
			return "", "", err
		}
		return r.LoginUsernameFor(cr.Username), cr.ClientID, nil
	}
}
