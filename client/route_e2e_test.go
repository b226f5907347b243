package client_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

func testLogger() *slog.Logger {
	if os.Getenv("FERRY_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// routes is the Route every resource list the daemon reads carries, as a node computing routes
// would send it; the test changes it.
type routes struct {
	mu sync.Mutex
	by map[string]*api.Route
}

func (r *routes) set(name string, rt *api.Route) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.by[name] = rt
}

func (r *routes) edit(rs []api.Resource) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range rs {
		if rt, ok := r.by[rs[i].Name]; ok {
			c := *rt
			c.Nodes = slices.Clone(rt.Nodes)
			rs[i].Route = &c
		}
	}
}

// sessionsTotal reads ferry_sessions_total from n's metrics endpoint: the PostgreSQL connections
// that node proxied.
func sessionsTotal(t *testing.T, ctx context.Context, n *node.Node) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.MetricsAddr().String()+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("read a node's metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "ferry_sessions_total "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(f)
		}
	}
	t.Fatalf("no ferry_sessions_total in the metrics of %s", n.MetricsAddr())
	return 0
}

// rowNode is the node status names for a connected resource.
func rowNode(ctx context.Context, d *client.Daemon, name string) (string, client.ResourceStatus) {
	for _, r := range d.Status(ctx).Resources {
		if r.Name == name {
			return r.Node, r
		}
	}
	return "", client.ResourceStatus{}
}

