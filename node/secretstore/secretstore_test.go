package secretstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/node/tokensource"
	"github.com/ferryhq/ferry/resource"
)

// fakeClock is a settable clock for the cache's decisions (the SDK's own timers stay real).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testReader starts the emulator and returns a Reader that reaches its vault the way the node does
// (the real azsecrets client, tokens from the emulator's IMDS through tokensource, TLS verified
// with the emulator's CA, the vault host dialled at the emulator's address), a store for the vault
// "kvtest" read by a user-assigned identity that may read it, and the reader's clock.
func testReader(t *testing.T, cfg Config) (*Reader, *azureemu.Emulator, resource.SecretStore, *fakeClock) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	emu, err := azureemu.Start(ctx, azureemu.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	id := azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: "kv-reader"}
	emu.AddUserIdentity(id)
	emu.GrantSecretsUser("kvtest", id.ObjectID)
	tokens, err := tokensource.New(tokensource.Config{IMDSEndpoint: emu.IMDSEndpoint()})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(emu.CACertPEM())
	addr := emu.VaultAddr()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			if host, _, _ := net.SplitHostPort(a); host != azureemu.VaultHost("kvtest") {
				return nil, errors.New("test transport: only the test vault may be dialled, not " + a)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}
	t.Cleanup(tr.CloseIdleConnections)
	cfg.Credential = tokens.Credential
	cfg.HTTPClient = &http.Client{Transport: tr}
	r := New(cfg)
	clock := &fakeClock{t: time.Now()}
	r.now = clock.now
	st := resource.SecretStore{ID: "se-test", Name: "kv", Type: resource.SecretStoreTypeAzureKeyVault,
		VaultURI: emu.VaultURI("kvtest"), ManagedIdentityClientID: id.ClientID}
	return r, emu, st, clock
}

func served(emu *azureemu.Emulator, secret string) int {
	n := 0
	for _, r := range emu.VaultRequests() {
		if r.Secret == secret && r.Status == http.StatusOK {
			n++
		}
	}
	return n
}

