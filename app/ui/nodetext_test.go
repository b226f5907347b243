package ui

import (
	"testing"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
)

func TestNodeText(t *testing.T) {
	tests := []struct {
		st   client.Status
		want string
	}{
		{client.Status{}, "ferry-node reachable"},
		{client.Status{Node: "gw-1", PreferredNode: "gw-1"}, "node gw-1 reachable"},
		{client.Status{Node: "gw-2", PreferredNode: "gw-1"}, "node gw-2 reachable, in place of gw-1"},
	}
	for _, tc := range tests {
		if got := NodeText(tc.st); got != tc.want {
			t.Errorf("NodeText(%+v) = %q, want %q", tc.st, got, tc.want)
		}
	}
}

// TestResourceNodeText: the details pane names the node a connected resource's connections go to,
// and why none can carry one that has no candidate node.
func TestResourceNodeText(t *testing.T) {
	tests := []struct {
		r    client.ResourceStatus
		want string
	}{
		{client.ResourceStatus{}, ""},
		{client.ResourceStatus{Connected: true, Node: "gw-2"}, "gw-2"},
		{client.ResourceStatus{Connected: false, Node: "gw-2"}, ""},
		{client.ResourceStatus{Resource: api.Resource{Route: &api.Route{Reason: "no node can reach it: no online node matches egress filter tag:env=x"}}, Connected: true},
			"none: no node can reach it: no online node matches egress filter tag:env=x"},
		{client.ResourceStatus{Resource: api.Resource{Route: &api.Route{}}}, "none: no node can reach it"},
	}
	for _, tc := range tests {
		if got := ResourceNodeText(tc.r); got != tc.want {
			t.Errorf("ResourceNodeText(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}
