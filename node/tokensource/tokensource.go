// Package tokensource gets the node's Microsoft Entra ID access tokens for
// Azure Database for PostgreSQL from the VM's managed identity, through IMDS
// (the Azure Instance Metadata Service), with azidentity's
// ManagedIdentityCredential.
//
// The Source keeps its own cache in front of azidentity, one token per
// identity (client ID, or "" for the system-assigned identity), because the
// node needs what MSAL's process-wide cache does not give it:
//
//   - Refresh ahead: a token is refreshed once it is within
//     min(5 minutes, half its lifetime) of expires_on. The refresh runs in
//     the background while the cached token, still valid, keeps being handed
//     out, so logins never wait for IMDS while a usable token exists.
//   - Single flight: concurrent callers for one identity share one IMDS
//     request.
//   - Outages: when a refresh fails, the cached token keeps being used until
//     it is about to expire (min(30 s, 5% of its lifetime) before expires_on);
//     failed refreshes back off (1 s doubling to 15 s), and an IMDS 429
//     Retry-After is honoured: no request goes to IMDS before it has passed.
//     A caller without a usable token waits for it only if it ends within the
//     caller's deadline, and fails at once otherwise.
//   - Invalidation: Invalidate drops a token the server refused (e.g.
//     "token has expired" because the server's clock runs ahead), and the next
//     Token fetches a new one.
//
// Every fetch bypasses MSAL's cache by passing a claims value in the token
// request (MSAL reads no cached token when claims are given; IMDS itself is
// not sent the claims), so this cache is the only one that decides, and
// Sources in one process never see each other's tokens. Each Token call is
// bounded by Config.Timeout. Tokens are never logged; their expiry is.
package tokensource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/managedidentity"
)

// Scope is the OAuth 2.0 scope of Azure Database for PostgreSQL
// (resource https://ossrdbms-aad.database.windows.net plus "/.default").
// Source: "Connect with managed identity to Azure Database for PostgreSQL".
const Scope = "https://ossrdbms-aad.database.windows.net/.default"

// imdsHost is the IMDS link-local address azidentity sends token requests to
// (http://169.254.169.254/metadata/identity/oauth2/token).
const imdsHost = "169.254.169.254"

const (
	defaultTimeout    = 10 * time.Second
	defaultMaxRetries = 2
	retryDelay        = 200 * time.Millisecond
	maxRetryDelay     = 2 * time.Second
)

// Config configures a Source.
type Config struct {
	// IMDSEndpoint is "" for the real IMDS; else the scheme and host of an
	// IMDS stand-in, e.g. "http://127.0.0.1:PORT": requests for 169.254.169.254
	// go there instead, and requests for any other host are refused.
	IMDSEndpoint string
	// Timeout is the deadline of one Token call, and of one IMDS fetch,
	// retries included; default 10s. A login never waits longer for a token.
	Timeout time.Duration
	// MaxRetries is how many times a failed IMDS request (HTTP 404, 410, 429,
	// 5xx, or a transport error) is retried; 0 means the default 2, negative
	// means no retries.
	MaxRetries int
	// Logger receives token expiries and failures, never tokens; default: discard.
	Logger *slog.Logger
}

// Source hands out access tokens for the VM's managed identities. It keeps one
// ManagedIdentityCredential per client ID. It is safe for concurrent use.
type Source struct {
	cfg  Config
	log  *slog.Logger
	opts azcore.ClientOptions

	now func() time.Time // time.Now; tests may replace it

	mu      sync.Mutex
	creds   map[string]*azidentity.ManagedIdentityCredential // by client ID; "" = system-assigned
	entries map[string]*entry                                // by client ID; "" = system-assigned
}

