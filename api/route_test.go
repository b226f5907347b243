package api

import (
	"encoding/json"
	"testing"
	"time"
)

// TestRouteNodeJSON: a route node that has not checked the resource yet carries neither health nor
// a check time (not the zero time "0001-01-01T00:00:00Z"), as the wire contract says.
func TestRouteNodeJSON(t *testing.T) {
	at := time.Date(2026, 12, 2, 16, 40, 12, 0, time.UTC)
	tests := []struct {
		n    RouteNode
		want string
	}{
		{RouteNode{NodeID: "n-0123456789abcdef"}, `{"node_id":"n-0123456789abcdef"}`},
		{RouteNode{NodeID: "n-0123456789abcdef", Health: HealthHealthy, CheckedAt: at},
			`{"node_id":"n-0123456789abcdef","health":"healthy","checked_at":"2026-12-02T16:40:12Z"}`},
	}
	for _, tc := range tests {
		b, err := json.Marshal(tc.n)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.want {
			t.Errorf("json of %+v = %s, want %s", tc.n, b, tc.want)
		}
	}
}
