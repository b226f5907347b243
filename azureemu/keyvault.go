package azureemu

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// VaultResource is the resource URI (and JWT audience) of Azure Key Vault; the vault's 401
// challenge names it and accepts only tokens whose aud claim equals it.
const VaultResource = "https://vault.azure.net"

// VaultHostSuffix is the DNS suffix of Key Vaults in Azure's public cloud
// (<vaultname>.vault.azure.net), which the vault's certificate covers (*.vault.azure.net).
const VaultHostSuffix = ".vault.azure.net"

// vaultAPIVersions are the Key Vault data-plane api-version values the emulator accepts (azsecrets
// v1.5 sends 2026-04-01; older SDKs 7.x).
var vaultAPIVersions = map[string]bool{"7.0": true, "7.1": true, "7.2": true, "7.3": true, "7.4": true, "7.5": true, "7.6": true, "2025-07-01": true, "2026-04-01": true}

// secretNameRE is Key Vault's rule for object names: 1-127 letters, digits and dashes.
var secretNameRE = regexp.MustCompile(`^[0-9a-zA-Z-]{1,127}$`)

// VaultRequest records one request the Key Vault answered: the vault, the secret and version asked
// for, the caller's identity from its token (empty for the unauthenticated first request the SDK
// sends to elicit the challenge) and the HTTP status of the answer. No secret value is kept here.
type VaultRequest struct {
	Time     time.Time
	Vault    string
	Secret   string
	Version  string
	ClientID string // the token's appid claim
	ObjectID string // the token's oid claim
	Status   int
}

type secretVersion struct {
	version string
	value   string
	enabled bool
	created time.Time
}

type vault struct {
	secrets map[string][]*secretVersion // by lower-case name; newest last
	readers map[string]bool             // object IDs with "Key Vault Secrets User"
}

// vaultServer is the TLS HTTPS listener that stands in for every <name>.vault.azure.net.
type vaultServer struct {
	ln  net.Listener
	srv *http.Server

	mu        sync.Mutex
	vaults    map[string]*vault // by lower-case vault name
	requests  []VaultRequest
	outage    bool
	throttled int           // requests still to answer 429
	retryIn   time.Duration // Retry-After of those
}

func (e *Emulator) startVault() error {
	cert, err := e.ca.issue("*"+VaultHostSuffix, strings.TrimPrefix(VaultHostSuffix, "."))
	if err != nil {
		return fmt.Errorf("start key vault: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(e.cfg.ListenIP, "0"))
	if err != nil {
		return fmt.Errorf("listen for key vault: %w", err)
	}
	v := &vaultServer{ln: ln, vaults: make(map[string]*vault)}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { e.serveVault(w, r) })
	v.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	e.vault = v
	go func() { _ = v.srv.ServeTLS(ln, "", "") }()
	return nil
}

// VaultAddr is "127.0.0.1:PORT" (Config.ListenIP) of the Key Vault's HTTPS listener, which answers for every
// <name>.vault.azure.net by the request's Host; dial it for those names (a host override).
func (e *Emulator) VaultAddr() string { return e.vault.ln.Addr().String() }

// VaultURI is the vault URI of the named vault, "https://<name>.vault.azure.net/".
func (e *Emulator) VaultURI(name string) string { return "https://" + VaultHost(name) + "/" }

// VaultHost is the host name of the named vault.
func VaultHost(name string) string { return strings.ToLower(name) + VaultHostSuffix }

// AddVault creates an empty vault (no-op if it exists).
func (e *Emulator) AddVault(name string) {
	v := e.vault
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.vaults[strings.ToLower(name)]; !ok {
		v.vaults[strings.ToLower(name)] = &vault{secrets: map[string][]*secretVersion{}, readers: map[string]bool{}}
	}
}

// GrantSecretsUser gives the identity with objectID the "Key Vault Secrets User" role on the vault
// (read secret values); RevokeSecretsUser takes it away. Other identities get 403 Forbidden.
func (e *Emulator) GrantSecretsUser(vaultName, objectID string) {
	e.AddVault(vaultName)
	v := e.vault
	v.mu.Lock()
	defer v.mu.Unlock()
	v.vaults[strings.ToLower(vaultName)].readers[strings.ToLower(objectID)] = true
}

// RevokeSecretsUser undoes GrantSecretsUser.
func (e *Emulator) RevokeSecretsUser(vaultName, objectID string) {
	v := e.vault
	v.mu.Lock()
	defer v.mu.Unlock()
	if vt, ok := v.vaults[strings.ToLower(vaultName)]; ok {
		delete(vt.readers, strings.ToLower(objectID))
	}
}

// SetSecret stores a new, enabled version of a secret (creating the vault and secret as needed) and
// returns the version's ID (32 hex digits, as Key Vault's). The new version becomes current.
func (e *Emulator) SetSecret(vaultName, name, value string) (string, error) {
	if !secretNameRE.MatchString(name) {
		return "", fmt.Errorf("set secret %q: Key Vault names are 1-127 letters, digits and dashes", name)
	}
	e.AddVault(vaultName)
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	ver := hex.EncodeToString(b)
	v := e.vault
	v.mu.Lock()
	defer v.mu.Unlock()
	vt := v.vaults[strings.ToLower(vaultName)]
	key := strings.ToLower(name)
	vt.secrets[key] = append(vt.secrets[key], &secretVersion{version: ver, value: value, enabled: true, created: time.Now()})
	return ver, nil
}

// SetSecretEnabled enables or disables a version of a secret ("" = the current version); a
// disabled version is answered 403 Forbidden with inner error SecretDisabled.
func (e *Emulator) SetSecretEnabled(vaultName, name, version string, enabled bool) error {
	v := e.vault
	v.mu.Lock()
	defer v.mu.Unlock()
	sv := v.lookup(vaultName, name, version)
	if sv == nil {
		return fmt.Errorf("set secret %s/%s enabled: no such secret or version", name, version)
	}
	sv.enabled = enabled
	return nil
}

// DeleteSecret removes a secret with all its versions.
func (e *Emulator) DeleteSecret(vaultName, name string) {
	v := e.vault
	v.mu.Lock()
	defer v.mu.Unlock()
	if vt, ok := v.vaults[strings.ToLower(vaultName)]; ok {
		delete(vt.secrets, strings.ToLower(name))
	}
}

// SetVaultOutage turns a Key Vault outage on or off: while on, the listener still accepts
// connections but every request gets 503 Service Unavailable, as during a regional outage.
func (e *Emulator) SetVaultOutage(on bool) {
	v := e.vault
	v.mu.Lock()
	defer v.mu.Unlock()
	v.outage = on
}

// ThrottleVault answers the next n requests with 429 Too Many Requests and Retry-After (whole
// seconds, at least 1), as Key Vault does over its service limits.
func (e *Emulator) ThrottleVault(n int, retryAfter time.Duration) {
	v := e.vault
	v.mu.Lock()
	defer v.mu.Unlock()
	v.throttled, v.retryIn = n, retryAfter
}

// VaultRequests returns a copy of the requests the Key Vault has answered, oldest first.
func (e *Emulator) VaultRequests() []VaultRequest {
	v := e.vault
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]VaultRequest(nil), v.requests...)
}

