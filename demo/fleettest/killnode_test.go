//go:build linux

package fleettest

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/fleet"
)

// bench is one pgbench run in the background: its output and error when done is closed.
type bench struct {
	out  string
	err  error
	done chan struct{}
}

// startBench runs pgbench through c (conn) with the script file script: 2 clients, rate-limited,
// for secs seconds, no vacuum, each failed transaction reported.
func startBench(ctx context.Context, c *fleet.Client, conn, script string, secs int) *bench {
	b := &bench{done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.out, b.err = c.Pgbench(ctx, conn, "-n", "-f", script, "-c", "2", "-R", "40", "-T", strconv.Itoa(secs))
	}()
	return b
}

var processedRE = regexp.MustCompile(`number of transactions actually processed: (\d+)`)

// processed is the number of transactions pgbench reports as processed (acknowledged).
func processed(out string) int {
	m := processedRE.FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// writeScript writes a pgbench script running sql into t's temp dir (which every lab host sees).
func writeScript(t *testing.T, name, sql string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(sql+";\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestNodeKilledUnderLoad: of three nodes on one catalog, node-1 is killed with kill -9 (a crashed
// VM) while psql sessions and pgbench run through it (device A, enrolled with node-1) and through
// node-2 (device B, enrolled with node-2). Device A moves to a live node within 10 s and new
// connections succeed, admin writes too; its session through node-1 ends with the client's FATAL
// 08006 instead of hanging; device B's session and pgbench through node-2 are untouched (zero
// failed transactions); every psql statement acknowledged before the kill is in the shared audit,
// once, and every pgbench transaction acknowledged through node-2 and through node-1 (the killed
// one: a node lets an answer through only once its record is durable); and
// node-1, restarted from its state directory, rejoins (a new start in `ferry admin nodes`, online)
// and device A returns to it.
func TestNodeKilledUnderLoad(t *testing.T) {
	needLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := startFleet(t, ctx, 3, "client-a", "client-b")
	a := startClient(t, ctx, f.hosts["client-a"], f.nodes[0].AdminToken, "laptop-a")
	// Each resource is carried by the node its client chooses among its candidates (the nearest
	// healthy one), not by the client's own node: egress filters pin device A's resource to node-1
	// and device B's to node-2 (node-3 joins A's candidates below, once A has chosen node-1).
	for _, tags := range [][2]string{{"node-1", "carry=a"}, {"node-2", "carry=b"}} {
		if out, err := a.Ferry(ctx, "admin", "nodes", "update", tags[0], "--tags", tags[1]); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	connA := addResource(t, ctx, a, f.cat, demo.ResourceName, "--egress-filter=tag:carry=a or tag:spare=a")
	if out, err := a.Ferry(ctx, "admin", "datasources", "add", "azurepostgresmi", "pg-b", "--hostname="+f.cat.Emu.Hostname(), "--port=5432",
		"--database="+demo.Database, "--username="+demo.Role, "--managed-identity-client-id="+demo.ClientID, "--tls-required", "--egress-filter=tag:carry=b"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	b := f.enrollWith(t, ctx, f.nodes[1], "admin", "client-b", "laptop-b")
	connB := connectResource(t, ctx, b, "pg-b")
	f.waitNodeList(t, ctx, a)
	waitUsing(t, ctx, a, "node-1", 5*time.Second)
	waitUsing(t, ctx, b, "node-2", 5*time.Second)

	// Acknowledged before the kill: statements whose results came back through node-1 and node-2.
	acked := []string{}
	for i := range 3 {
		sql := "SELECT 'acked through node-1 #" + strconv.Itoa(i) + "'"
		if _, err := a.Psql(ctx, connA, sql); err != nil {
			t.Fatalf("psql through node-1: %v", err)
		}
		acked = append(acked, sql)
	}
	session := func(c *fleet.Client, conn, name string) *fleet.Session {
		s, err := c.StartSession(conn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		sql := "SELECT '" + name + " ready'"
		if err := s.Send(sql + ";"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if !s.WaitOutput(wctx, name+" ready") {
			t.Fatalf("psql session %s: not ready:\n%s", name, s.Output())
		}
		acked = append(acked, sql)
		return s
	}
	// node-3 may now carry A's resource too; A keeps node-1 while it answers.
	if out, err := a.Ferry(ctx, "admin", "nodes", "update", "node-3", "--tags", "spare=a"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sessA := session(a, connA, "session A")
	sessB := session(b, connB, "session B")
	benchA := startBench(ctx, a, connA, writeScript(t, "a.sql", "SELECT 'bench A'"), 25)
	benchB := startBench(ctx, b, connB, writeScript(t, "b.sql", "SELECT 'bench B'"), 25)
	// Both sessions are in the middle of a statement when node-1 dies.
	if err := sessA.Send("SELECT pg_sleep(60);"); err != nil {
		t.Fatal(err)
	}
	if err := sessB.Send("SELECT pg_sleep(8), 'session B slept';"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // load runs through both nodes

	// An admin call through the daemon's relay to the control API, through node-1.
	if out, err := a.Ferry(ctx, "admin", "nodes", "list"); err != nil {
		t.Fatalf("ferry admin nodes list through node-1: %v\n%s", err, out)
	}

	f.nodes[0].Kill()
	t.Log("node-1 killed")
	st := waitLeaves(t, ctx, a, "node-1", failoverBound)
	t.Logf("device A uses %s: %s", st.Node, st.NodeChange)
	if out, err := a.Psql(ctx, connA, "SELECT 'after the failover'"); err != nil || out != "after the failover" {
		t.Errorf("a new connection of device A after the failover: %q, %v", out, err)
	}
	// Admin writes go to the node in use too (none may ride a connection made through node-1).
	if out, err := a.Ferry(ctx, "admin", "roles", "add", "after-failover"); err != nil {
		t.Errorf("an admin write through device A after the failover: %v\n%s", err, out)
	}

	// The session through node-1 ends with the client's FATAL 08006, and psql exits.
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	if !sessA.WaitOutput(wctx, "08006") {
		t.Errorf("session A through the killed node: no FATAL 08006 within 10 s of the failover:\n%s", sessA.Output())
	}
	wcancel()
	select {
	case <-sessA.Done():
	case <-time.After(5 * time.Second):
		t.Errorf("psql of session A still runs 5 s after its FATAL:\n%s", sessA.Output())
	}
	// The session through node-2 is untouched.
	if err := sessB.Send("SELECT 'session B after';"); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel = context.WithTimeout(ctx, 20*time.Second)
	if !sessB.WaitOutput(wctx, "session B after") || strings.Contains(sessB.Output(), "ERROR") || strings.Contains(sessB.Output(), "FATAL") {
		t.Errorf("session B through node-2 was disturbed:\n%s", sessB.Output())
	}
	wcancel()

	<-benchB.done
	<-benchA.done
	if benchB.err != nil || !strings.Contains(benchB.out, "number of failed transactions: 0 ") || processed(benchB.out) <= 0 {
		t.Errorf("pgbench through node-2: %v\n%s", benchB.err, benchB.out)
	}
	t.Logf("pgbench through node-1 (killed): %v\n%s", benchA.err, benchA.out)

	// node-1 restarts from its state directory and rejoins.
	killedAt := time.Now()
	if err := f.nodes[0].Start(ctx, f.hosts["client-a"]); err != nil {
		t.Fatalf("restart node-1 after kill -9: %v", err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	for {
		ns, err := a.Control().API().Nodes(rctx)
		i := -1
		for j, n := range ns {
			if n.Name == "node-1" {
				i = j
			}
		}
		if err == nil && i >= 0 && ns[i].State == api.NodeOnline && ns[i].StartedAt.After(killedAt.Add(-time.Second)) {
			break
		}
		if rctx.Err() != nil {
			t.Fatalf("node-1 did not rejoin within 30 s of its restart: %+v, %v", ns, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := a.Ferry(ctx, "admin", "nodes", "list"); err != nil || !regexp.MustCompile(`node-1\s+online`).MatchString(out) {
		t.Errorf("ferry admin nodes list after the restart: %v\n%s", err, out)
	}
	// Device A returns to its preferred node.
	waitUsing(t, ctx, a, "node-1", 30*time.Second)
	if out, err := a.Psql(ctx, connA, "SELECT 'back on node-1'"); err != nil || out != "back on node-1" {
		t.Errorf("psql through node-1 after its return: %q, %v", out, err)
	}
	if out, err := a.Ferry(ctx, "admin", "roles", "add", "after-return"); err != nil {
		t.Errorf("an admin write through device A after its return to node-1: %v\n%s", err, out)
	}

	// Nothing acknowledged is lost, nothing recorded twice.
	want := append(acked, "SELECT 'after the failover'", "SELECT 'session B after'", "SELECT 'back on node-1'")
	pA, pB := processed(benchA.out), processed(benchB.out)
	n, ok := waitAudit(t, ctx, a, func(n map[string]int) bool {
		for _, sql := range want {
			if n[sql] != 1 {
				return false
			}
		}
		return n["SELECT 'bench B'"] >= pB && n["SELECT 'bench A'"] >= pA
	})
	if !ok {
		for _, sql := range want {
			if n[sql] != 1 {
				t.Errorf("the shared audit has %q %d times; want once", sql, n[sql])
			}
		}
		if n["SELECT 'bench B'"] < pB {
			t.Errorf("pgbench through node-2 had %d transactions acknowledged; the audit has %d", pB, n["SELECT 'bench B'"])
		}
		// A node lets a statement's answer through only once its query record is durable
		// (pgproxy's heldWriter), so kill -9 loses no record of a statement the client saw complete.
		if got := n["SELECT 'bench A'"]; got < pA {
			t.Errorf("pgbench through node-1 had %d transactions acknowledged before the kill; the audit has %d", pA, got)
		}
	}
	t.Logf("pgbench through node-1 (killed): %d transactions acknowledged, %d recorded; through node-2: %d acknowledged, %d recorded",
		pA, n["SELECT 'bench A'"], pB, n["SELECT 'bench B'"])
}
