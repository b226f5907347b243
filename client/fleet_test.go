package client

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/tunnel"
)

func newKey(t *testing.T) tunnel.Key {
	t.Helper()
	k, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestNodeListRejected: a node list that names an unusable key, a key twice, junk for an endpoint,
// an unknown state or control characters, or that leaves out the node that served it, is refused
// whole, with an error that says which node and what is wrong; a good list passes.
func TestNodeListRejected(t *testing.T) {
	self := newKey(t)
	tun, err := tunnel.New(t.Context(), tunnel.Config{PrivateKey: self, Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.2")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tun.Close() })
	served, other := newKey(t).PublicKey(), newKey(t).PublicKey()
	good := func() []KnownNode {
		return []KnownNode{
			{ID: "n-0000000000000001", Name: "gw-1", WireGuardEndpoint: "203.0.113.7:51820", WireGuardPublicKey: served.String(), State: "online", Tags: map[string]string{"region": "westeurope"}},
			{ID: "n-0000000000000002", Name: "gw-2", WireGuardEndpoint: "gw-2.example.net:51820", WireGuardPublicKey: other.String(), State: "offline"},
		}
	}
	tests := []struct {
		name string
		edit func([]KnownNode) []KnownNode
		want string // in the error; "" = accepted
	}{
		{"good", func(l []KnownNode) []KnownNode { return l }, ""},
		{"empty", func([]KnownNode) []KnownNode { return nil }, "empty"},
		{"serving node missing", func(l []KnownNode) []KnownNode { return l[1:] }, "does not name the node that served it"},
		{"key not base64", func(l []KnownNode) []KnownNode { l[1].WireGuardPublicKey = "not-a-key"; return l }, `node 2 ("gw-2"): WireGuard public key`},
		{"all-zero key", func(l []KnownNode) []KnownNode { l[1].WireGuardPublicKey = tunnel.Key{}.String(); return l }, "WireGuard public key"},
		{"the device's own key", func(l []KnownNode) []KnownNode { l[1].WireGuardPublicKey = self.PublicKey().String(); return l }, "WireGuard public key"},
		{"key twice", func(l []KnownNode) []KnownNode { l[1].WireGuardPublicKey = served.String(); return l }, "named twice"},
		{"endpoint without port", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "gw-2.example.net"; return l }, "not host:port"},
		{"endpoint port zero", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "203.0.113.8:0"; return l }, "bad port"},
		{"endpoint URL", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "https://gw-2:443"; return l }, "not host:port"},
		{"endpoint junk host", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "gw 2;rm -rf:51820"; return l }, "neither an IP address nor a DNS name"},
		{"endpoint unspecified", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "0.0.0.0:51820"; return l }, "cannot be a node"},
		{"endpoint multicast", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "[ff02::1]:51820"; return l }, "cannot be a node"},
		{"name with escape", func(l []KnownNode) []KnownNode { l[1].Name = "gw\x1b[31m"; return l }, "unusable name"},
		{"no name", func(l []KnownNode) []KnownNode { l[1].Name = ""; return l }, "unusable name"},
		{"unknown state", func(l []KnownNode) []KnownNode { l[1].State = "maybe"; return l }, `unknown state "maybe"`},
		{"ID twice, other key", func(l []KnownNode) []KnownNode { l[1].ID = l[0].ID; return l }, "ID n-0000000000000001 is named twice"},
		{"name twice, other key", func(l []KnownNode) []KnownNode { l[1].Name = l[0].Name; return l }, "name gw-1 is named twice"},
		{"endpoint port 65536", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "203.0.113.8:65536"; return l }, "bad port"},
		{"endpoint IPv6 zone", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "[fe80::1%eth0]:51820"; return l }, "cannot be a node"},
		{"endpoint mapped unspecified", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "[::ffff:0.0.0.0]:51820"; return l }, "cannot be a node"},
		{"endpoint mapped multicast", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "[::ffff:224.0.0.1]:51820"; return l }, "cannot be a node"},
		{"endpoint with escape", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "gw\x1b[2J:51820"; return l }, "is not host:port"},
		{"endpoint IPv6", func(l []KnownNode) []KnownNode { l[1].WireGuardEndpoint = "[2001:db8::7]:51820"; return l }, ""},
		{"tag with = and ,", func(l []KnownNode) []KnownNode { l[1].Tags = map[string]string{"region": "a=b,c=d"}; return l }, "tags: value"},
		{"name with bidi override", func(l []KnownNode) []KnownNode { l[1].Name = "gw\u202e1"; return l }, "unusable name"},
	}
	for _, tc := range tests {
		err := checkNodeList(tc.edit(good()), served, tun.CheckPeerKey)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.want != "" && (err == nil || !errors.Is(err, errBadNodeList) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want a refusal saying %q", tc.name, err, tc.want)
		case err != nil && strings.ContainsRune(err.Error(), 0x1b):
			t.Errorf("%s: the error carries a control character: %q", tc.name, err)
		}
	}
}