// lookup finds a version ("" = current) of a secret; v.mu must be held.
func (v *vaultServer) lookup(vaultName, name, version string) *secretVersion {
	vt, ok := v.vaults[strings.ToLower(vaultName)]
	if !ok {
		return nil
	}
	versions := vt.secrets[strings.ToLower(name)]
	if len(versions) == 0 {
		return nil
	}
	if version == "" {
		return versions[len(versions)-1]
	}
	for _, sv := range versions {
		if sv.version == version {
			return sv
		}
	}
	return nil
}

type vaultError struct {
	Error vaultErrorBody `json:"error"`
}

type vaultErrorBody struct {
	Code       string          `json:"code"`
	Message    string          `json:"message"`
	InnerError *vaultErrorBody `json:"innererror,omitempty"`
}

type secretBundle struct {
	Value      string            `json:"value"`
	ID         string            `json:"id"`
	Attributes secretAttributes  `json:"attributes"`
	Tags       map[string]string `json:"tags"`
}

type secretAttributes struct {
	Enabled       bool   `json:"enabled"`
	Created       int64  `json:"created"`
	Updated       int64  `json:"updated"`
	RecoveryLevel string `json:"recoveryLevel"`
}

// serveVault answers GET /secrets/{name}[/{version}]?api-version=… the way Key Vault does: without
// a bearer token, 401 with the challenge the SDK answers (authorization = the tenant's authority,
// resource = https://vault.azure.net); with one, the token must be the emulator's for that
// audience, and its oid must hold "Key Vault Secrets User" on the vault.
func (e *Emulator) serveVault(w http.ResponseWriter, r *http.Request) {
	rec := VaultRequest{Time: time.Now()}
	rec.Status = e.vaultAnswer(w, r, &rec)
	v := e.vault
	v.mu.Lock()
	v.requests = append(v.requests, rec)
	v.mu.Unlock()
	e.log.Debug("key vault request", "vault", rec.Vault, "secret", rec.Secret, "version", rec.Version, "client_id", rec.ClientID, "status", rec.Status)
}

