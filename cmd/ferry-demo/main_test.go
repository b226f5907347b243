package main

import (
	"strings"
	"testing"
)

// TestCheckNodes: one node (the default) or more start; fewer than one is a usage error.
func TestCheckNodes(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want string // "" = accepted
	}{
		{1, ""},
		{3, ""},
		{0, "give 1 or more nodes"},
		{-1, "give 1 or more nodes"},
	} {
		err := checkNodes(tc.n)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("-nodes %d: %v", tc.n, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("-nodes %d: %v, want an error with %q", tc.n, err, tc.want)
		}
	}
}