// TestPickNode: the preferred node first, online nodes before offline ones, never a node that failed
// lately (none at all when every other one did), never the node in use.
func TestPickNode(t *testing.T) {
	a, b, c := newKey(t).PublicKey(), newKey(t).PublicKey(), newKey(t).PublicKey()
	nodes := []KnownNode{
		{Name: "c", WireGuardPublicKey: c.String(), State: "offline"},
		{Name: "b", WireGuardPublicKey: b.String(), State: "online"},
		{Name: "a", WireGuardPublicKey: a.String(), State: "online"},
	}
	now := time.Now()
	tests := []struct {
		name   string
		cur    tunnel.Key
		failed map[tunnel.Key]time.Time
		want   string // "" = none
	}{
		{"from b: the preferred", b, nil, "a"},
		{"from a: online before offline", a, nil, "b"},
		{"from a, b failed lately", a, map[tunnel.Key]time.Time{b: now.Add(-time.Second)}, "c"},
		{"from a, b failed long ago", a, map[tunnel.Key]time.Time{b: now.Add(-time.Hour)}, "b"},
		{"from a, all failed lately", a, map[tunnel.Key]time.Time{b: now.Add(-time.Second), c: now.Add(-2 * time.Second)}, ""},
		{"from c, preferred failed lately", c, map[tunnel.Key]time.Time{a: now.Add(-time.Second)}, "b"},
	}
	for _, tc := range tests {
		f := fleet{nodes: nodes, preferred: a, cur: tc.cur, failed: tc.failed}
		n, ok := f.pick(now)
		if got := map[bool]string{true: n.Name, false: ""}[ok]; got != tc.want {
			t.Errorf("%s: picked %q, want %q", tc.name, got, tc.want)
		}
	}
	f := fleet{nodes: nodes[2:], preferred: a, cur: a}
	if n, ok := f.pick(now); ok {
		t.Errorf("only the node in use is known: picked %q", n.Name)
	}
}

// TestReturnTarget: the node in use serves the list, so it could leave the preferred node out of
// it or give it another endpoint; the client still returns to the preferred node, at the endpoint
// where it answered the probe.
func TestReturnTarget(t *testing.T) {
	pref, other := newKey(t).PublicKey(), newKey(t).PublicKey()
	enrolled := KnownNode{WireGuardEndpoint: "198.51.100.1:51820", WireGuardPublicKey: pref.String(), State: "online"}
	listed := KnownNode{ID: "n-0000000000000001", Name: "gw-a", WireGuardEndpoint: "192.0.2.66:51820", WireGuardPublicKey: pref.String(), State: "offline"}
	b := KnownNode{ID: "n-0000000000000002", Name: "gw-b", WireGuardEndpoint: "203.0.113.2:51820", WireGuardPublicKey: other.String(), State: "online"}
	tests := []struct {
		name       string
		nodes      []KnownNode
		answeredAt string
		want       KnownNode
	}{
		{"listed, answered where listed", []KnownNode{listed, b}, "192.0.2.66:51820", listed},
		{"listed elsewhere", []KnownNode{listed, b}, "198.51.100.1:51820", KnownNode{ID: listed.ID, Name: "gw-a", WireGuardEndpoint: "198.51.100.1:51820", WireGuardPublicKey: pref.String(), State: "offline"}},
		{"left out of the list", []KnownNode{b}, "198.51.100.1:51820", enrolled},
		{"left out, endpoint unknown", []KnownNode{b}, "", enrolled},
	}
	for _, tc := range tests {
		f := fleet{nodes: tc.nodes, preferred: pref, enrolled: enrolled, cur: other}
		if got := f.returnTarget(tc.answeredAt); !sameNode(got, tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
