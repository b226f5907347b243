//go:build linux

package fleettest

import (
	"context"
	"testing"
	"time"
)

// TestNodeKilledAndRestarted: a node killed with kill -9 (a crashed VM) restarts from its state
// directory on the same host; the enrolled client reaches it again without a new login, and what
// was recorded before the kill is still in the audit, once.
func TestNodeKilledAndRestarted(t *testing.T) {
	needLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	l, hosts := lab(t, ctx, "catalog", "node-a", "client")
	cat := startCatalog(t, ctx, l, hosts["catalog"])
	n := startNode(t, ctx, cat, hosts["node-a"], hosts["client"])
	c := startClient(t, ctx, hosts["client"], n.AdminToken, "laptop")
	conn := addDemoResource(t, ctx, c, cat)

	if out, err := c.Psql(ctx, conn, "SELECT 'before the kill'"); err != nil || out != "before the kill" {
		t.Fatalf("psql before the kill: %q, %v", out, err)
	}
	n.Kill()
	if err := n.Start(ctx, hosts["client"]); err != nil {
		t.Fatalf("restart after kill -9: %v", err)
	}
	// The client's WireGuard session with the killed process is gone; its next handshake reaches
	// the restarted node. Bounded by ctx.
	var out string
	var err error
	for ctx.Err() == nil {
		if out, err = c.Psql(ctx, conn, "SELECT 'after the restart'"); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil || out != "after the restart" {
		t.Fatalf("psql after the restart: %q, %v", out, err)
	}
	count := map[string]int{}
	for _, q := range queries(t, ctx, c) {
		count[q.SQL]++
	}
	if count["SELECT 'before the kill'"] != 1 || count["SELECT 'after the restart'"] != 1 {
		t.Errorf("the audit after the restart counts %v; want each statement once", count)
	}
}
