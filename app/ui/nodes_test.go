//go:build cgo || !darwin

package ui

import (
	"testing"

	"github.com/ferryhq/ferry/api"
)

// TestNodesText: one line per node with name, state, heartbeat age and tags; "—" for none.
func TestNodesText(t *testing.T) {
	for _, tc := range []struct {
		ns   []api.Node
		want string
	}{
		{nil, "—"},
		{[]api.Node{
			{Name: "gw-1", State: api.NodeOnline, HeartbeatAgeSeconds: 4, Tags: map[string]string{"region": "westeurope", "env": "prod"}},
			{Name: "gw-2", State: api.NodeOffline, HeartbeatAgeSeconds: 3700},
		}, "gw-1 · online · heartbeat 4s ago · env=prod,region=westeurope\ngw-2 · offline · heartbeat 1h1m40s ago"},
	} {
		if got := NodesText(tc.ns); got != tc.want {
			t.Errorf("NodesText = %q, want %q", got, tc.want)
		}
	}
}