// TestReaderCacheAndStaleness: concurrent readers share one request; the value is cached for the
// TTL and read again after it (rotation); a version in the path pins it; while the vault is down
// the cached value is used until MaxStaleness, then the read fails as KindStale; 429 with
// Retry-After is retried. The cache's clock is the test's, so nothing here depends on timing.
func TestReaderCacheAndStaleness(t *testing.T) {
	r, emu, st, clock := testReader(t, Config{TTL: time.Minute, MaxStaleness: 10 * time.Minute, Timeout: 20 * time.Second})
	ctx := context.Background()
	v1, err := emu.SetSecret("kvtest", "pg-user", "alice-1")
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := r.Get(ctx, st, "pg-user")
			if err == nil && (v.Value != "alice-1" || v.Version != v1) {
				err = errors.New("got " + v.Value + " version " + v.Version)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := served(emu, "pg-user"); n != 1 {
		t.Fatalf("16 concurrent readers made %d reads, want 1 (single flight)", n)
	}

	// Rotation: the old value within the TTL, the new one after it.
	if _, err := emu.SetSecret("kvtest", "pg-user", "alice-2"); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Get(ctx, st, "pg-user"); err != nil || v.Value != "alice-1" {
		t.Fatalf("within the TTL: %q, %v", v.Value, err)
	}
	clock.advance(time.Minute)
	if v, err := r.Get(ctx, st, "pg-user"); err != nil || v.Value != "alice-2" || v.Stale {
		t.Fatalf("after the TTL: %+v, %v", v, err)
	}
	// A pinned version keeps its value.
	if v, err := r.Get(ctx, st, "pg-user/"+v1); err != nil || v.Value != "alice-1" {
		t.Fatalf("pinned version: %q, %v", v.Value, err)
	}

	// Outage: stale but usable until MaxStaleness, then KindStale.
	emu.SetVaultOutage(true)
	clock.advance(2 * time.Minute)
	v, err := r.Get(ctx, st, "pg-user")
	if err != nil || v.Value != "alice-2" || !v.Stale {
		t.Fatalf("during an outage within the staleness: %+v, %v", v, err)
	}
	clock.advance(9 * time.Minute)
	_, err = r.Get(ctx, st, "pg-user")
	var se *Error
	if !errors.As(err, &se) || se.Kind != KindStale || !strings.Contains(err.Error(), "maximum staleness") {
		t.Fatalf("past the staleness: %v", err)
	}
	if h := se.Hint("system-assigned identity"); !strings.Contains(h, "firewall") {
		t.Errorf("hint %q", h)
	}
	emu.SetVaultOutage(false)
	clock.advance(time.Minute) // past the failure backoff
	if v, err := r.Get(ctx, st, "pg-user"); err != nil || v.Stale || v.Value != "alice-2" {
		t.Fatalf("after the outage: %+v, %v", v, err)
	}

	// Throttled once: the SDK honours Retry-After and the read succeeds.
	emu.ThrottleVault(1, time.Second)
	clock.advance(time.Minute)
	if v, err := r.Get(ctx, st, "pg-user"); err != nil || v.Stale {
		t.Fatalf("after a 429: %+v, %v", v, err)
	}
}

// TestReaderErrorsHoldNoValue: every failure has its Kind and its text never holds the value.
func TestReaderErrorsHoldNoValue(t *testing.T) {
	r, emu, st, _ := testReader(t, Config{})
	ctx := context.Background()
	const value = "s3cr3t-not-json{"
	if _, err := emu.SetSecret("kvtest", "plain", value); err != nil {
		t.Fatal(err)
	}
	if _, err := emu.SetSecret("kvtest", "obj", `{"user":"bob","n":1}`); err != nil {
		t.Fatal(err)
	}
	if _, err := emu.SetSecret("kvtest", "off", value); err != nil {
		t.Fatal(err)
	}
	if err := emu.SetSecretEnabled("kvtest", "off", "", false); err != nil {
		t.Fatal(err)
	}
	other := st
	other.ManagedIdentityClientID = ""
	other.ID = "se-other" // the system-assigned identity, which has no role on the vault
	for _, tc := range []struct {
		store resource.SecretStore
		path  string
		kind  Kind
	}{
		{st, "plain?key=user", KindNoKey},
		{st, "obj?key=nope", KindNoKey},
		{st, "obj?key=n", KindNoKey},
		{st, "missing", KindNotFound},
		{st, "plain/0123456789abcdef0123456789abcdef", KindNotFound},
		{st, "off", KindDisabled},
		{other, "plain", KindForbidden},
	} {
		_, err := r.Get(ctx, tc.store, tc.path)
		var se *Error
		if !errors.As(err, &se) || se.Kind != tc.kind {
			t.Errorf("%s: %v, want kind %s", tc.path, err, tc.kind)
			continue
		}
		if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "bob") {
			t.Errorf("%s: the error holds the value: %v", tc.path, err)
		}
	}
	if v, err := r.Get(ctx, st, "obj?key=user"); err != nil || v.Value != "bob" {
		t.Fatalf("obj?key=user: %q, %v", v.Value, err)
	}
}

// TestReaderIMDSOutageUsesCache: when the Key Vault token cannot be had because IMDS is down (a new
// client, whose token policy holds no token yet), the cached value is used within MaxStaleness, as
// for a Key Vault outage; an identity IMDS does not know is a verdict and fails at once.
func TestReaderIMDSOutageUsesCache(t *testing.T) {
	r, emu, st, clock := testReader(t, Config{TTL: time.Minute, MaxStaleness: 10 * time.Minute, Timeout: 20 * time.Second})
	ctx := context.Background()
	if _, err := emu.SetSecret("kvtest", "pg-user", "carol"); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Get(ctx, st, "pg-user"); err != nil || v.Value != "carol" {
		t.Fatalf("first read: %+v, %v", v, err)
	}
	emu.SetIMDSOutage(true)
	r.mu.Lock()
	clear(r.clients) // as after a restart of the token policy: it must ask IMDS
	r.mu.Unlock()
	clock.advance(2 * time.Minute)
	if v, err := r.Get(ctx, st, "pg-user"); err != nil || v.Value != "carol" || !v.Stale {
		t.Fatalf("IMDS down, within the staleness: %+v, %v", v, err)
	}
	emu.SetIMDSOutage(false)

	unknown := st
	unknown.ID, unknown.ManagedIdentityClientID = "se-unknown", uuid.NewString()
	_, err := r.Get(ctx, unknown, "pg-user")
	var se *Error
	if !errors.As(err, &se) || se.Kind != KindAuth || se.transient {
		t.Fatalf("an identity IMDS does not know: %v", err)
	}
	if h := se.Hint("user-assigned managed identity " + unknown.ManagedIdentityClientID); !strings.Contains(h, "assigned to the node's VM") {
		t.Errorf("hint %q", h)
	}
}
