package healthview

import (
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/routing"
)

// TestSummarize: which node said what. Candidates' results are listed in the node list's order,
// an offline candidate's marked stale, a non-candidate's hidden, an online candidate without one
// "not checked yet"; the summary is the first healthy online candidate's, else the latest online
// one's; with no online candidate it is the routing reason instead of a result.
func TestSummarize(t *testing.T) {
	at := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	prod := map[string]string{"env": "prod"}
	fleet := []routing.Node{
		{ID: "n-a", Name: "gw-a", Tags: prod, Online: true},
		{ID: "n-b", Name: "gw-b", Tags: prod, Online: true},
		{ID: "n-c", Name: "gw-c", Tags: prod, Online: false},
		{ID: "n-d", Name: "gw-d", Tags: map[string]string{"env": "dev"}, Online: true},
	}
	healthy := func(t time.Time) api.Health {
		return api.Health{State: api.HealthHealthy, Checked: true, Time: t}
	}
	broken := func(t time.Time, step string) api.Health {
		return api.Health{State: api.HealthUnhealthy, Checked: true, Time: t, FailedStep: step, Error: step + " failed"}
	}
	tests := []struct {
		name    string
		filter  string
		nodes   []routing.Node
		results map[string]api.Health
		// want: the summary's node and label, then "node=label[*]" for each listed node (* = stale)
		wantNode, wantLabel string
		wantNodes           string
		wantReason          string
	}{
		{"healthy one wins over a later failure", "tag:env=prod", fleet,
			map[string]api.Health{"n-a": broken(at.Add(time.Minute), api.StepTCP), "n-b": healthy(at), "n-d": healthy(at)},
			"gw-b", "healthy", "gw-a=unhealthy (tcp) gw-b=healthy", ""},
		{"latest failure when none is healthy", "tag:env=prod", fleet,
			map[string]api.Health{"n-a": broken(at, api.StepTCP), "n-b": broken(at.Add(time.Minute), api.StepToken), "n-c": healthy(at.Add(time.Hour))},
			"gw-b", "unhealthy (token)", "gw-a=unhealthy (tcp) gw-b=unhealthy (token) gw-c=healthy*", ""},
		{"an online candidate without a result", "tag:env=prod", fleet,
			map[string]api.Health{"n-a": healthy(at)},
			"gw-a", "healthy", "gw-a=healthy gw-b=unhealthy (not checked yet)", ""},
		{"nothing checked yet", "", fleet, nil,
			"", "unhealthy (not checked yet)", "gw-a=unhealthy (not checked yet) gw-b=unhealthy (not checked yet) gw-d=unhealthy (not checked yet)", ""},
		{"no node matches the filter", "tag:env=nothing", fleet,
			map[string]api.Health{"n-a": healthy(at), "n-d": healthy(at)},
			"", "no node can reach it", "", "no node can reach it: no gateway matches egress filter tag:env=nothing"},
		{"only an offline candidate", "tag:env=prod", []routing.Node{fleet[2], fleet[3]},
			map[string]api.Health{"n-c": healthy(at)},
			"", "no node can reach it", "gw-c=healthy*", "no node can reach it: no online gateway matches egress filter tag:env=prod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			choice, err := routing.Candidates("", tt.filter, tt.nodes)
			if err != nil {
				t.Fatal(err)
			}
			got := Summarize("db", choice, tt.results)
			if got.Resource != "db" || got.NodeName != tt.wantNode || got.Label() != tt.wantLabel || got.Reason != tt.wantReason {
				t.Errorf("summary = node %q label %q reason %q; want %q %q %q", got.NodeName, got.Label(), got.Reason, tt.wantNode, tt.wantLabel, tt.wantReason)
			}
			var listed []string
			for _, n := range got.Nodes {
				s := n.NodeName + "=" + n.Label()
				if n.Stale {
					s += "*"
				}
				if n.Resource != "db" || n.NodeID == "" || len(n.Nodes) != 0 {
					t.Errorf("listed %+v", n)
				}
				listed = append(listed, s)
			}
			if g := strings.Join(listed, " "); g != tt.wantNodes {
				t.Errorf("nodes = %q, want %q", g, tt.wantNodes)
			}
			if tt.wantReason != "" && (got.State != api.HealthUnhealthy || got.Error != tt.wantReason) {
				t.Errorf("no-candidate summary = %+v", got)
			}
		})
	}
}

// TestRouteHealth: a Route node's health is that node's own result from the summary, "" when it
// has none (not checked yet, or no candidate).
func TestRouteHealth(t *testing.T) {
	at := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	sum := &api.Health{Nodes: []api.Health{
		{NodeID: "n-a", State: api.HealthUnhealthy, Checked: true, Time: at},
		{NodeID: "n-b", State: api.HealthHealthy, Checked: true, Time: at.Add(time.Second)},
		{NodeID: "n-c", State: api.HealthUnhealthy, Error: "not checked yet"},
	}}
	for _, tt := range []struct {
		sum   *api.Health
		node  string
		state string
		at    time.Time
	}{
		{sum, "n-a", api.HealthUnhealthy, at},
		{sum, "n-b", api.HealthHealthy, at.Add(time.Second)},
		{sum, "n-c", "", time.Time{}},
		{sum, "n-x", "", time.Time{}},
		{nil, "n-a", "", time.Time{}},
	} {
		if s, a := RouteHealth(tt.sum, tt.node); s != tt.state || !a.Equal(tt.at) {
			t.Errorf("RouteHealth(%s) = %q %v, want %q %v", tt.node, s, a, tt.state, tt.at)
		}
	}
}
