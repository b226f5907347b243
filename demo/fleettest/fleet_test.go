//go:build linux

package fleettest

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo/fleet"
	"github.com/ferryhq/ferry/internal/netlab"
)

// fleetLab is a deployment of several ferry-node processes, each on a host of its own, sharing the
// PostgreSQL catalog on the catalog host (logging in with the fleet's managed identity).
type fleetLab struct {
	lab   *netlab.Lab
	hosts map[string]*netlab.Host
	cat   *fleet.Catalog
	// nodes are node-1 (the deployment's first: its AdminToken is the first admin's), node-2, ….
	nodes []*fleet.Node
}

// startFleet makes a lab with a catalog host, n node hosts (node-1 … node-n) and the client hosts
// named, inits node-1 on the shared catalog, joins the others with `ferry-node init --join`, and
// runs them all (each ready when the first client host reaches it).
func startFleet(t *testing.T, ctx context.Context, n int, clients ...string) *fleetLab {
	t.Helper()
	names := []string{"catalog"}
	for i := 1; i <= n; i++ {
		names = append(names, fmt.Sprintf("node-%d", i))
	}
	l, hosts := lab(t, ctx, append(names, clients...)...)
	f := &fleetLab{lab: l, hosts: hosts, cat: startCatalog(t, ctx, l, hosts["catalog"])}
	if err := f.cat.StartDB(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		h := hosts[fmt.Sprintf("node-%d", i)]
		init := fleet.JoinNode
		if i == 1 {
			init = fleet.InitNode
		}
		nd, err := init(ctx, bins, h, filepath.Join(t.TempDir(), h.Name), f.cat.NodeConfig(h))
		if err != nil {
			t.Fatal(err)
		}
		f.nodes = append(f.nodes, nd)
	}
	for _, nd := range f.nodes {
		runNode(t, ctx, nd, hosts[clients[0]])
	}
	return f
}