// TestRoutePerResource: three nodes, the client's control API on node-1. Resource "prod" may be
// carried by node-2 only, "two" by node-3 (healthy) or node-1 (not checked yet), "none" by no
// node. prod's connections are proxied by node-2 and two's by node-3 (each node's own session
// count says so: the WireGuard /32 of each resource to its node's peer wins over node-1's
// 0.0.0.0/0, and the replies from the resource's address pass the peer's allowed IPs), and status
// names those nodes; "none" is refused by the client with a FATAL 08001 naming the reason, and no
// node sees a session. node-3 then goes silent: new connections to "two" go through node-1
// (its next candidate), the session open to it through node-3 ends with a FATAL 08006, and
// "prod" stays on node-2 with its open session untouched. Last node-1, the node in use for the
// control API, goes silent: the control API moves to node-2, and prod's session and node stay.
func TestRoutePerResource(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	env, err := demo.Start(ctx, demo.Options{Dir: t.TempDir(), LoopbackIP: demo.RandomLoopbackIP(), Nodes: 3, Logger: testLogger(),
		NodeConfig: func(c *node.Config) { c.MetricsListen = "127.0.0.1:0" }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Close() })
	n1, n2, n3 := env.Nodes[0], env.Nodes[1], env.Nodes[2]
	for _, name := range []string{"two", "none"} {
		r := resource.New(name)
		r.Hostname = env.Emu.Hostname()
		r.Database, r.Username, r.ManagedIdentityClientID = demo.Database, demo.Role, demo.ClientID
		r.BindInterface = strings.Split(env.Resource.Address, ":")[0]
		if _, err := env.Daemon.API().AddDatasource(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	rt := &routes{by: map[string]*api.Route{
		demo.ResourceName: {Nodes: []api.RouteNode{{NodeID: n2.ID(), Health: api.HealthHealthy}}},
		"two":             {Nodes: []api.RouteNode{{NodeID: n1.ID()}, {NodeID: n3.ID(), Health: api.HealthHealthy}}},
		"none":            {Nodes: []api.RouteNode{}, Reason: "no node can reach it: no online node matches egress filter tag:env=nothing"},
	}}
	// The daemon, started again with the routes (the node list is in its state once it read it).
	testenv.WaitFor(t, "the node list in the client's state", 20*time.Second, func() error {
		st, err := client.LoadState(env.Dirs)
		if err != nil || len(st.Nodes) != 3 {
			return fmt.Errorf("nodes %d, %v", len(st.Nodes), err)
		}
		return nil
	})
	if err := env.Daemon.Close(); err != nil {
		t.Fatal(err)
	}
	env.Daemon = nil
	d, err := client.StartDaemon(ctx, env.Dirs, testLogger().With("component", "client"), client.WithRouteEdit(rt.edit))
	if err != nil {
		t.Fatal(err)
	}
	env.Daemon = d
	conns := map[string]string{}
	for _, name := range []string{demo.ResourceName, "two", "none"} {
		rs, err := d.Connect(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		conns[name] = client.ConnString(rs)
	}
	counts := func() [3]int {
		return [3]int{sessionsTotal(t, ctx, n1), sessionsTotal(t, ctx, n2), sessionsTotal(t, ctx, n3)}
	}
	lands := func(name string, want int) {
		t.Helper()
		before := counts()
		if err := testenv.SelectOne(ctx, conns[name], 8*time.Second); err != nil {
			t.Fatalf("a connection to %s: %v", name, err)
		}
		after := counts()
		for i := range after {
			grew := after[i] - before[i]
			if (i == want && grew != 1) || (i != want && grew != 0) {
				t.Fatalf("a connection to %s: sessions per node went from %v to %v; want one more on node-%d only", name, before, after, want+1)
			}
		}
	}
	lands(demo.ResourceName, 1)
	lands("two", 2)
	testenv.WaitFor(t, "status naming each connected resource's node", 20*time.Second, func() error {
		got := map[string]string{}
		for _, name := range []string{demo.ResourceName, "two", "none"} {
			got[name], _ = rowNode(ctx, d, name)
		}
		if got[demo.ResourceName] != "node-2" || got["two"] != "node-3" || got["none"] != "" {
			return fmt.Errorf("status says %v; want prod on node-2, two on node-3, none on none", got)
		}
		return nil
	})

	before := counts()
	_, err = pgx.Connect(ctx, conns["none"]+" connect_timeout=8")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08001" || pgErr.Severity != "FATAL" ||
		!strings.Contains(pgErr.Message, "no online node matches egress filter tag:env=nothing") {
		t.Fatalf("a connection to none: %v; want a FATAL 08001 naming the reason", err)
	}
	if after := counts(); after != before {
		t.Fatalf("a connection to none: sessions per node went from %v to %v; want nothing sent to a node", before, after)
	}

	// Sessions open through node-2 (prod) and node-3 (two).
	onProd, err := pgx.Connect(ctx, conns[demo.ResourceName])
	if err != nil {
		t.Fatal(err)
	}
	defer onProd.Close(context.Background())
	onTwo, err := pgx.Connect(ctx, conns["two"])
	if err != nil {
		t.Fatal(err)
	}
	defer onTwo.Close(context.Background())
	twoErr := make(chan error, 1)
	go func() {
		qctx, qcancel := context.WithTimeout(ctx, 90*time.Second)
		defer qcancel()
		_, err := onTwo.Exec(qctx, "SELECT pg_sleep(60)")
		twoErr <- err
	}()
	time.Sleep(300 * time.Millisecond) // the query is on its way

	// node-3 goes silent (its WireGuard stops; no FIN or RST reaches the client).
	if err := n3.Tunnel().Close(); err != nil {
		t.Fatal(err)
	}
	took := testenv.WaitFor(t, "status naming node-1 for two", 30*time.Second, func() error {
		if got, _ := rowNode(ctx, d, "two"); got != "node-1" {
			return fmt.Errorf("two is on %q", got)
		}
		return nil
	})
	t.Logf("two moved to node-1 %v after node-3 went silent (design bound: 10 s)", took.Round(100*time.Millisecond))
	select {
	case err := <-twoErr:
		if !errors.As(err, &pgErr) || pgErr.Code != "08006" || pgErr.Severity != "FATAL" || !strings.Contains(pgErr.Message, "node-3") {
			t.Fatalf("the session to two through node-3 ended with %v; want a FATAL 08006 naming node-3", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the session to two through node-3 still hangs 30 s after two moved")
	}
	before = counts()
	if err := testenv.SelectOne(ctx, conns["two"], 8*time.Second); err != nil {
		t.Fatalf("a connection to two after node-3 went silent: %v", err)
	}
	if after := counts(); after[0] != before[0]+1 || after[1] != before[1] {
		t.Fatalf("a connection to two after node-3 went silent: sessions on node-1 and node-2 went from %v to %v; want one more on node-1", before[:2], after[:2])
	}
	if got, _ := rowNode(ctx, d, demo.ResourceName); got != "node-2" {
		t.Fatalf("prod moved to %q when node-3 went silent; want it left on node-2", got)
	}
	if err := onProd.Ping(ctx); err != nil {
		t.Fatalf("the session to prod through node-2 broke when node-3 went silent: %v", err)
	}
	lands(demo.ResourceName, 1)

	// The control node (node-1) goes silent: the control API moves to node-2 as before, and prod,
	// which node-2 carries, keeps its session and its node.
	if err := n1.Tunnel().Close(); err != nil {
		t.Fatal(err)
	}
	took = testenv.WaitFor(t, "the control API on node-2", 30*time.Second, func() error {
		if st := d.Status(ctx); st.Node != "node-2" {
			return fmt.Errorf("the node in use is %q", st.Node)
		}
		return nil
	})
	t.Logf("the control API moved to node-2 %v after node-1 went silent", took.Round(100*time.Millisecond))
	if got, _ := rowNode(ctx, d, demo.ResourceName); got != "node-2" {
		t.Fatalf("prod moved to %q when the control node went silent; want it left on node-2", got)
	}
	if err := onProd.Ping(ctx); err != nil {
		t.Fatalf("the session to prod through node-2 broke when the control node went silent: %v", err)
	}
	lands(demo.ResourceName, 1)
}