// New makes a Source. It fails if IMDSEndpoint is not an http(s) URL with a
// host and no path, or if an override is set while the environment selects a
// managed identity source other than IMDS (App Service, Azure Arc, Cloud
// Shell, Azure ML, Service Fabric), which the override could not redirect.
func New(cfg Config) (*Source, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	switch {
	case cfg.MaxRetries == 0:
		cfg.MaxRetries = defaultMaxRetries
	case cfg.MaxRetries < 0:
		cfg.MaxRetries = -1 // azcore: no retries (0 would mean its default)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var target *url.URL
	if cfg.IMDSEndpoint != "" {
		u, err := url.Parse(cfg.IMDSEndpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("new token source: IMDS endpoint %q must be a scheme and host like http://127.0.0.1:8080", cfg.IMDSEndpoint)
		}
		target = &url.URL{Scheme: u.Scheme, Host: u.Host}
		src, err := managedidentity.GetSource()
		if err != nil {
			return nil, fmt.Errorf("new token source: detect managed identity source: %w", err)
		}
		if src != managedidentity.DefaultToIMDS {
			return nil, fmt.Errorf("new token source: the environment selects the %s managed identity source (IDENTITY_ENDPOINT, MSI_ENDPOINT or IMDS_ENDPOINT is set, or the Azure Arc agent is installed), so the IMDS endpoint override %q cannot apply; unset those variables", src, cfg.IMDSEndpoint)
		}
	}
	s := &Source{
		cfg: cfg,
		log: cfg.Logger.With("component", "tokensource"),
		opts: azcore.ClientOptions{
			Transport: newIMDSTransport(target),
			Retry: policy.RetryOptions{
				MaxRetries:    int32(cfg.MaxRetries),
				RetryDelay:    retryDelay,
				MaxRetryDelay: maxRetryDelay,
				TryTimeout:    cfg.Timeout,
			},
		},
		now:     time.Now,
		creds:   make(map[string]*azidentity.ManagedIdentityCredential),
		entries: make(map[string]*entry),
	}
	return s, nil
}

// fetch asks IMDS for a new token for clientID, bypassing MSAL's cache (see
// the package doc), bounded by Config.Timeout. ctx should not be a caller's:
// the fetch is shared.
func (s *Source) fetch(ctx context.Context, clientID string) (azcore.AccessToken, error) {
	return s.getToken(ctx, clientID, policy.TokenRequestOptions{Scopes: []string{Scope}})
}

// getToken asks IMDS for a token of clientID's identity for opts' scopes, bypassing MSAL's cache,
// bounded by Config.Timeout: the one request of Token (fetch) and of Credential's GetToken.
func (s *Source) getToken(ctx context.Context, clientID string, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	cred, err := s.credential(clientID)
	if err != nil {
		return azcore.AccessToken{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	// A managed identity's tokens come from its own tenant; IMDS takes no tenant and no claims
	// (the claims only make MSAL skip its cache).
	opts.TenantID = ""
	opts.Claims = bypassCacheClaims
	tok, err := cred.GetToken(ctx, opts)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w: %w", ctx.Err(), err)
		}
		return azcore.AccessToken{}, err
	}
	if tok.Token == "" {
		return azcore.AccessToken{}, errors.New("IMDS returned an empty access token")
	}
	return tok, nil
}

func (s *Source) credential(clientID string) (*azidentity.ManagedIdentityCredential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.creds[clientID]; ok {
		return c, nil
	}
	opts := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: s.opts}
	if clientID != "" {
		opts.ID = azidentity.ClientID(clientID)
	}
	c, err := azidentity.NewManagedIdentityCredential(opts)
	if err != nil {
		return nil, fmt.Errorf("new managed identity credential: %w", err)
	}
	s.creds[clientID] = c
	return c, nil
}

// imdsTransport sends azidentity's requests without any proxy (IMDS must be
// reached directly) and, with a target, sends requests for 169.254.169.254 to
// the target instead and refuses all other hosts.
type imdsTransport struct {
	target *url.URL // nil: no override
	client *http.Client
}

func newIMDSTransport(target *url.URL) *imdsTransport {
	return &imdsTransport{
		target: target,
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:                 nil,
				DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
				TLSHandshakeTimeout:   5 * time.Second,
				ResponseHeaderTimeout: 30 * time.Second,
				MaxIdleConnsPerHost:   2,
				IdleConnTimeout:       30 * time.Second,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// Do implements policy.Transporter.
func (t *imdsTransport) Do(req *http.Request) (*http.Response, error) {
	if t.target != nil {
		if req.URL.Hostname() != imdsHost {
			return nil, fmt.Errorf("IMDS transport: refusing request to %s: only %s is redirected to %s", req.URL.Host, imdsHost, t.target)
		}
		req = req.Clone(req.Context())
		req.URL.Scheme = t.target.Scheme
		req.URL.Host = t.target.Host
		req.Host = ""
	}
	return t.client.Do(req)
}