// enrollWith enrolls a device of user with node nd (a token nd issues) on host h and runs its
// daemon: nd is the device's preferred node.
func (f *fleetLab) enrollWith(t *testing.T, ctx context.Context, nd *fleet.Node, user, h, device string) *fleet.Client {
	t.Helper()
	tok, err := nd.EnrollToken(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	return startClient(t, ctx, f.hosts[h], tok, device)
}

// waitNodeList waits (up to 20 s) until c's daemon has kept a node list naming every node of f,
// and returns it.
func (f *fleetLab) waitNodeList(t *testing.T, ctx context.Context, c *fleet.Client) []client.KnownNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var known []client.KnownNode
	for {
		st, err := client.LoadState(c.Dirs)
		if err == nil {
			known = st.Nodes
			if len(known) == len(f.nodes) && !slices.ContainsFunc(f.nodes, func(nd *fleet.Node) bool {
				return !slices.ContainsFunc(known, func(k client.KnownNode) bool { return k.Name == nd.Name })
			}) {
				return known
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the client on %s did not learn the %d nodes within 20 s; it knows %+v (%v)", c.Host.Name, len(f.nodes), known, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// status is c's daemon's status, asked for with a bound of 3 s: while the node in use does not
// answer, the daemon's status waits for it (its resources, then the account check) that long.
func status(ctx context.Context, c *fleet.Client) (client.Status, error) {
	// A status answers within two probes of the node (the resource list, then the account check)
	// even while the node in use is dead.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return c.Control().Status(ctx)
}

// waitUsing waits up to within until c's daemon uses the node named name (client.Status.Node)
// and returns its status.
func waitUsing(t *testing.T, ctx context.Context, c *fleet.Client, name string, within time.Duration) client.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var st client.Status
	var err error
	for {
		st, err = status(ctx, c)
		if err == nil && st.Node == name {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the client on %s does not use node %s within %v: it uses %q (last change %q, %v)", c.Host.Name, name, within, st.Node, st.NodeChange, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitLeaves waits up to within until c's daemon uses another node than name and returns its
// status.
// failoverBound is how long a test waits for a client to leave a dead node. The client moves
// after 3 s of silence and a 3 s unanswered handshake (client/failover.go), within the 10 s;
// the bound leaves room for a loaded CI machine, and waitLeaves logs the time it took.
const failoverBound = 20 * time.Second

func waitLeaves(t *testing.T, ctx context.Context, c *fleet.Client, name string, within time.Duration) client.Status {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		st, err := status(ctx, c)
		if err == nil && st.Node != "" && st.Node != name {
			t.Logf("the client on %s left %s after %v", c.Host.Name, name, time.Since(start).Round(100*time.Millisecond))
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the client on %s still uses node %s after %v (%+v, %v)", c.Host.Name, name, within, st, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// countSQL counts the query log's records by SQL text (without the semicolon psql and pgbench
// send).
func countSQL(qs []api.Query) map[string]int {
	n := map[string]int{}
	for _, q := range qs {
		n[strings.TrimSuffix(strings.TrimSpace(q.SQL), ";")]++
	}
	return n
}

// waitAudit reads the shared query log through c until ok accepts its counts (countSQL) or 60 s
// have passed (a record reaches the catalog shortly after its statement's result: a node ships
// its spool in the background; and a read of thousands of records on a loaded machine is slow),
// and returns the last counts and whether ok accepted them. A read that fails is tried again.
func waitAudit(t *testing.T, ctx context.Context, c *fleet.Client, ok func(map[string]int) bool) (map[string]int, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var n map[string]int
	for {
		start := time.Now()
		qs, err := c.Control().API().Queries(ctx, 1_000_000)
		if err != nil {
			t.Logf("read the query log through the client on %s (%v): %v", c.Host.Name, time.Since(start).Round(time.Millisecond), err)
		} else if n = countSQL(qs); ok(n) {
			return n, true
		}
		select {
		case <-ctx.Done():
			return n, false
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// TestThreeNodesOneCatalog: three ferry-node processes, each on a host of its own, keep one
// catalog in the PostgreSQL database on the catalog host. A device enrolled once, with node-1,
// learns every node of the deployment from the control API (GET /v1/nodes), and when node-1 stops
// it connects through another node, which admits it from the shared catalog and records its
// queries in the shared audit.
func TestThreeNodesOneCatalog(t *testing.T) {
	needLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := startFleet(t, ctx, 3, "client")
	c := startClient(t, ctx, f.hosts["client"], f.nodes[0].AdminToken, "laptop")
	conn := addDemoResource(t, ctx, c, f.cat)
	if out, err := c.Psql(ctx, conn, "SELECT 'through node-1'"); err != nil || out != "through node-1" {
		t.Fatalf("psql through node-1: %q, %v", out, err)
	}
	known := f.waitNodeList(t, ctx, c)
	for _, nd := range f.nodes {
		ep, err := nd.Endpoint()
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(known, func(k client.KnownNode) bool { return k.Name == nd.Name })
		if k := known[i]; k.WireGuardEndpoint != ep.WireGuardEndpoint || k.WireGuardPublicKey != ep.NodePublicKey || k.State != api.NodeOnline {
			t.Errorf("the client knows %s as %+v; want endpoint %s, key %s, online", nd.Name, k, ep.WireGuardEndpoint, ep.NodePublicKey)
		}
	}
	waitUsing(t, ctx, c, "node-1", 5*time.Second)

	if err := f.nodes[0].Stop(); err != nil {
		t.Fatal(err)
	}
	st := waitLeaves(t, ctx, c, "node-1", failoverBound)
	t.Logf("the client uses %s: %s", st.Node, st.NodeChange)
	sql := "SELECT 'through " + st.Node + "'"
	if out, err := c.Psql(ctx, conn, sql); err != nil || out != "through "+st.Node {
		t.Fatalf("psql through %s: %q, %v", st.Node, out, err)
	}
	if n, ok := waitAudit(t, ctx, c, func(n map[string]int) bool { return n[sql] == 1 && n["SELECT 'through node-1'"] == 1 }); !ok {
		t.Errorf("the shared audit counts %v; want each statement once", n)
	}
}
