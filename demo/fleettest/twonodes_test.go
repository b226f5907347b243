package fleettest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryhq/ferry/demo/fleet"
)

// TestTwoNodesOneCatalog: two ferry-node processes on hosts of their own keep their catalog in one
// PostgreSQL database on the catalog host, logging in to it with the fleet's managed identity
// (tokens from the emulator's IMDS, TLS verified for the server's name). A device enrolled with
// node A, and the resource its admin added through A, are known to node B: the same device
// (a second client configuration pointed at B) connects through B and runs a query there.
func TestTwoNodesOneCatalog(t *testing.T) {
	needLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	l, hosts := lab(t, ctx, "catalog", "node-a", "node-b", "client", "client-b")
	cat := startCatalog(t, ctx, l, hosts["catalog"])
	if err := cat.StartDB(ctx); err != nil {
		t.Fatal(err)
	}

	a, err := fleet.InitNode(ctx, bins, hosts["node-a"], filepath.Join(t.TempDir(), "node-a"), cat.NodeConfig(hosts["node-a"]))
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, ctx, a, hosts["client"])
	t.Log("node A runs")
	b, err := fleet.JoinNode(ctx, bins, hosts["node-b"], filepath.Join(t.TempDir(), "node-b"), cat.NodeConfig(hosts["node-b"]))
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, ctx, b, hosts["client-b"])
	t.Log("node B runs")

	c := startClient(t, ctx, hosts["client"], a.AdminToken, "laptop")
	conn := addDemoResource(t, ctx, c, cat)
	if out, err := c.Psql(ctx, conn, "SELECT 'through node a'"); err != nil || out != "through node a" {
		t.Fatalf("psql through node A: %q, %v", out, err)
	}

	// The same device through node B, which admits it from the shared catalog.
	cb, err := c.Via(b, hosts["client-b"], filepath.Join(t.TempDir(), "client-b"))
	if err != nil {
		t.Fatal(err)
	}
	t.Log("through node A")
	startDaemon(t, ctx, cb)
	t.Log("the device reaches node B")
	connB := connectDemoResource(t, ctx, cb)
	if out, err := cb.Psql(ctx, connB, "SELECT 'through node b'"); err != nil || out != "through node b" {
		t.Fatalf("psql through node B: %q, %v", out, err)
	}
	var found bool
	for _, q := range queries(t, ctx, cb) {
		found = found || q.SQL == "SELECT 'through node b'" && q.User == "admin"
	}
	if !found {
		t.Errorf("node B's audit has no SELECT through it: %+v", queries(t, ctx, cb))
	}
}
