package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ferryhq/ferry/resource"
)

// Node kinds: a gateway is in no proxy cluster and carries the resources that name none; a worker
// is in one proxy cluster and carries only the resources that name it.
const (
	NodeKindGateway = "gateway"
	NodeKindWorker  = "worker"
)

// Node states, derived from the last heartbeat.
const (
	NodeOnline  = "online"
	NodeOffline = "offline"
)

// Node is one ferry-node of the deployment as the admin routes show it.
type Node struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Kind string `json:"kind"` // NodeKindGateway or NodeKindWorker
	// ClusterID is the proxy cluster a worker is in ("" for a gateway).
	ClusterID string            `json:"cluster_id,omitempty"`
	Tags      map[string]string `json:"tags"`
	// WireGuardPublicKey and WireGuardEndpoint (host:port) are how clients reach the node.
	WireGuardPublicKey string `json:"wireguard_public_key"`
	WireGuardEndpoint  string `json:"wireguard_endpoint"`
	// EnrollURL is the node's HTTPS enrollment endpoint, EnrollCertSHA256 its certificate's
	// SHA-256 fingerprint (hex).
	EnrollURL        string    `json:"enroll_url"`
	EnrollCertSHA256 string    `json:"enroll_cert_sha256"`
	Version          string    `json:"version"`
	StartedAt        time.Time `json:"started_at"`
	LastHeartbeat    time.Time `json:"last_heartbeat"`
	// HeartbeatAgeSeconds is how long ago the last heartbeat was, when the node answered.
	HeartbeatAgeSeconds int64 `json:"heartbeat_age_seconds"`
	// State is NodeOnline or NodeOffline: online while heartbeats are younger than the offline
	// threshold and the node has not stopped.
	State string `json:"state"`
}

// NodeList is the answer of GET /v1/admin/nodes.
type NodeList struct {
	Nodes []Node `json:"nodes"`
}

// GatewayNode is what every enrolled device learns of a node: how to reach it and whether it is up.
type GatewayNode struct {
	ID                 string            `json:"id"`
	Name               string            `json:"name"`
	WireGuardEndpoint  string            `json:"wireguard_endpoint"`
	WireGuardPublicKey string            `json:"wireguard_public_key"`
	Tags               map[string]string `json:"tags"`
	State              string            `json:"state"`
}

// GatewayNodeList is the answer of GET /v1/nodes.
type GatewayNodeList struct {
	Nodes []GatewayNode `json:"nodes"`
}

// NodeTags is the body of PUT /v1/admin/nodes/{id}/tags: the node's new tags (they replace the old).
type NodeTags struct {
	Tags map[string]string `json:"tags"`
}

// Nodes lists the deployment's nodes with their details (admin only).
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	var out NodeList
	return out.Nodes, c.do(ctx, http.MethodGet, "/v1/admin/nodes", nil, &out)
}

// Node returns one node by ID or name (admin only).
func (c *Client) Node(ctx context.Context, idOrName string) (Node, error) {
	var out Node
	return out, c.do(ctx, http.MethodGet, "/v1/admin/nodes/"+url.PathEscape(idOrName), nil, &out)
}

// UpdateNodeTags replaces a node's tags (admin only) and returns the node.
func (c *Client) UpdateNodeTags(ctx context.Context, idOrName string, tags map[string]string) (Node, error) {
	var out Node
	if tags == nil {
		tags = map[string]string{}
	}
	return out, c.do(ctx, http.MethodPut, "/v1/admin/nodes/"+url.PathEscape(idOrName)+"/tags", NodeTags{Tags: tags}, &out)
}

// DeleteNode deletes a stopped node's record (admin only); a running node is refused (409).
func (c *Client) DeleteNode(ctx context.Context, idOrName string) error {
	return c.do(ctx, http.MethodDelete, "/v1/admin/nodes/"+url.PathEscape(idOrName), nil, nil)
}

// MaxGatewayNodes bounds the node list a client accepts (GET /v1/nodes).
const MaxGatewayNodes = 1024

// Bounds on the node list as a client reads it: the whole answer, and one node in it (a node with
// the longest name, endpoint and MaxNodeTags tags of the longest keys and values takes about 4.7 kB).
const (
	maxGatewayNodeBytes     = 8 << 10
	maxGatewayNodeListBytes = MaxGatewayNodes * maxGatewayNodeBytes
)

