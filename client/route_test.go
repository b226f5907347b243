package client

import (
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/tunnel"
)

// TestPickCandidate: the choice of node for a resource prefers a healthy node, then one not checked
// yet, then an unhealthy one; within that the lowest measured round trip (measured before not
// measured), then the node list's order; it stays on the node in use while that is usable and no
// less healthy than the best other, and skips nodes that stopped answering lately unless all did.
func TestPickCandidate(t *testing.T) {
	now := time.Now()
	var keys [4]tunnel.Key
	for i := range keys {
		keys[i] = newKey(t).PublicKey()
	}
	c := func(i int, health string, rtt time.Duration) candidate {
		return candidate{key: keys[i], node: KnownNode{Name: string(rune('a' + i))}, health: health, rtt: rtt}
	}
	failed := func(cd candidate, ago time.Duration) candidate { cd.failedAt = now.Add(-ago); return cd }
	ms := time.Millisecond
	none := tunnel.Key{}
	tests := []struct {
		name   string
		cands  []candidate
		sticky tunnel.Key
		want   int // index into cands; -1 none
	}{
		{"no candidate", nil, none, -1},
		{"one", []candidate{c(0, "", 0)}, none, 0},
		{"healthy beats faster unchecked", []candidate{c(0, "", 1*ms), c(1, "healthy", 50*ms)}, none, 1},
		{"unchecked beats faster unhealthy", []candidate{c(0, "unhealthy", 1*ms), c(1, "", 50*ms)}, none, 1},
		{"lower round trip among healthy", []candidate{c(0, "healthy", 30*ms), c(1, "healthy", 5*ms), c(2, "healthy", 10*ms)}, none, 1},
		{"measured before unmeasured", []candidate{c(0, "healthy", 0), c(1, "healthy", 80*ms)}, none, 1},
		{"list order when nothing measured", []candidate{c(0, "", 0), c(1, "", 0)}, none, 0},
		{"sticky over a faster healthy node", []candidate{c(0, "healthy", 1*ms), c(1, "healthy", 40*ms)}, keys[1], 1},
		{"sticky unchecked stays among unchecked", []candidate{c(0, "", 1*ms), c(1, "", 40*ms)}, keys[1], 1},
		{"sticky left when it turned unhealthy", []candidate{c(0, "healthy", 40*ms), c(1, "unhealthy", 1*ms)}, keys[1], 0},
		{"sticky unchecked left for a healthy one", []candidate{c(0, "healthy", 40*ms), c(1, "", 1*ms)}, keys[1], 0},
		{"sticky no longer a candidate", []candidate{c(0, "healthy", 40*ms), c(1, "healthy", 1*ms)}, keys[3], 1},
		{"failed lately skipped", []candidate{failed(c(0, "healthy", 1*ms), 5*time.Second), c(1, "unhealthy", 0)}, none, 1},
		{"failed lately not kept though sticky", []candidate{failed(c(0, "healthy", 1*ms), 5*time.Second), c(1, "", 9*ms)}, keys[0], 1},
		{"failed long ago usable again", []candidate{failed(c(0, "healthy", 1*ms), deadFor+time.Second), c(1, "healthy", 9*ms)}, none, 0},
		{"all failed lately: tried anyway", []candidate{failed(c(0, "", 0), time.Second), failed(c(1, "healthy", 0), time.Second)}, none, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := pickCandidate(tc.cands, tc.sticky, now); got != tc.want {
				t.Errorf("picked %d, want %d", got, tc.want)
			}
		})
	}
}

// TestRoutableVN: a resource's VN address is routed to its node as a /32 only when it is an IPv4
// unicast address other than the nodes' in-tunnel address, so that a resource list cannot steer
// the control API (or broadcast, loopback, multicast) to another node.
func TestRoutableVN(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"100.64.0.7:5432", true},
		{"10.1.2.3:5432", true},
		{api.NodeTunnelAddress.String() + ":5432", false},
		{"127.0.0.1:5432", false},
		{"0.0.0.0:5432", false},
		{"255.255.255.255:5432", false},
		{"224.0.0.1:5432", false},
		{"[fd00::1]:5432", false},
		{"100.64.0.7", false},
		{"", false},
	}
	for _, tc := range tests {
		_, err := routableVN(api.Resource{Name: "r", VNAddress: tc.addr})
		if (err == nil) != tc.ok {
			t.Errorf("routableVN(%q): %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}
