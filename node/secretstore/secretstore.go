// Package secretstore reads a resource's username and managed-identity client ID from its secret
// store, Azure Key Vault, with the Azure SDK's secrets client (azsecrets) authenticated by the
// node's managed identity (the store's user-assigned identity, or the VM's system-assigned one).
//
//   - Cache: a secret's value is kept for Config.TTL (default 5 min) and then read again, so a
//     rotated secret reaches new logins within the TTL. Concurrent readers of one secret share one
//     request (single flight).
//   - Outages: when Key Vault cannot be reached (transport errors, 5xx, 429 after the SDK's bounded
//     retries), a cached value keeps being used until it is older than Config.MaxStaleness
//     (default 1 h); after that, reads fail. Answers that are Key Vault's verdict (403 forbidden or
//     disabled, 404 missing, 401) fail at once.
//   - Values never leave through this package's errors or logs: those name the store, vault, path
//     and version only.
package secretstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/ferryhq/ferry/resource"
)

// Defaults of Config.
const (
	DefaultTTL          = 5 * time.Minute
	DefaultMaxStaleness = time.Hour
	DefaultTimeout      = 10 * time.Second
	defaultMaxRetries   = 2
	failureBackoff      = 2 * time.Second
	// staleWait is how long a login waits for a new read when a value past its TTL is cached.
	staleWait = 3 * time.Second
)

// Config configures a Reader.
type Config struct {
	// Credential gives the token credential of a managed identity ("" = system-assigned); the
	// node's tokensource.Source.Credential.
	Credential func(clientID string) azcore.TokenCredential
	// HTTPClient sends the requests to Key Vault (its TLS roots and host overrides); nil = a plain
	// http.Client.
	HTTPClient *http.Client
	// TTL is how long a read value is used before it is read again; default DefaultTTL.
	TTL time.Duration
	// MaxStaleness is how long a cached value keeps being used while Key Vault cannot be reached;
	// default DefaultMaxStaleness.
	MaxStaleness time.Duration
	// Timeout bounds one read, retries included; default DefaultTimeout.
	Timeout time.Duration
	// MaxRetries is how many times a failed request is retried; 0 = 2, negative = none.
	MaxRetries int
	// Logger gets reads and failures (never values); default: discard.
	Logger *slog.Logger
}

// Value is a secret's value as read.
type Value struct {
	Value   string    // the value, or the field's with ?key=
	Version string    // the secret version it came from
	Read    time.Time // when it was read from Key Vault
	Stale   bool      // Key Vault could not be reached; this is the cached value
}

// Kind says why a read failed.
type Kind string

// Kinds of failure.
const (
	KindForbidden   Kind = "forbidden"   // 403: the identity lacks get on secrets
	KindDisabled    Kind = "disabled"    // 403 SecretDisabled
	KindNotFound    Kind = "not-found"   // 404: no such secret or version
	KindNoKey       Kind = "no-key"      // ?key=: the value is not a JSON object or lacks the field
	KindAuth        Kind = "auth"        // no token, or Key Vault refused it (401)
	KindUnreachable Kind = "unreachable" // transport, 5xx, 429, timeout
	KindStale       Kind = "stale"       // unreachable, and the cached value is older than MaxStaleness
)

// Error is a failed read. Its text never holds a secret value.
type Error struct {
	Kind  Kind
	Vault string // vault URI
	Path  string // the secret path as configured
	Err   error
	// transient: IMDS could not be reached or was unavailable (not "Identity not found"); like
	// KindUnreachable, a cached value is used within MaxStaleness.
	transient bool
}

