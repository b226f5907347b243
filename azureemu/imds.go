package azureemu

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// IMDSTokenPath is the path of the IMDS managed identity token endpoint.
// Source: "How to use managed identities for Azure resources on an Azure VM to
// acquire an access token" (Microsoft Learn).
const IMDSTokenPath = "/metadata/identity/oauth2/token"

// imdsAPIVersions are the api-version values IMDS accepts for the token
// endpoint (2018-02-01 is what MSAL and azidentity send).
var imdsAPIVersions = map[string]bool{"2018-02-01": true, "2019-08-01": true}

// imdsTokenResponse is the JSON IMDS returns; numbers are strings, as Azure
// sends them.
type imdsTokenResponse struct {
	AccessToken  string `json:"access_token"`
	ClientID     string `json:"client_id"`
	ExpiresIn    string `json:"expires_in"`
	ExpiresOn    string `json:"expires_on"`
	ExtExpiresIn string `json:"ext_expires_in"`
	NotBefore    string `json:"not_before"`
	Resource     string `json:"resource"`
	TokenType    string `json:"token_type"`
}

type imdsError struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

func (e *Emulator) startIMDS() error {
	ln, err := net.Listen("tcp", net.JoinHostPort(e.cfg.ListenIP, "0"))
	if err != nil {
		return fmt.Errorf("listen for IMDS: %w", err)
	}
	e.imdsLn = ln
	mux := http.NewServeMux()
	mux.HandleFunc(IMDSTokenPath, e.serveToken)
	e.imdsSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	go func() { _ = e.imdsSrv.Serve(ln) }()
	return nil
}

// serveToken answers GET /metadata/identity/oauth2/token the way IMDS does:
// Metadata: true is required, api-version and resource are required,
// client_id (or object_id) selects a user-assigned identity and its absence the
// system-assigned one.
func (e *Emulator) serveToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	clientID := q.Get("client_id")
	resource := q.Get("resource")
	status := e.token(w, r, q)
	e.mu.Lock()
	e.requests = append(e.requests, IMDSRequest{Time: time.Now(), ClientID: clientID, Resource: resource, Status: status})
	e.mu.Unlock()
	e.log.Debug("IMDS token request", "client_id", clientID, "resource", resource, "status", status)
}

func (e *Emulator) token(w http.ResponseWriter, r *http.Request, q url.Values) int {
	e.mu.Lock()
	outage := e.outage
	e.mu.Unlock()
	if status := e.imdsFaultAnswer(w); status != 0 {
		return status
	}
	switch {
	case outage:
		return writeIMDSError(w, http.StatusServiceUnavailable, "service_unavailable", "The Instance Metadata Service is temporarily unavailable. Retry the request.")
	case r.Method != http.MethodGet:
		return writeIMDSError(w, http.StatusMethodNotAllowed, "invalid_request", "Only GET is supported")
	case !strings.EqualFold(r.Header.Get("Metadata"), "true"):
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Required metadata header not specified")
	case r.Header.Get("X-Forwarded-For") != "":
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Request with X-Forwarded-For header is not allowed")
	case q.Get("api-version") == "":
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Required query variable 'api-version' is missing")
	case !imdsAPIVersions[q.Get("api-version")]:
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Invalid version")
	case q.Get("resource") == "":
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Required audience parameter not specified")
	case q.Get("msi_res_id") != "" || q.Get("mi_res_id") != "":
		// The emulator names identities by client ID and object ID only.
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Identity not found")
	}
	resource := q.Get("resource")
	u, err := url.Parse(resource)
	if err != nil || !u.IsAbs() || u.Host == "" {
		return writeIMDSError(w, http.StatusBadRequest, "invalid_resource", "AADSTS500011: The resource principal named "+resource+" was not found in the tenant.")
	}
	id, ok := e.identityFor(q.Get("client_id"), q.Get("object_id"))
	if !ok {
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Identity not found")
	}
	now := time.Now().Truncate(time.Second)
	exp := now.Add(e.cfg.TokenLifetime)
	// Entra ID v1 tokens carry the resource without the trailing slash the
	// caller may have added.
	tok, err := e.issueForIMDS(id, strings.TrimSuffix(resource, "/"), now, exp)
	if err != nil {
		return writeIMDSError(w, http.StatusInternalServerError, "unknown_error", err.Error())
	}
	e.mu.Lock()
	e.issued = append(e.issued, tok)
	e.mu.Unlock()
	body := imdsTokenResponse{
		AccessToken:  tok,
		ClientID:     id.ClientID,
		ExpiresIn:    strconv.FormatInt(int64(e.cfg.TokenLifetime/time.Second), 10),
		ExpiresOn:    strconv.FormatInt(exp.Unix(), 10),
		ExtExpiresIn: strconv.FormatInt(int64(e.cfg.TokenLifetime/time.Second), 10),
		NotBefore:    strconv.FormatInt(now.Unix(), 10),
		Resource:     resource,
		TokenType:    "Bearer",
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(body)
	return http.StatusOK
}

func writeIMDSError(w http.ResponseWriter, status int, code, desc string) int {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(imdsError{Error: code, ErrorDescription: desc})
	return status
}
