package routing

import (
	"strings"
	"testing"

	"github.com/ferryhq/ferry/api"
)

func names(ns []Node) string {
	var s []string
	for _, n := range ns {
		s = append(s, n.Name)
	}
	return strings.Join(s, ",")
}

func TestCandidates(t *testing.T) {
	const cl = "n-1a2b345c67890123"
	fleet := []Node{
		{ID: "n-1", Name: "gw-prod", Tags: map[string]string{"env": "prod"}, Online: true},
		{ID: "n-2", Name: "gw-dev", Tags: map[string]string{"env": "dev"}, Online: true},
		{ID: "n-3", Name: "gw-prod-off", Tags: map[string]string{"env": "prod"}, Online: false},
		{ID: "n-4", Name: "w-1", ClusterID: cl, Tags: map[string]string{"env": "prod"}, Online: true},
		{ID: "n-5", Name: "w-2", ClusterID: cl, Tags: map[string]string{"env": "dev"}, Online: false},
	}
	tests := []struct {
		name, cluster, filter string
		nodes                 []Node
		candidates, online    string
		reason                string
	}{
		{"gateways", "", "", fleet, "gw-prod,gw-dev,gw-prod-off", "gw-prod,gw-dev", ""},
		{"gateways filtered", "", "tag:env=prod", fleet, "gw-prod,gw-prod-off", "gw-prod", ""},
		{"filter with or", "", "tag:env=prod or tag:env=dev", fleet, "gw-prod,gw-dev,gw-prod-off", "gw-prod,gw-dev", ""},
		{"filter with not", "", "not tag:env=prod", fleet, "gw-dev", "gw-dev", ""},
		{"cluster", cl, "", fleet, "w-1,w-2", "w-1", ""},
		{"cluster filtered to an offline worker", cl, "tag:env=dev", fleet, "w-2", "", "no node can reach it: no online worker of proxy cluster " + cl + " matches egress filter tag:env=dev"},
		{"no match at all", "", "tag:env=nothing", fleet, "", "", "no node can reach it: no gateway matches egress filter tag:env=nothing"},
		{"cluster without workers", "n-0000000000000000", "", fleet, "", "", "no node can reach it: proxy cluster n-0000000000000000 has no workers"},
		{"cluster all offline", cl, "", fleet[4:], "w-2", "", "no node can reach it: no worker of proxy cluster " + cl + " is online"},
		{"no gateway online", "", "", fleet[2:3], "gw-prod-off", "", "no node can reach it: no gateway is online"},
		{"only workers", "", "", fleet[3:], "", "", "no node can reach it: the deployment has no gateway (every node is a proxy cluster worker)"},
		{"filter matches an offline gateway", "", "tag:env=prod", fleet[2:], "gw-prod-off", "", "no node can reach it: no online gateway matches egress filter tag:env=prod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Candidates(tt.cluster, tt.filter, tt.nodes)
			if err != nil {
				t.Fatal(err)
			}
			if got := names(c.Candidates); got != tt.candidates {
				t.Errorf("candidates %q, want %q", got, tt.candidates)
			}
			if got := names(c.Online); got != tt.online {
				t.Errorf("online %q, want %q", got, tt.online)
			}
			if c.Reason != tt.reason {
				t.Errorf("reason %q, want %q", c.Reason, tt.reason)
			}
		})
	}
	if _, err := Candidates("", "env=prod", fleet); err == nil {
		t.Error("a filter that does not parse was accepted")
	}
}

func TestServes(t *testing.T) {
	const cl = "n-1a2b345c67890123"
	gwProd := Node{ID: "n-1", Name: "gw", Tags: map[string]string{"env": "prod"}}
	worker := Node{ID: "n-4", Name: "w", ClusterID: cl, Tags: map[string]string{"env": "prod"}}
	tests := []struct {
		name, cluster, filter string
		self                  Node
		ok                    bool
		why                   string
	}{
		{"gateway, no filter", "", "", gwProd, true, ""},
		{"gateway, matching filter", "", "tag:env=prod", gwProd, true, ""},
		{"gateway, other filter", "", "tag:env=dev", gwProd, false, "the node's tags do not match egress filter tag:env=dev"},
		{"gateway, cluster resource", cl, "", gwProd, false, "the resource is carried by proxy cluster " + cl},
		{"worker, gateway resource", "", "", worker, false, "the resource is carried by gateways, and this node is a worker of proxy cluster " + cl},
		{"worker, its cluster", cl, "tag:env=prod", worker, true, ""},
		{"worker, other cluster", "n-0000000000000000", "", worker, false, "the resource is carried by proxy cluster n-0000000000000000"},
		{"no tags", "", "tag:env=prod", Node{ID: "n-9"}, false, "the node's tags do not match egress filter tag:env=prod"},
		{"negation on no tags", "", "not tag:env=prod", Node{ID: "n-9"}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, why, err := Serves(tt.cluster, tt.filter, tt.self)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.ok || why != tt.why {
				t.Errorf("Serves = %v, %q; want %v, %q", ok, why, tt.ok, tt.why)
			}
		})
	}
	if ok, _, err := Serves("", "tag:env=prod or", gwProd); ok || err == nil {
		t.Errorf("a filter that does not parse: ok=%v err=%v; want refused with an error", ok, err)
	}
}

// TestFilterTermsAreNodeTags: the egress filter language and node tags agree on what a tag is. A
// tag api.ValidateNodeTags accepts can be named in a filter and matches its node; one it refuses
// cannot be named (a term no node can have would make `not TERM` admit every node, as a Cyrillic е
// in `not tag:еnv=dev` would), so a filter never reads differently from what it routes.
func TestFilterTermsAreNodeTags(t *testing.T) {
	pairs := [][2]string{
		{"env", "prod"}, {"k8s.io/zone", "eu-1:a"}, {"A_b.c", "x:y/z"}, {strings.Repeat("k", 63), strings.Repeat("v", 63)},
		{"\u0435nv", "dev"}, {"env", "d\u0435v"}, {"env", ""}, {"env", "data eng"}, {"a@b", "c"}, {"a:b", "c"},
		{"-env", "prod"}, {"env", "prod-"}, {strings.Repeat("k", 64), "v"}, {"k", strings.Repeat("v", 64)},
		{"env", "a=b"}, {"env", `"prod"`}, {"env", "prod\u202e"}, {"env", "pr\u200bod"}, {"e", "\uff50"},
	}
	for _, kv := range pairs {
		tags := map[string]string{kv[0]: kv[1]}
		tagErr := api.ValidateNodeTags(tags)
		quoted := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(kv[1])
		for _, f := range []string{"tag:" + kv[0] + `="` + quoted + `"`, "not tag:" + kv[0] + `="` + quoted + `"`} {
			ok, _, err := Serves("", f, Node{ID: "n-1", Name: "gw", Tags: tags})
			switch {
			case tagErr == nil && err != nil:
				t.Errorf("node tag %q=%q is valid, filter %q refused: %v", kv[0], kv[1], f, err)
			case tagErr == nil && ok == strings.HasPrefix(f, "not "):
				t.Errorf("filter %q: Serves = %v for a node tagged %q=%q", f, ok, kv[0], kv[1])
			case tagErr != nil && err == nil:
				t.Errorf("node tag %q=%q is invalid (%v), filter %q accepted (Serves = %v)", kv[0], kv[1], tagErr, f, ok)
			case tagErr != nil && ok:
				t.Errorf("filter %q: Serves = true", f)
			}
		}
	}
}
