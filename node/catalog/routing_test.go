package catalog

import (
	"reflect"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/routing"
)

// TestNodeRouting: the one conversion from a catalog record to node/routing's view keeps the
// fields routing decides on and judges online as of the time given (heartbeat age, stopped).
func TestNodeRouting(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tags := map[string]string{"env": "prod"}
	base := Node{ID: "n-0123456789abcdef", Name: "w-1", ClusterID: "n-1a2b345c67890123", Tags: tags}
	for _, tc := range []struct {
		name   string
		hb     time.Time
		stop   time.Time
		online bool
	}{
		{"fresh heartbeat", now.Add(-NodeHeartbeatInterval), time.Time{}, true},
		{"heartbeat too old", now.Add(-NodeOfflineAfter), time.Time{}, false},
		{"stopped", now, now.Add(-time.Second), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := base
			n.LastHeartbeat, n.StoppedAt = tc.hb, tc.stop
			want := routing.Node{ID: base.ID, Name: base.Name, ClusterID: base.ClusterID, Tags: tags, Online: tc.online}
			if got := n.Routing(now); !reflect.DeepEqual(got, want) {
				t.Fatalf("Routing = %+v, want %+v", got, want)
			}
			if got := RoutingNodes([]Node{n, base}, now); len(got) != 2 || !reflect.DeepEqual(got[0], want) || got[1].ID != base.ID {
				t.Fatalf("RoutingNodes = %+v, want [%+v, %s]", got, want, base.ID)
			}
		})
	}
}