func writeVaultError(w http.ResponseWriter, status int, code, msg, inner string) int {
	body := vaultError{Error: vaultErrorBody{Code: code, Message: msg}}
	if inner != "" {
		body.Error.InnerError = &vaultErrorBody{Code: inner}
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
	return status
}

func (e *Emulator) vaultAnswer(w http.ResponseWriter, r *http.Request, rec *VaultRequest) int {
	v := e.vault
	host := strings.ToLower(r.Host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	name, ok := strings.CutSuffix(host, VaultHostSuffix)
	if !ok || name == "" || strings.Contains(name, ".") {
		return writeVaultError(w, http.StatusNotFound, "NotFound", "No vault at host "+r.Host, "")
	}
	rec.Vault = name
	v.mu.Lock()
	outage := v.outage
	throttled := v.throttled > 0
	retryIn := v.retryIn
	if throttled {
		v.throttled--
	}
	_, exists := v.vaults[name]
	v.mu.Unlock()
	if outage {
		return writeVaultError(w, http.StatusServiceUnavailable, "ServiceUnavailable", "The service is temporarily unavailable. Retry the request.", "")
	}
	if throttled {
		secs := max(1, int(retryIn.Round(time.Second)/time.Second))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		return writeVaultError(w, http.StatusTooManyRequests, "Throttled", "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached", "")
	}
	if !exists {
		// A vault name that does not exist does not resolve on Azure; here it is a 404.
		return writeVaultError(w, http.StatusNotFound, "VaultNotFound", "The vault "+name+" does not exist.", "")
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] != "secrets" {
		return writeVaultError(w, http.StatusBadRequest, "BadParameter", "The request URI is not a secrets operation this emulator serves: "+r.URL.Path, "")
	}
	rec.Secret = parts[1]
	if len(parts) == 3 {
		rec.Version = parts[2]
	}
	if r.Method != http.MethodGet {
		return writeVaultError(w, http.StatusMethodNotAllowed, "BadParameter", "Only GET of secrets is emulated", "")
	}
	if !vaultAPIVersions[r.URL.Query().Get("api-version")] {
		return writeVaultError(w, http.StatusBadRequest, "BadParameter", "The request URI contains an invalid or missing 'api-version' parameter", "")
	}
	authz := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(authz, "Bearer ")
	if !ok || tok == "" {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization="https://login.microsoftonline.com/%s", resource="%s"`, e.cfg.TenantID, VaultResource))
		return writeVaultError(w, http.StatusUnauthorized, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", "")
	}
	claims, err := e.validateTokenFor(tok, time.Now(), VaultResource)
	if err != nil {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization="https://login.microsoftonline.com/%s", resource="%s"`, e.cfg.TenantID, VaultResource))
		msg := "AKV10032: Invalid issuer or token: " + err.Error()
		if strings.Contains(err.Error(), "audience") {
			msg = "AKV10022: Invalid audience: " + err.Error()
		}
		return writeVaultError(w, http.StatusUnauthorized, "Unauthorized", msg, "")
	}
	rec.ClientID, rec.ObjectID = claims.AppID, claims.OID
	v.mu.Lock()
	allowed := v.vaults[name].readers[strings.ToLower(claims.OID)]
	var bundle *secretBundle
	var disabled bool
	sv := v.lookup(name, rec.Secret, rec.Version)
	if sv != nil {
		disabled = !sv.enabled
		bundle = &secretBundle{
			Value: sv.value,
			ID:    "https://" + host + "/secrets/" + rec.Secret + "/" + sv.version,
			Attributes: secretAttributes{Enabled: sv.enabled, Created: sv.created.Unix(), Updated: sv.created.Unix(),
				RecoveryLevel: "Recoverable+Purgeable"},
			Tags: map[string]string{},
		}
	}
	v.mu.Unlock()
	switch {
	case !allowed:
		return writeVaultError(w, http.StatusForbidden, "Forbidden",
			fmt.Sprintf("Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid=%s;oid=%s\r\nAction: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\nAssignment: (not found)\r\nDecisionReason: 'DeniedWithNoValidRBAC'\r\nVault: %s\r\n", claims.AppID, claims.OID, name),
			"ForbiddenByRbac")
	case bundle == nil && rec.Version != "":
		return writeVaultError(w, http.StatusNotFound, "SecretNotFound", fmt.Sprintf("A secret with (name/id) %s/%s was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command.", rec.Secret, rec.Version), "")
	case bundle == nil:
		return writeVaultError(w, http.StatusNotFound, "SecretNotFound", fmt.Sprintf("A secret with (name/id) %s was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command.", rec.Secret), "")
	case disabled:
		return writeVaultError(w, http.StatusForbidden, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled")
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(bundle)
	return http.StatusOK
}

func (e *Emulator) closeVault() {
	if e.vault == nil || e.vault.srv == nil {
		return
	}
	_ = e.vault.srv.Close()
}