// GatewayNodes lists the nodes a client may connect through (any enrolled device). The answer is
// read one node at a time and refused as soon as it has more than MaxGatewayNodes nodes, a node
// longer than a valid one can be or with more than MaxNodeTags tags, so that a hostile node cannot
// make the client build a list of millions of entries (a 64 MiB answer of tiny tags would take over
// a gigabyte once decoded).
func (c *Client) GatewayNodes(ctx context.Context) ([]GatewayNode, error) {
	const what = "GET /v1/nodes"
	resp, err := c.send(ctx, http.MethodGet, "/v1/nodes", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return nil, decode(resp, what, nil)
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxGatewayNodeListBytes))
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: the node list is unusable: %s", what, fmt.Sprintf(format, args...))
	}
	expect := func(want json.Delim) error {
		tok, err := dec.Token()
		if err != nil {
			return bad("%v", err)
		}
		if d, ok := tok.(json.Delim); !ok || d != want {
			return bad("expected %v", want)
		}
		return nil
	}
	if err := expect('{'); err != nil {
		return nil, err
	}
	var out []GatewayNode
	seenNodes := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, bad("%v", err)
		}
		if tok != "nodes" || seenNodes {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil || len(skip) > maxGatewayNodeBytes {
				return nil, bad("unexpected field")
			}
			continue
		}
		seenNodes = true
		if err := expect('['); err != nil {
			return nil, err
		}
		out = []GatewayNode{}
		var raw json.RawMessage
		for dec.More() {
			if len(out) == MaxGatewayNodes {
				return nil, bad("more than %d nodes", MaxGatewayNodes)
			}
			raw = raw[:0]
			if err := dec.Decode(&raw); err != nil {
				return nil, bad("node %d: %v", len(out)+1, err)
			}
			if len(raw) > maxGatewayNodeBytes {
				return nil, bad("node %d takes %d bytes, more than a node can (%d)", len(out)+1, len(raw), maxGatewayNodeBytes)
			}
			var n GatewayNode
			if err := json.Unmarshal(raw, &n); err != nil {
				return nil, bad("node %d: %v", len(out)+1, err)
			}
			if len(n.Tags) > MaxNodeTags {
				return nil, bad("node %d has %d tags, at most %d", len(out)+1, len(n.Tags), MaxNodeTags)
			}
			out = append(out, n)
		}
		if err := expect(']'); err != nil {
			return nil, err
		}
	}
	if err := expect('}'); err != nil {
		return nil, err
	}
	if !seenNodes {
		return nil, bad("no nodes field")
	}
	return out, nil
}

var (
	nodeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	nodeIDRE   = regexp.MustCompile(`^n-[0-9a-f]{16}$`)
	tagKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$`)
	tagValueRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._:/-]{0,61}[A-Za-z0-9])?$`)
)

// MaxNodeTags bounds the tags of one node.
const MaxNodeTags = 32

// ValidNodeID reports whether id has the form of a node ID: "n-" and 16 lower-case hex digits.
func ValidNodeID(id string) bool { return nodeIDRE.MatchString(id) }

// ValidateNodeName checks a node name: a DNS label (1-63 lower-case letters, digits and dashes, no
// dash at either end) that does not look like a node ID, so that a name never hides another node.
func ValidateNodeName(name string) error {
	if !nodeNameRE.MatchString(name) {
		return fmt.Errorf("node name %q is invalid: use 1-63 lower-case letters, digits and dashes, starting and ending with a letter or digit (a DNS label, such as gw-westeurope-1)", name)
	}
	if ValidNodeID(name) {
		return fmt.Errorf("node name %q has the form of a node ID (n- and 16 hex digits); choose another name", name)
	}
	return nil
}

// ValidateNodeTags checks tags: at most MaxNodeTags; keys 1-63 letters, digits and . _ / -
// starting and ending with a letter or digit; values the same, also allowing ':', and not empty.
func ValidateNodeTags(tags map[string]string) error {
	if len(tags) > MaxNodeTags {
		return fmt.Errorf("tags: %d tags, at most %d", len(tags), MaxNodeTags)
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !tagKeyRE.MatchString(k) {
			return fmt.Errorf("tags: key %q is invalid: use 1-63 letters, digits and . _ / -, starting and ending with a letter or digit", k)
		}
		if v := tags[k]; !tagValueRE.MatchString(v) {
			if v == "" {
				return fmt.Errorf("tags: %s has no value: write %s=VALUE", k, k)
			}
			return fmt.Errorf("tags: value %q of %s is invalid: use 1-63 letters, digits and . _ : / -, starting and ending with a letter or digit", v, k)
		}
	}
	return nil
}

// ParseNodeTags parses "key=value,key2=value2" (the --tags form, e.g. region=westeurope,env=prod;
// resource.ParseTags) and validates it with ValidateNodeTags. An empty or blank string gives no
// tags (an empty map). An empty item, an item without '=', a key given twice or an invalid key or
// value is an error that says which.
func ParseNodeTags(s string) (map[string]string, error) {
	tags, err := resource.ParseTags(s)
	if err != nil {
		return nil, err
	}
	if tags == nil {
		tags = map[string]string{}
	}
	if err := ValidateNodeTags(tags); err != nil {
		return nil, err
	}
	return tags, nil
}

// FormatNodeTags renders tags as "key=value,key2=value2", sorted by key ("" for none).
func FormatNodeTags(tags map[string]string) string { return resource.FormatTags(tags) }

// ValidateNodeEndpoint checks a node's WireGuard endpoint as clients dial it: "host:port" where host
// is an IP address (not unspecified, multicast or with an IPv6 zone, also when written as an
// IPv4-mapped IPv6 address) or a DNS name, and port 1-65535. A node registers only an endpoint that
// passes, so that one node's bad endpoint cannot make every client refuse the deployment's list.
func ValidateNodeEndpoint(ep string) error {
	show := ep
	if len(show) > 80 {
		show = show[:80] + "…"
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return fmt.Errorf("WireGuard endpoint %q is not host:port", show)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("WireGuard endpoint %q: bad port (use 1-65535)", show)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if u := a.Unmap(); u.IsUnspecified() || u.IsMulticast() || a.Zone() != "" {
			return fmt.Errorf("WireGuard endpoint %q: address %s cannot be a node", show, a)
		}
		return nil
	}
	if !dnsName(host) {
		return fmt.Errorf("WireGuard endpoint %q: host is neither an IP address nor a DNS name", show)
	}
	return nil
}

func dnsName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
