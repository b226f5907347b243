package demo_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
)

// TestStartNodesShareOneCatalog: with Options.Nodes 3 the demo runs three nodes on one catalog
// database: the resource the client added through the first node, and the client's device, are
// in every node's catalog, and a query through the first node works as in the single-node demo.
func TestStartNodesShareOneCatalog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{LoopbackIP: demo.RandomLoopbackIP(), Nodes: 3})
	if len(env.Nodes) != 3 || len(env.NodeDirs) != 3 || env.Node != env.Nodes[0] || env.CatalogDB == nil {
		t.Fatalf("nodes %d, dirs %v, catalog server %v", len(env.Nodes), env.NodeDirs, env.CatalogDB)
	}
	for i, n := range env.Nodes {
		if _, err := n.Catalog().ResourceByName(ctx, demo.ResourceName); err != nil {
			t.Errorf("node %d: %s: %v", i+1, demo.ResourceName, err)
		}
		devs, err := n.Catalog().Devices(ctx)
		if err != nil || len(devs) != 1 {
			t.Errorf("node %d: devices %+v, %v; want the client's one", i+1, devs, err)
		}
	}
	// Each node registered itself under a name of its own (one host's name would be taken thrice).
	ns, err := env.Node.Catalog().Nodes(ctx)
	if err != nil || len(ns) != 3 {
		t.Fatalf("registered nodes %+v, %v; want 3", ns, err)
	}
	names := map[string]bool{}
	for _, x := range ns {
		names[x.Name] = x.Online(time.Now())
	}
	for _, want := range []string{"node-1", "node-2", "node-3"} {
		if !names[want] {
			t.Errorf("node %s not registered online: %v", want, names)
		}
	}
	out, err := psql(t, client.ConnString(env.Resource), "-c", "SELECT 'fleet'")
	if err != nil || strings.TrimSpace(out) != "fleet" {
		t.Fatalf("psql through the first node: %q, %v", out, err)
	}
}
