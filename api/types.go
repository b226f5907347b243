// Package api holds the types of ferry-node's control API and its Go client (the Go SDK).
//
// Two endpoints exist. Enrollment runs over HTTPS on the node's public address and is protected by a
// single-use enrollment token that also pins the node's TLS certificate. Everything else runs over
// plain HTTP on the node's address inside the WireGuard tunnel (NodeTunnelAddress, port 80): the
// tunnel has already authenticated the device, and the node identifies the caller by its tunnel
// address.
package api

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/ferryhq/ferry/resource"
)

// Tunnel addressing. Device and node addresses exist only inside the userspace network stacks at both
// ends of the tunnel, never on an OS interface, so they cannot clash with the user's networks. They are
// taken from the benchmarking range of RFC 2544.
var (
	TunnelSubnet      = netip.MustParsePrefix("198.18.0.0/15")
	NodeTunnelAddress = netip.MustParseAddr("198.18.0.1")
)

// APIPort is the TCP port of the control API on NodeTunnelAddress.
const APIPort = 80

// EnrollTokenPrefix starts every enrollment token.
const EnrollTokenPrefix = "ferry-enroll."

// EnrollToken is what a client needs to enroll safely: where to enroll, which TLS certificate to trust
// there (pinned; SHA-256 of the leaf certificate's DER bytes, hex) and the single-use secret.
type EnrollToken struct {
	URL        string `json:"u"`
	CertSHA256 string `json:"f"`
	Secret     string `json:"s"`
}

