package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ferryhq/ferry/resource"
)

// Client calls the node's control API inside the tunnel. Dial must reach the node's tunnel address
// (for example the tunnel's userspace stack DialContext).
type Client struct {
	http *http.Client
	base string
}

// NewClient returns a Client that dials through dial. Each request has timeout as its deadline
// (0 means 30 seconds).
func NewClient(dial func(ctx context.Context, network, addr string) (net.Conn, error), timeout time.Duration) *Client {
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	return &Client{
		// No keep-alive: a connection through the tunnel costs no handshake of its own, and a pooled one
		// may have died with the tunnel (node restart, revoked device) and would stall the next call.
		http: &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}},
		base: "http://" + netip.AddrPortFrom(NodeTunnelAddress, APIPort).String(),
	}
}

// StatusError is a non-2xx answer of the node.
type StatusError struct {
	Status  int
	Message string
}

// Error is the node's own message, written for people; Status keeps the HTTP status for programs.
func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("ferry-node answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return e.Message
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decode(resp, method+" "+path, out)
}

// send makes one request and returns the node's answer, whatever its status; the caller closes
// its body.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL inside the tunnel means nothing to a person
		}
		return nil, fmt.Errorf("could not reach ferry-node: %w", err)
	}
	return resp, nil
}

func decode(resp *http.Response, what string, out any) error {
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s: read answer: %w", what, err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = string(bytes.TrimSpace(raw))
		}
		return &StatusError{Status: resp.StatusCode, Message: cut(e.Error, maxErrorMessage)}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s: decode answer: %w", what, err)
	}
	return nil
}

// maxErrorMessage bounds the message of a StatusError, in bytes: the node's own are a line or
// two, and a longer answer (from whatever a token or a proxy made us talk to) would fill the
// terminal or the app's login view.
const maxErrorMessage = 2000

// cut shortens s to at most max bytes (dropping a character cut in two), marking the cut with "…".
func cut(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return strings.ToValidUTF8(s[:max], "") + "…"
}

// Me returns who the node takes the caller to be.
func (c *Client) Me(ctx context.Context) (Me, error) {
	var m Me
	return m, c.do(ctx, http.MethodGet, "/v1/me", nil, &m)
}

// Settings returns the org's network settings.
func (c *Client) Settings(ctx context.Context) (Settings, error) {
	var s Settings
	return s, c.do(ctx, http.MethodGet, "/v1/settings", nil, &s)
}

// Resources lists the resources the caller may reach.
func (c *Client) Resources(ctx context.Context) ([]Resource, error) {
	var l ResourceList
	return l.Resources, c.do(ctx, http.MethodGet, "/v1/resources", nil, &l)
}

// AddDatasource creates a resource (admin only) and returns it with its assigned addresses.
func (c *Client) AddDatasource(ctx context.Context, r resource.Resource) (resource.Resource, error) {
	var out resource.Resource
	return out, c.do(ctx, http.MethodPost, "/v1/admin/datasources", r, &out)
}

// Datasources lists the full catalog (admin only).
func (c *Client) Datasources(ctx context.Context) (DatasourceList, error) {
	var l DatasourceList
	return l, c.do(ctx, http.MethodGet, "/v1/admin/datasources", nil, &l)
}

// Connections returns the newest connection-log records (admin only); limit 0 means the node's default.
func (c *Client) Connections(ctx context.Context, limit int) ([]Connection, error) {
	var l ConnectionList
	return l.Connections, c.do(ctx, http.MethodGet, "/v1/admin/logs/connections?limit="+strconv.Itoa(limit), nil, &l)
}

// Queries returns the newest query-log records (admin only); limit 0 means the node's default.
func (c *Client) Queries(ctx context.Context, limit int) ([]Query, error) {
	var l QueryList
	return l.Queries, c.do(ctx, http.MethodGet, "/v1/admin/logs/queries?limit="+strconv.Itoa(limit), nil, &l)
}

// Enroll redeems an enrollment token at the node over HTTPS, trusting only the certificate whose
// SHA-256 fingerprint the token carries.
func Enroll(ctx context.Context, tok EnrollToken, req EnrollRequest) (EnrollResponse, error) {
	var out EnrollResponse
	u, err := url.JoinPath(tok.URL, "/v1/enroll")
	if err != nil {
		return out, fmt.Errorf("enroll: bad node URL: %w", err)
	}
	want, err := hex.DecodeString(tok.CertSHA256)
	if err != nil {
		return out, fmt.Errorf("enroll: bad certificate fingerprint in token: %w", err)
	}
	tlsConf := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the fingerprint pin below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("node sent no certificate")
			}
			got := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if !bytes.Equal(got[:], want) {
				return fmt.Errorf("node certificate fingerprint %x does not match the enrollment token; you may not be talking to your node", got)
			}
			return nil
		},
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	b, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return out, fmt.Errorf("enroll: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hreq)
	if err != nil {
		return out, fmt.Errorf("enroll at %s: %w", tok.URL, err)
	}
	defer resp.Body.Close()
	return out, decode(resp, "enroll at "+tok.URL, &out)
}

// CertSHA256 returns the hex SHA-256 fingerprint of a certificate, as enrollment tokens carry it.
func CertSHA256(cert *x509.Certificate) string {
	s := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(s[:])
}

// Datasource returns one catalog entry by name (admin only).
func (c *Client) Datasource(ctx context.Context, name string) (resource.Resource, error) {
	var out resource.Resource
	return out, c.do(ctx, http.MethodGet, "/v1/admin/datasources/"+url.PathEscape(name), nil, &out)
}

// DatasourceDetail returns one catalog entry by name with its route: the nodes that may carry it,
// or why none can (admin only).
func (c *Client) DatasourceDetail(ctx context.Context, name string) (Datasource, error) {
	var out Datasource
	return out, c.do(ctx, http.MethodGet, "/v1/admin/datasources/"+url.PathEscape(name), nil, &out)
}

// UpdateDatasource replaces the resource named name with r (admin only). Empty addresses in r keep the
// current ones unless a property they derive from changed. The answer lists what changed.
func (c *Client) UpdateDatasource(ctx context.Context, name string, r resource.Resource) (DatasourceUpdate, error) {
	var out DatasourceUpdate
	return out, c.do(ctx, http.MethodPut, "/v1/admin/datasources/"+url.PathEscape(name), r, &out)
}

// DeleteDatasource deletes a resource (admin only); open sessions to it end within seconds.
func (c *Client) DeleteDatasource(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/admin/datasources/"+url.PathEscape(name), nil, nil)
}

// UpdateSettings changes the org's network settings (admin only); empty fields stay as they are.
func (c *Client) UpdateSettings(ctx context.Context, s Settings) (SettingsUpdate, error) {
	var out SettingsUpdate
	return out, c.do(ctx, http.MethodPut, "/v1/admin/settings", s, &out)
}
