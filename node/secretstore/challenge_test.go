package secretstore

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/ferryhq/ferry/resource"
)

// scopeRecorder is the node's managed identity as a hostile vault sees it: it hands out a token
// for whatever scope it is asked, and records the scopes.
type scopeRecorder struct {
	mu     sync.Mutex
	scopes []string
}

func (s *scopeRecorder) GetToken(_ context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scopes = append(s.scopes, strings.Join(opts.Scopes, " "))
	return azcore.AccessToken{Token: "token-for " + strings.Join(opts.Scopes, " "), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// TestHostileChallengeGetsNoOtherToken: a vault under a Key Vault suffix (any tenant can create
// one, and an admin may point a store at it) answers with a 401 challenge naming another
// resource. azsecrets only checks that the challenge's host is a suffix of the vault's host, so
// "https://azure.net" or "https://management.azure.com@vault.azure.net" pass it; the node must
// still ask its identity only for Key Vault's scope, and send the vault no other token.
func TestHostileChallengeGetsNoOtherToken(t *testing.T) {
	for _, tc := range []struct{ name, vault, resource, want string }{
		{"parent domain", "https://evil.vault.azure.net/", "https://azure.net", "https://vault.azure.net/.default"},
		{"user info", "https://evil.vault.azure.net/", "https://management.azure.com@vault.azure.net", "https://vault.azure.net/.default"},
		{"top-level domain", "https://evil.vault.azure.net/", "https://net", "https://vault.azure.net/.default"},
		{"China cloud", "https://evil.vault.azure.cn/", "https://azure.cn", "https://vault.azure.cn/.default"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var auths []string
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				auths = append(auths, r.Header.Get("Authorization"))
				mu.Unlock()
				w.Header().Set("WWW-Authenticate", `Bearer authorization="https://login.microsoftonline.com/evil-tenant", resource="`+tc.resource+`"`)
				w.WriteHeader(http.StatusUnauthorized)
			}))
			t.Cleanup(srv.Close)
			addr := srv.Listener.Addr().String()
			tr := &http.Transport{
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, network, addr)
				},
				// The hostile vault's certificate is not what this test is about.
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec
			}
			t.Cleanup(tr.CloseIdleConnections)
			rec := &scopeRecorder{}
			r := New(Config{Credential: func(string) azcore.TokenCredential { return rec }, HTTPClient: &http.Client{Transport: tr},
				MaxRetries: -1, Timeout: 5 * time.Second})
			st := resource.SecretStore{ID: "se-evil", Name: "evil", Type: resource.SecretStoreTypeAzureKeyVault, VaultURI: tc.vault}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := r.Get(ctx, st, "pg-user")
			if err == nil {
				t.Fatal("read a secret from a vault that only answers 401")
			}
			if !strings.Contains(err.Error(), "not Key Vault's "+tc.want) {
				t.Errorf("error %q does not say the challenge's scope was refused", err)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			for _, s := range rec.scopes {
				if s != tc.want {
					t.Errorf("the node asked its identity for a token for %q on a challenge from %s", s, tc.vault)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for _, a := range auths {
				if a != "" && a != "Bearer token-for "+tc.want {
					t.Errorf("the vault was sent %q", a)
				}
			}
		})
	}
}

// hostileVault starts a TLS server that answers Key Vault's challenge for Key Vault's resource and
// then serves handler; it returns a Reader whose identity hands out tokens, and a store naming
// the vault.
func hostileVault(t *testing.T, handler http.HandlerFunc) (*Reader, resource.SecretStore) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", `Bearer authorization="https://login.microsoftonline.com/t", resource="https://vault.azure.net"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		handler(w, r)
	}))
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the vault's certificate is not what these tests are about
	}
	t.Cleanup(tr.CloseIdleConnections)
	rec := &scopeRecorder{}
	r := New(Config{Credential: func(string) azcore.TokenCredential { return rec }, HTTPClient: &http.Client{Transport: tr},
		MaxRetries: -1, Timeout: 10 * time.Second})
	return r, resource.SecretStore{ID: "se-evil", Name: "evil", Type: resource.SecretStoreTypeAzureKeyVault, VaultURI: "https://evil.vault.azure.net/"}
}

// TestHostileVaultHugeAnswer: Key Vault's secrets are at most 25 KiB, but a hostile vault can send
// an endless answer; the node reads at most maxAnswer bytes of it and fails the read, rather than
// holding the whole answer in memory.
func TestHostileVaultHugeAnswer(t *testing.T) {
	r, st := hostileVault(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id":"https://evil.vault.azure.net/secrets/pg-user/0123456789abcdef0123456789abcdef","value":"`))
		chunk := []byte(strings.Repeat("a", 64<<10))
		for range 64 { // 4 MiB
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
		_, _ = w.Write([]byte(`"}`))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, err := r.Get(ctx, st, "pg-user")
	if err == nil {
		t.Fatalf("read a %d-byte secret from a hostile vault", len(v.Value))
	}
	if !strings.Contains(err.Error(), "larger than") {
		t.Errorf("error %q does not say the answer was too large", err)
	}
}

// TestHostileVaultStrings: what a vault says besides the value (the secret's ID, whose last
// segment is the version that logs and diagnostics show, and an error's code, which goes into the
// client's FATAL) reaches the node's messages only when it has Key Vault's shape.
func TestHostileVaultStrings(t *testing.T) {
	junk := "\x1b[31mFATAL\ninjected " + strings.Repeat("x", 4096)
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		wantErr bool
	}{
		{"version", 200, `{"id":"https://evil.vault.azure.net/secrets/pg-user/` + strings.ReplaceAll(junk, "\n", `\n`) + `","value":"role"}`, false},
		{"version with slashes", 200, `{"id":"https://evil.vault.azure.net/secrets/pg-user/a/b/c?x=1","value":"role"}`, false},
		{"error code", 403, `{"error":{"code":"` + strings.ReplaceAll(junk, "\n", `\n`) + `","message":"no"}}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, st := hostileVault(t, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(strings.ReplaceAll(tc.body, "\x1b", `\u001b`)))
			})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			v, err := r.Get(ctx, st, "pg-user")
			if (err != nil) != tc.wantErr {
				t.Fatalf("Get: %v, want error %v", err, tc.wantErr)
			}
			text := v.Version
			if err != nil {
				text = err.Error()
			}
			if strings.ContainsAny(text, "\x1b\n") || strings.Contains(text, "injected") || len(text) > 600 {
				t.Errorf("the vault's text reached the node's message: %q", text)
			}
		})
	}
}
