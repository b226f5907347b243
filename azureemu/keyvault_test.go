package azureemu

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestKeyVaultREST checks the vault's wire shape as Key Vault has it: TLS for *.vault.azure.net
// with the emulator's CA; api-version required; the 401 bearer challenge naming the tenant and
// https://vault.azure.net; tokens for another audience refused; per-identity access (403
// ForbiddenByRbac); versions; disabled secrets (403 SecretDisabled); missing secrets (404
// SecretNotFound); 429 with Retry-After; outages (503).
func TestKeyVaultREST(t *testing.T) {
	t.Parallel()
	reader, stranger := newIdentity("kv-reader"), newIdentity("kv-stranger")
	e := startTestEmulator(t, Config{Users: []Identity{reader, stranger}})
	e.GrantSecretsUser("myvault", reader.ObjectID)
	v1, err := e.SetSecret("myvault", "pg-user", "alice")
	if err != nil {
		t.Fatal(err)
	}
	v2, err := e.SetSecret("myvault", "pg-user", "bob")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.SetSecret("myvault", "off", "x"); err != nil {
		t.Fatal(err)
	}
	if err := e.SetSecretEnabled("myvault", "off", "", false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.SetSecret("myvault", "bad_name", "x"); err == nil {
		t.Fatal("a secret name with _ was accepted")
	}

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.CACertPEM())
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, e.VaultAddr())
		},
	}}
	t.Cleanup(hc.CloseIdleConnections)
	vaultTok := func(id Identity, aud string) string {
		tok, err := e.IssueToken(id, aud, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	get := func(path, token string) (*http.Response, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, e.VaultURI("myvault")+strings.TrimPrefix(path, "/"), nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var body map[string]any
		_ = json.Unmarshal(b, &body)
		return resp, body
	}
	code := func(body map[string]any) string {
		e, _ := body["error"].(map[string]any)
		c, _ := e["code"].(string)
		if in, ok := e["innererror"].(map[string]any); ok {
			ic, _ := in["code"].(string)
			c += "/" + ic
		}
		return c
	}
	const av = "?api-version=2026-04-01"
	good := vaultTok(reader, VaultResource)

	resp, _ := get("secrets/pg-user"+av, "")
	if ch := resp.Header.Get("WWW-Authenticate"); resp.StatusCode != 401 ||
		ch != `Bearer authorization="https://login.microsoftonline.com/`+e.TenantID()+`", resource="https://vault.azure.net"` {
		t.Fatalf("no token: %d %q", resp.StatusCode, ch)
	}
	if resp, body := get("secrets/pg-user", good); resp.StatusCode != 400 || code(body) != "BadParameter" {
		t.Errorf("no api-version: %d %v", resp.StatusCode, body)
	}
	if resp, body := get("secrets/pg-user"+av, vaultTok(reader, Resource)); resp.StatusCode != 401 || !strings.Contains(body["error"].(map[string]any)["message"].(string), "audience") {
		t.Errorf("a PostgreSQL token: %d %v", resp.StatusCode, body)
	}
	if resp, body := get("secrets/pg-user"+av, vaultTok(stranger, VaultResource)); resp.StatusCode != 403 || code(body) != "Forbidden/ForbiddenByRbac" {
		t.Errorf("an identity without access: %d %v", resp.StatusCode, body)
	}
	resp, body := get("secrets/pg-user"+av, good)
	if resp.StatusCode != 200 || body["value"] != "bob" || body["id"] != e.VaultURI("myvault")+"secrets/pg-user/"+v2 {
		t.Errorf("current version: %d %v", resp.StatusCode, body)
	}
	if resp, body := get("secrets/pg-user/"+v1+av, good); resp.StatusCode != 200 || body["value"] != "alice" {
		t.Errorf("version 1: %d %v", resp.StatusCode, body)
	}
	if resp, body := get("secrets/nope"+av, good); resp.StatusCode != 404 || code(body) != "SecretNotFound" {
		t.Errorf("missing: %d %v", resp.StatusCode, body)
	}
	if resp, body := get("secrets/off"+av, good); resp.StatusCode != 403 || code(body) != "Forbidden/SecretDisabled" {
		t.Errorf("disabled: %d %v", resp.StatusCode, body)
	}
	e.ThrottleVault(1, 3*time.Second)
	if resp, _ := get("secrets/pg-user"+av, good); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "3" {
		t.Errorf("throttled: %d %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	e.SetVaultOutage(true)
	if resp, _ := get("secrets/pg-user"+av, good); resp.StatusCode != 503 {
		t.Errorf("outage: %d", resp.StatusCode)
	}
	e.SetVaultOutage(false)
	var sawReader bool
	for _, r := range e.VaultRequests() {
		if r.Status == 200 && r.ClientID == reader.ClientID && r.ObjectID == reader.ObjectID && r.Vault == "myvault" {
			sawReader = true
		}
	}
	if !sawReader {
		t.Errorf("requests do not record the reader: %+v", e.VaultRequests())
	}
}