// Encode renders the token as "ferry-enroll.<base64url JSON>".
func (t EnrollToken) Encode() string {
	b, _ := json.Marshal(t)
	return EnrollTokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ErrInvalidEnrollToken is wrapped by every ParseEnrollToken error: the text is not an enrollment
// token as the node makes them (cut short, mangled, or something else pasted).
var ErrInvalidEnrollToken = errors.New("not a valid Ferry enrollment token")

func unprintable(r rune) bool { return r == ' ' || !unicode.IsPrint(r) }

// ParseEnrollToken decodes a token made by Encode. Errors say what is wrong with the token as typed,
// in words: the decoder's own messages ("invalid character '\u0081' …") mean nothing to the person.
func ParseEnrollToken(s string) (EnrollToken, error) {
	var t EnrollToken
	bad := func(why string) (EnrollToken, error) {
		return EnrollToken{}, fmt.Errorf("parse enrollment token: %w: %s", ErrInvalidEnrollToken, why)
	}
	body, ok := strings.CutPrefix(strings.TrimSpace(s), EnrollTokenPrefix)
	if !ok {
		return bad(fmt.Sprintf("it does not start with %q; copy the whole token the administrator gave you", EnrollTokenPrefix))
	}
	raw, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil || json.Unmarshal(raw, &t) != nil {
		return bad("it is damaged or cut short; copy it again in full")
	}
	// The URL is echoed in login errors: none of its characters may be one a terminal acts on or
	// that disguises it (C1 controls such as CSI U+009B, bidirectional overrides); url.Parse refuses
	// only the ASCII controls.
	if u, err := url.Parse(t.URL); err != nil || u.Scheme != "https" || u.Host == "" || strings.IndexFunc(t.URL, unprintable) >= 0 {
		return bad("it names no https address of a node; copy it again in full")
	}
	if _, err := hex.DecodeString(t.CertSHA256); err != nil || len(t.CertSHA256) != 64 || t.Secret == "" {
		return bad("it lacks the node's certificate fingerprint or its secret; copy it again in full")
	}
	return t, nil
}

// EnrollRequest is the body of POST /v1/enroll.
type EnrollRequest struct {
	Secret     string `json:"secret"`
	PublicKey  string `json:"public_key"`  // the device's WireGuard public key, base64
	DeviceName string `json:"device_name"` // at most 64 printable characters
}

// EnrollResponse is the answer to a successful enrollment.
type EnrollResponse struct {
	User              string `json:"user"`
	Admin             bool   `json:"admin"`
	DeviceAddress     string `json:"device_address"`     // the device's tunnel address, e.g. 198.18.0.2
	NodePublicKey     string `json:"node_public_key"`    // the node's WireGuard public key, base64
	WireGuardEndpoint string `json:"wireguard_endpoint"` // host:port of the node's WireGuard UDP socket
	VNSubnet          string `json:"vn_subnet"`          // the org's virtual networking subnet
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// Me is the answer to GET /v1/me.
type Me struct {
	User   string `json:"user"`
	Admin  bool   `json:"admin"`
	Device string `json:"device"` // the caller's tunnel address
}

// Settings are the org's network settings (GET /v1/settings for every user; PUT
// /v1/admin/settings for admins, fields left empty unchanged).
type Settings struct {
	ConnectivityMode string `json:"connectivity_mode"` // resource.ModeLoopback or resource.ModeVirtualNetworking
	VNSubnet         string `json:"vn_subnet"`         // e.g. 100.64.0.0/10
	DNSDomain        string `json:"dns_domain"`        // e.g. ferry.internal
	LoopbackRange    string `json:"loopback_range"`    // e.g. 127.0.0.1/32
}

// Resource is a resource as a user sees it (GET /v1/resources): what is needed to reach it, nothing
// about how the node logs in.
type Resource struct {
	Name             string            `json:"name"`
	Type             string            `json:"type"`
	Database         string            `json:"database"`
	Username         string            `json:"username"`
	ConnectivityMode string            `json:"connectivity_mode"`
	LoopbackAddress  string            `json:"loopback_address"`
	VNAddress        string            `json:"vn_address"`
	Subdomain        string            `json:"subdomain,omitempty"`
	Tags             map[string]string `json:"tags,omitempty"`
	Health           *Health           `json:"health,omitempty"` // the last health check, without its steps
	// Route is which nodes may carry the resource's connections (its proxy cluster's workers, or
	// the gateways, matching its egress filter) that are online; nil when the node could not tell.
	Route *Route `json:"route,omitempty"`
}

// Route is the nodes that carry a resource's connections now.
type Route struct {
	Nodes  []RouteNode `json:"nodes"`            // the ONLINE candidate nodes, in the node list's order
	Reason string      `json:"reason,omitempty"` // why there is none ("no node can reach it: …")
}

// RouteNode is one node that may carry a resource's connections, with its last health check of
// the resource from that node.
type RouteNode struct {
	NodeID    string    `json:"node_id"`
	Health    string    `json:"health,omitempty"`    // "healthy" | "unhealthy" | "" (not checked yet)
	CheckedAt time.Time `json:"checked_at,omitzero"` // when Health was found
}

// Datasource is the answer to GET /v1/admin/datasources/{name}: the catalog entry and its route
// (the candidate nodes by name included, online or not).
type Datasource struct {
	resource.Resource
	Route *Route `json:"route,omitempty"`
	// Candidates are every node that may carry it, online or not, in the node list's order.
	Candidates []CandidateNode `json:"candidates,omitempty"`
}

// CandidateNode is a node that may carry a resource, as an admin sees it.
type CandidateNode struct {
	NodeID string `json:"node_id"`
	Name   string `json:"name"`
	State  string `json:"state"` // NodeOnline or NodeOffline
}

// ResourceList is the answer to GET /v1/resources.
type ResourceList struct {
	Resources []Resource `json:"resources"`
}

// DatasourceList is the answer to GET /v1/admin/datasources: the full catalog entries.
type DatasourceList struct {
	Datasources []resource.Resource `json:"datasources"`
}

// DatasourceUpdate is the answer to PUT /v1/admin/datasources/{name}: the resource before and after,
// and one line per changed property ("port_override: 0 -> 12345").
type DatasourceUpdate struct {
	Before  resource.Resource `json:"before"`
	After   resource.Resource `json:"after"`
	Changes []string          `json:"changes"`
}

// SettingsUpdate is the answer to PUT /v1/admin/settings: the settings now in force, and one line per
// resource whose address had to move ("name: virtual networking address A -> B").
type SettingsUpdate struct {
	Settings Settings `json:"settings"`
	Moved    []string `json:"moved"`
}

// Connection is one connection-log record (GET /v1/admin/logs/connections).
type Connection struct {
	ID               int64     `json:"id"`
	Start            time.Time `json:"start"`
	End              time.Time `json:"end,omitzero"`
	DurationMS       int64     `json:"duration_ms,omitempty"` // End - Start in milliseconds; 0 while open
	User             string    `json:"user"`
	Resource         string    `json:"resource"`
	ClientAddr       string    `json:"client_addr"`
	NodeID           string    `json:"node_id,omitempty"`           // the node that carried it ("" for records from before node IDs)
	NodeName         string    `json:"node_name,omitempty"`         // that node's name, while the catalog has its record
	OriginalUser     string    `json:"original_user,omitempty"`     // the client's StartupMessage "user"
	OriginalDatabase string    `json:"original_database,omitempty"` // the client's StartupMessage "database"
	Role             string    `json:"role,omitempty"`              // the role logged in upstream
	Database         string    `json:"database,omitempty"`          // the database logged in upstream
	UpstreamPID      uint32    `json:"upstream_pid,omitempty"`
	BytesFromClient  int64     `json:"bytes_from_client"`
	BytesFromServer  int64     `json:"bytes_from_server"`
	QueriesDropped   int64     `json:"queries_dropped"` // query records of this connection never written (its session was then ended)
	Outcome          string    `json:"outcome"`
	SQLState         string    `json:"sqlstate,omitempty"`
	Error            string    `json:"error,omitempty"`
}

// Query is one query-log record (GET /v1/admin/logs/queries): one executed statement.
type Query struct {
	ID           int64     `json:"id"`
	ConnectionID int64     `json:"connection_id"`
	Time         time.Time `json:"time"`
	DurationUS   int64     `json:"duration_us"` // microseconds
	User         string    `json:"user"`
	Resource     string    `json:"resource"`
	Protocol     string    `json:"protocol,omitempty"` // simple, extended, function
	Statement    string    `json:"statement,omitempty"`
	SQL          string    `json:"sql"`
	SQLLength    int64     `json:"sql_length,omitempty"` // original length in bytes when SQL was cut
	SQLSHA256    string    `json:"sql_sha256,omitempty"` // of the whole original text when SQL was cut
	Params       string    `json:"params,omitempty"`
	Command      string    `json:"command,omitempty"`
	Rows         int64     `json:"rows"` // -1 when the command tag has no count
	SQLState     string    `json:"sqlstate,omitempty"`
	Error        string    `json:"error,omitempty"`
}

// ConnectionList and QueryList wrap log answers.
type (
	ConnectionList struct {
		Connections []Connection `json:"connections"`
	}
	QueryList struct {
		Queries []Query `json:"queries"`
	}
)
