package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
)

func TestParseWhen(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"", time.Time{}, false},
		{"2025-01-02T15:04:05Z", time.Date(2025, 1, 2, 15, 4, 5, 0, time.UTC), false},
		{"2025-01-02T15:04:05.5+02:00", time.Date(2025, 1, 2, 13, 4, 5, 5e8, time.UTC), false},
		{"1h", now.Add(-time.Hour), false},
		{"90m", now.Add(-90 * time.Minute), false},
		{"-1h", time.Time{}, true},
		{"yesterday", time.Time{}, true},
	}
	for _, tc := range tests {
		got, err := parseWhen("since", tc.in, now)
		if (err != nil) != tc.wantErr || !got.Equal(tc.want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestPrintConnections: the connection log shows each connection's dropped query records, in the
// table and (also when 0) in the JSON, and the node that carried it (name and ID).
func TestPrintConnections(t *testing.T) {
	start := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	cs := []api.Connection{
		{ID: 2, Start: start, End: start.Add(time.Second), DurationMS: 1000, User: "mallory", Resource: "pg", ClientAddr: "100.64.0.9:5000",
			Role: "mi_user", Database: "app", QueriesDropped: 12, Outcome: "ok", NodeID: "n-00000000000000aa", NodeName: "gw-1",
			Error: "terminating connection: the audit log is unavailable: the Ferry node cannot record this session's statements"},
		{ID: 1, Start: start, End: start.Add(time.Second), DurationMS: 1000, User: "alice", Resource: "pg", ClientAddr: "100.64.0.5:5000",
			Role: "mi_user", Database: "app", Outcome: "ok"},
	}
	tests := []struct {
		name string
		json bool
		want []string
	}{
		{"table", false, []string{"QUERIES DROPPED", "the audit log is unavailable", "NODE", "gw-1 (n-00000000000000aa)"}},
		{"json", true, []string{`"queries_dropped": 12`, `"queries_dropped": 0`, `"node_id": "n-00000000000000aa"`, `"node_name": "gw-1"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := printConnections(&out, cs, tc.json); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if !tc.json {
				// ID, START (date, time and zone), DURATION, USER, RESOURCE, CLIENT, ROLE@DATABASE, PID, BYTES IN/OUT, QUERIES DROPPED, ...
				lines := strings.Split(strings.TrimSpace(out.String()), "\n")
				for i, want := range []string{"12", "0"} {
					if f := strings.Fields(lines[1+i]); len(f) < 12 || f[11] != want {
						t.Errorf("row %d: QUERIES DROPPED = %q, want %s", i+1, f, want)
					}
				}
			}
			if tc.json {
				var back []api.Connection
				if err := json.Unmarshal(out.Bytes(), &back); err != nil || len(back) != 2 || back[0].QueriesDropped != 12 {
					t.Fatalf("JSON round trip: %v %+v", err, back)
				}
			}
		})
	}
}
