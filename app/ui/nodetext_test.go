package ui

import (
	"testing"

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