func (e *Error) Error() string { return fmt.Sprintf("secret %q: %v", e.Path, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Hint says what to do about a failed read, naming the identity that read.
func (e *Error) Hint(identity string) string {
	switch e.Kind {
	case KindForbidden:
		return fmt.Sprintf("the node's %s may not read secrets in %s: assign it the \"Key Vault Secrets User\" role on the vault (or, with access policies, the get permission on secrets)", identity, e.Vault)
	case KindDisabled:
		return fmt.Sprintf("the secret in %s is disabled: enable it, or point the path at an enabled version", e.Vault)
	case KindNotFound:
		return fmt.Sprintf("no such secret or version in %s: create it or fix the resource's path (secret-name[?key=field])", e.Vault)
	case KindNoKey:
		return "with ?key=FIELD the secret's value must be a JSON object with that string field: fix the secret or the path"
	case KindAuth:
		return fmt.Sprintf("the node's %s could not get a token Key Vault accepts: check that the identity is assigned to the node's VM and that IMDS is reachable", identity)
	}
	return fmt.Sprintf("the node cannot reach %s: check the vault's firewall (allow the node's virtual network or trusted services) and its private endpoint DNS", e.Vault)
}

// Reader reads secrets from Key Vault with a cache. It is safe for concurrent use.
type Reader struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	clients map[string]*azsecrets.Client // by vault URI + "|" + client ID
	entries map[string]*entry
}

type entry struct {
	value     string // the whole secret value
	version   string
	read      time.Time
	has       bool
	call      *flight
	notBefore time.Time // no read before this after a failure
	lastErr   *Error
}

type flight struct {
	done    chan struct{}
	value   string
	version string
	err     *Error
}

// New makes a Reader.
func New(cfg Config) *Reader {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.MaxStaleness <= 0 {
		cfg.MaxStaleness = DefaultMaxStaleness
	}
	if cfg.MaxStaleness < cfg.TTL {
		cfg.MaxStaleness = cfg.TTL
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	switch {
	case cfg.MaxRetries == 0:
		cfg.MaxRetries = defaultMaxRetries
	case cfg.MaxRetries < 0:
		cfg.MaxRetries = -1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	return &Reader{cfg: cfg, log: cfg.Logger.With("component", "secretstore"), now: time.Now,
		clients: map[string]*azsecrets.Client{}, entries: map[string]*entry{}}
}

func (r *Reader) client(st resource.SecretStore) (*azsecrets.Client, error) {
	uri, err := resource.NormalizeVaultURI(st.VaultURI)
	if err != nil {
		return nil, err
	}
	key := uri + "|" + st.ManagedIdentityClientID
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.clients[key]; ok {
		return c, nil
	}
	if r.cfg.Credential == nil {
		return nil, errors.New("the node has no managed identity credential configured")
	}
	scope, err := vaultScope(uri)
	if err != nil {
		return nil, err
	}
	cred := &scopedCredential{cred: r.cfg.Credential(st.ManagedIdentityClientID), scope: scope}
	c, err := azsecrets.NewClient(uri, cred, &azsecrets.ClientOptions{
		ClientOptions: azcore.ClientOptions{
			Transport: limitedTransport{r.cfg.HTTPClient},
			Retry: policy.RetryOptions{
				MaxRetries:    int32(r.cfg.MaxRetries),
				RetryDelay:    200 * time.Millisecond,
				MaxRetryDelay: 2 * time.Second,
				TryTimeout:    r.cfg.Timeout,
			},
			Telemetry: policy.TelemetryOptions{Disabled: true},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("new Key Vault client for %s: %w", uri, err)
	}
	r.clients[key] = c
	return c, nil
}

// maxAnswer bounds the body of one answer from a vault: a secret is at most 25 KiB, and a vault
// that sends more (a hostile one, an endless stream) fails the read instead of filling memory.
const maxAnswer = 1 << 20

// limitedTransport sends requests with the node's client and reads at most maxAnswer bytes of
// each answer.
type limitedTransport struct{ c *http.Client }

// Do implements policy.Transporter.
func (t limitedTransport) Do(req *http.Request) (*http.Response, error) {
	resp, err := t.c.Do(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: maxAnswer}
	return resp, nil
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte tells a body of exactly maxAnswer from a longer one.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, fmt.Errorf("the vault's answer is larger than %d bytes (a secret is at most 25 KiB)", maxAnswer)
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// vaultScope is the one token scope the node asks for to read a vault at uri: Key Vault's data
// plane in the vault's cloud ("https://vault.azure.net/.default" for a vault under
// .vault.azure.net).
func vaultScope(uri string) (string, error) {
	host := strings.TrimSuffix(strings.TrimPrefix(uri, "https://"), "/")
	for _, suf := range resource.KeyVaultHostSuffixes {
		if strings.HasSuffix(host, suf) {
			return "https://" + strings.TrimPrefix(suf, ".") + "/.default", nil
		}
	}
	return "", fmt.Errorf("%s is not under a Key Vault suffix", uri)
}

// scopedCredential gets tokens only for scope. azsecrets asks for the scope a vault's 401
// challenge names, and checks only that the challenge's host is a suffix of the vault's: a vault
// anyone can create under .vault.azure.net could name "https://azure.net" (or
// "https://management.azure.com@vault.azure.net") and be sent the node's token for it.
type scopedCredential struct {
	cred  azcore.TokenCredential
	scope string
}

// GetToken implements azcore.TokenCredential.
func (c *scopedCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	resOf := func(scope string) string { return strings.TrimSuffix(strings.TrimSuffix(scope, "/.default"), "/") }
	if len(opts.Scopes) != 1 || !strings.EqualFold(resOf(opts.Scopes[0]), resOf(c.scope)) {
		return azcore.AccessToken{}, &refusedScope{scopes: opts.Scopes, want: c.scope}
	}
	opts.Scopes = []string{c.scope}
	return c.cred.GetToken(ctx, opts)
}

// refusedScope is a challenge that asked for a token of another resource than Key Vault.
type refusedScope struct {
	scopes []string
	want   string
}

func (e *refusedScope) Error() string {
	return fmt.Sprintf("the vault's challenge asked for a token for %q, not Key Vault's %s: refused (is this a Key Vault?)", strings.Join(e.scopes, " "), e.want)
}

// NonRetriable tells azcore not to retry.
func (e *refusedScope) NonRetriable() {}

// Get reads the secret at path (secret-name[/version][?key=field]) from store, from the cache while
// it is fresh. ctx bounds the wait; the read itself is shared and bounded by Config.Timeout. When
// a value past its TTL is cached, a login waits for the new read at most staleWait and is then
// answered from the cache (within MaxStaleness), so a vault that does not answer (a firewall that
// drops packets) slows logins by that much, not by the read's whole deadline.
func (r *Reader) Get(ctx context.Context, st resource.SecretStore, path string) (Value, error) {
	sp, err := resource.ParseSecretPath(path)
	if err != nil {
		return Value{}, &Error{Kind: KindNotFound, Vault: st.VaultURI, Path: path, Err: err}
	}
	key := strings.Join([]string{st.ID, strings.ToLower(st.VaultURI), st.ManagedIdentityClientID, strings.ToLower(sp.Name), sp.Version}, "|")
	r.mu.Lock()
	e := r.entries[key]
	if e == nil {
		e = &entry{}
		r.entries[key] = e
	}
	now := r.now()
	if e.has && now.Sub(e.read) < r.cfg.TTL {
		v, raw := Value{Version: e.version, Read: e.read}, e.value
		r.mu.Unlock()
		return extract(v, raw, st, path, sp)
	}
	if e.call == nil && now.Before(e.notBefore) && e.lastErr != nil {
		// Failed a moment ago: answer from the cache or with that failure, without asking again.
		v, raw, ferr := r.fallback(e, e.lastErr, now, st, path)
		r.mu.Unlock()
		if ferr != nil {
			return Value{}, ferr
		}
		return extract(v, raw, st, path, sp)
	}
	f := e.call
	if f == nil {
		f = &flight{done: make(chan struct{})}
		e.call = f
		go r.fetch(e, f, st, path)
	}
	var slow <-chan time.Time
	if e.has && now.Sub(e.read) < r.cfg.MaxStaleness {
		t := time.NewTimer(staleWait)
		defer t.Stop()
		slow = t.C
	}
	r.mu.Unlock()
	select {
	case <-f.done:
	case <-slow:
		r.mu.Lock()
		v, raw := Value{Version: e.version, Read: e.read, Stale: true}, e.value
		r.mu.Unlock()
		r.log.Warn("Key Vault is slow to answer; using the cached value", "store", st.ID, "vault", st.VaultURI, "path", path, "version", v.Version)
		return extract(v, raw, st, path, sp)
	case <-ctx.Done():
		return Value{}, &Error{Kind: KindUnreachable, Vault: st.VaultURI, Path: path, Err: fmt.Errorf("waiting for Key Vault: %w", ctx.Err())}
	}
	r.mu.Lock()
	now = r.now()
	if f.err == nil {
		v, raw := Value{Version: f.version, Read: now}, f.value
		r.mu.Unlock()
		return extract(v, raw, st, path, sp)
	}
	v, raw, ferr := r.fallback(e, f.err, now, st, path)
	r.mu.Unlock()
	if ferr != nil {
		return Value{}, ferr
	}
	return extract(v, raw, st, path, sp)
}

// fallback answers after a failed read: the cached value while the failure is an outage and the
// value is within MaxStaleness, else the error. r.mu must be held.
func (r *Reader) fallback(e *entry, ferr *Error, now time.Time, st resource.SecretStore, path string) (Value, string, error) {
	if (ferr.Kind == KindUnreachable || ferr.transient) && e.has {
		age := now.Sub(e.read)
		if age < r.cfg.MaxStaleness {
			return Value{Version: e.version, Read: e.read, Stale: true}, e.value, nil
		}
		return Value{}, "", &Error{Kind: KindStale, Vault: st.VaultURI, Path: path,
			Err: fmt.Errorf("Key Vault has been unreachable and the cached value is %s old, over the maximum staleness %s: %w", age.Round(time.Second), r.cfg.MaxStaleness, ferr.Err)}
	}
	return Value{}, "", ferr
}

func (r *Reader) fetch(e *entry, f *flight, st resource.SecretStore, path string) {
	sp, _ := resource.ParseSecretPath(path)
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
	defer cancel()
	value, version, err := r.read(ctx, st, path, sp)
	r.mu.Lock()
	defer r.mu.Unlock()
	e.call = nil
	now := r.now()
	if err != nil {
		f.err = err
		e.lastErr = err
		e.notBefore = now.Add(failureBackoff)
		r.log.Warn("could not read a secret from Key Vault", "store", st.ID, "vault", st.VaultURI, "path", path, "kind", string(err.Kind), "err", err.Err)
	} else {
		f.value, f.version = value, version
		if !e.has || e.version != version {
			r.log.Info("read a secret from Key Vault", "store", st.ID, "vault", st.VaultURI, "path", path, "version", version)
		}
		e.value, e.version, e.read, e.has = value, version, now, true
		e.lastErr, e.notBefore = nil, time.Time{}
	}
	close(f.done)
}

func (r *Reader) read(ctx context.Context, st resource.SecretStore, path string, sp resource.SecretPath) (string, string, *Error) {
	fail := func(k Kind, err error) (string, string, *Error) {
		return "", "", &Error{Kind: k, Vault: st.VaultURI, Path: path, Err: err}
	}
	c, err := r.client(st)
	if err != nil {
		return fail(KindUnreachable, err)
	}
	resp, err := c.GetSecret(ctx, sp.Name, sp.Version, nil)
	if err != nil {
		v, ver, e := fail(classify(err))
		e.transient = e.Kind == KindAuth && !strings.Contains(err.Error(), "Identity not found") &&
			!strings.Contains(e.Err.Error(), "refused")
		return v, ver, e
	}
	if resp.Value == nil {
		return fail(KindNotFound, errors.New("Key Vault returned no value"))
	}
	version := sp.Version
	if resp.ID != nil {
		version = resp.ID.Version()
	}
	return *resp.Value, version, nil
}

var errorCodeRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{0,64}$`)

// classify turns an SDK error into a Kind and a short message without response bodies.
func classify(err error) (Kind, error) {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		text := re.Error()
		code := re.ErrorCode
		if !errorCodeRE.MatchString(code) {
			// Key Vault's codes are words ("Forbidden", "SecretDisabled"); a vault that says
			// anything else does not get it into the client's FATAL and the node's logs.
			code = "(an error code that is not Key Vault's)"
		}
		msg := fmt.Errorf("Key Vault answered HTTP %d %s", re.StatusCode, code)
		switch {
		case re.StatusCode == http.StatusForbidden && (strings.Contains(text, "SecretDisabled") || strings.Contains(text, "disabled secret")):
			return KindDisabled, fmt.Errorf("%w: the secret is disabled", msg)
		case re.StatusCode == http.StatusForbidden:
			return KindForbidden, fmt.Errorf("%w: the identity is not authorized to get secrets", msg)
		case re.StatusCode == http.StatusNotFound:
			return KindNotFound, fmt.Errorf("%w: no such secret or version", msg)
		case re.StatusCode == http.StatusUnauthorized:
			return KindAuth, fmt.Errorf("%w: the access token was refused", msg)
		}
		return KindUnreachable, msg
	}
	var ae interface{ NonRetriable() }
	if errors.As(err, &ae) || strings.Contains(err.Error(), "ManagedIdentityCredential") {
		return KindAuth, fmt.Errorf("get a managed identity token for Key Vault: %s", oneLine(err.Error()))
	}
	return KindUnreachable, errors.New(oneLine(err.Error()))
}

func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.Trim(l, "-") == "" {
			continue
		}
		parts = append(parts, l)
	}
	out := strings.Join(parts, " ")
	if len(out) > 400 {
		out = out[:400] + "…"
	}
	return out
}

// extract applies ?key=field to a secret's whole value.
func extract(v Value, raw string, st resource.SecretStore, path string, sp resource.SecretPath) (Value, error) {
	if sp.Key == "" {
		v.Value = raw
		return v, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &obj); err != nil {
		// The decoder's message may quote the value: say only what was expected.
		return Value{}, &Error{Kind: KindNoKey, Vault: st.VaultURI, Path: path, Err: fmt.Errorf("the value of version %s is not a JSON object, so it has no field %q", v.Version, sp.Key)}
	}
	f, ok := obj[sp.Key]
	if !ok {
		return Value{}, &Error{Kind: KindNoKey, Vault: st.VaultURI, Path: path, Err: fmt.Errorf("the JSON object in version %s has no field %q", v.Version, sp.Key)}
	}
	var s string
	if err := json.Unmarshal(f, &s); err != nil {
		return Value{}, &Error{Kind: KindNoKey, Vault: st.VaultURI, Path: path, Err: fmt.Errorf("field %q of version %s is not a string", sp.Key, v.Version)}
	}
	v.Value = s
	return v, nil
}
