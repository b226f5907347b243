package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
)

// TestParseNodeTags: the --tags form, good and bad.
func TestParseNodeTags(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // formatted tags, or the error's text
		ok   bool
	}{
		{"", "", true},
		{"  ", "", true},
		{"region=westeurope,env=prod", "env=prod,region=westeurope", true},
		{" region=westeurope , env=prod ", "env=prod,region=westeurope", true},
		{"k8s.io/zone=eu-west-1a", "k8s.io/zone=eu-west-1a", true},
		{"ver=v1:2", "ver=v1:2", true},
		{"region", `"region" is not key=value`, false},
		{"region=", "region has no value", false},
		{"=prod", `"=prod" is not key=value`, false},
		{" env = prod ", "env=prod", true},
		{"a=b,", "item 2 is empty", false},
		{",a=b", "item 1 is empty", false},
		{"a=b,a=c", `key "a" is given twice`, false},
		{"a=b=c", `value "b=c" of a is invalid`, false},
		{"re gion=x", `key "re gion" is invalid`, false},
		{"env=pro d", `value "pro d" of env is invalid`, false},
		{"-env=prod", `key "-env" is invalid`, false},
		{"env=prod;rm", "invalid", false},
		{"env=\x1b[2J", "invalid", false},
		{strings.Repeat("k", 64) + "=v", "invalid", false},
		{"k=" + strings.Repeat("v", 64), "invalid", false},
	} {
		got, err := ParseNodeTags(tc.in)
		switch {
		case tc.ok && (err != nil || FormatNodeTags(got) != tc.want || got == nil):
			t.Errorf("ParseNodeTags(%q) = %v, %v; want %q", tc.in, got, err, tc.want)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ParseNodeTags(%q) = %v, %v; want an error naming %q", tc.in, got, err, tc.want)
		}
	}
	many := []string{}
	for i := range MaxNodeTags + 1 {
		many = append(many, "k"+strings.Repeat("x", i%5)+string(rune('a'+i%26))+string(rune('a'+i/26))+"=v")
	}
	if _, err := ParseNodeTags(strings.Join(many, ",")); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("too many tags: %v", err)
	}
}

// TestValidateNodeName: DNS labels pass; anything else, and ID look-alikes, are refused.
func TestValidateNodeName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"gw-westeurope-1", true}, {"a", true}, {"node7", true}, {strings.Repeat("a", 63), true},
		{"", false}, {"-gw", false}, {"gw-", false}, {"GW", false}, {"gw.example", false}, {"gw_1", false},
		{strings.Repeat("a", 64), false}, {"n-0123456789abcdef", false}, {"gw 1", false},
	} {
		if err := ValidateNodeName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateNodeName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestGatewayNodesBounded: a node list as large as a valid deployment can have is read whole; a
// larger one, or one built to blow up once decoded (millions of tiny tags), is refused without the
// client allocating more than a few times the bound.
func TestGatewayNodesBounded(t *testing.T) {
	long := func(c byte, n int) string { return strings.Repeat(string(c), n) }
	bigNode := func(i int) GatewayNode {
		tags := map[string]string{}
		for j := range MaxNodeTags {
			tags[fmt.Sprintf("%02d", j)+long('k', 61)] = long('v', 63)
		}
		return GatewayNode{ID: fmt.Sprintf("n-%016x", i), Name: fmt.Sprintf("%04d", i) + long('n', 59),
			WireGuardEndpoint:  long('h', 63) + "." + long('h', 63) + "." + long('h', 63) + "." + long('h', 61) + ":65535",
			WireGuardPublicKey: long('A', 43) + "=", Tags: tags, State: NodeOffline}
	}
	list := func(n int, node func(int) GatewayNode) []byte {
		l := GatewayNodeList{Nodes: []GatewayNode{}}
		for i := range n {
			l.Nodes = append(l.Nodes, node(i))
		}
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var tiny bytes.Buffer // 64 MiB of nodes with 30 one-letter tags each
	tiny.WriteString(`{"nodes":[`)
	for i := 0; tiny.Len() < 64<<20-1000; i++ { // valid JSON within the 64 MiB every answer may take
		if i > 0 {
			tiny.WriteByte(',')
		}
		tiny.WriteString(`{"tags":{`)
		for j := range 30 {
			if j > 0 {
				tiny.WriteByte(',')
			}
			fmt.Fprintf(&tiny, `"%c%c":""`, 'a'+j%26, 'a'+j/26)
		}
		tiny.WriteString(`}}`)
	}
	tiny.WriteString(`]}`)
	manyTags := bigNode(0)
	for j := range MaxNodeTags + 1 {
		manyTags.Tags[fmt.Sprintf("x%d", j)] = "y"
	}
	tests := []struct {
		name   string
		status int
		body   []byte
		want   string // in the error; "" = accepted
	}{
		{"largest valid list", 200, list(MaxGatewayNodes, bigNode), ""},
		{"one node too many", 200, list(MaxGatewayNodes+1, func(i int) GatewayNode { return GatewayNode{Name: "x"} }), "more than 1024 nodes"},
		{"too many tags", 200, list(1, func(int) GatewayNode { return manyTags }), "tags, at most 32"},
		{"tiny tags, 64 MiB", 200, tiny.Bytes(), "node list is unusable"},
		{"not an object", 200, []byte(`[]`), "unusable"},
		{"no nodes", 200, []byte(`{}`), "no nodes field"},
		{"error", 403, []byte(`{"error":"user x is suspended"}`), "user x is suspended"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = w.Write(tc.body)
			}))
			t.Cleanup(srv.Close)
			c := NewClient(func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, srv.Listener.Addr().String())
			}, 0)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			nodes, err := c.GatewayNodes(t.Context())
			runtime.ReadMemStats(&after)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == "" && len(nodes) != MaxGatewayNodes:
				t.Fatalf("got %d nodes, want %d", len(nodes), MaxGatewayNodes)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; tc.want != "" && alloc > 4*maxGatewayNodeListBytes {
				t.Errorf("allocated %d MiB reading a refused list (bound %d MiB)", alloc>>20, maxGatewayNodeListBytes>>20)
			}
		})
	}
}
