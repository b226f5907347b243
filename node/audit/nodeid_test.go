package audit

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestConnectionNodeID: every connection record keeps the ID of the node that carried it, written
// directly and shipped from the spool after an outage alike, and the connection log is filtered by
// it (on both backends).
func TestConnectionNodeID(t *testing.T) {
	forEachBackend(t, true, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		l := d.openSpoolLog(t, filepath.Join(t.TempDir(), "audit-spool.db"), nil)
		const a, b = "n-00000000000000aa", "n-00000000000000bb"
		start := func(user, node string) {
			t.Helper()
			id, err := l.StartConnection(ctx, Connection{User: user, Resource: "r", ClientAddr: "100.64.0.2:1", NodeID: node})
			if err != nil {
				t.Fatal(err)
			}
			if err := l.EndConnection(ctx, id, time.Now(), ConnectionEnd{Outcome: OutcomeDenied}); err != nil {
				t.Fatal(err)
			}
		}
		start("alice", a)
		start("bob", b)
		start("old", "") // a record as a node from before node IDs wrote it
		restore := d.outage(t)
		start("carol", a) // spooled
		restore()
		waitDrained(t, l)

		tests := []struct {
			node string
			want []string // users, newest first
		}{
			{a, []string{"carol", "alice"}},
			{b, []string{"bob"}},
			{"n-00000000000000cc", nil},
			{"", []string{"carol", "old", "bob", "alice"}},
		}
		for _, tc := range tests {
			cs, err := l.Connections(ctx, ConnectionFilter{NodeID: tc.node})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range cs {
				got = append(got, c.User)
				want := map[string]string{"alice": a, "carol": a, "bob": b, "old": ""}[c.User]
				if c.NodeID != want {
					t.Errorf("%s's connection has node ID %q, want %q", c.User, c.NodeID, want)
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("node %q: connections of %v, want %v", tc.node, got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("node %q: connections of %v, want %v", tc.node, got, tc.want)
				}
			}
		}
	})
}
