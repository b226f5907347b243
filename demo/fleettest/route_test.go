//go:build linux

package fleettest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/fleet"
	"github.com/ferryhq/ferry/internal/netlab"
	"github.com/ferryhq/ferry/node"
)

// Routing across hosts (issue 16): proxy clusters and egress filters with every node a ferry-node
// process in a network namespace of its own.

// routeLab is a lab with a catalog host (the emulator and the shared catalog database), node hosts
// node-1 … node-n (no node made yet: addNode) and the client hosts named.
func routeLab(t *testing.T, ctx context.Context, n int, clients ...string) *fleetLab {
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
	return f
}

// addNode makes node-i (1-based; node-1 inits the deployment, the others join it) with the config
// edit makes to the catalog host's defaults, runs it (ready when from reaches it) and returns it.
func (f *fleetLab) addNode(t *testing.T, ctx context.Context, i int, from string, edit func(*node.Config)) *fleet.Node {
	t.Helper()
	h := f.hosts[fmt.Sprintf("node-%d", i)]
	cfg := f.cat.NodeConfig(h)
	if edit != nil {
		edit(&cfg)
	}
	init := fleet.JoinNode
	if i == 1 {
		init = fleet.InitNode
	}
	nd, err := init(ctx, bins, h, filepath.Join(t.TempDir(), h.Name), cfg)
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, ctx, nd, f.hosts[from])
	f.nodes = append(f.nodes, nd)
	return nd
}

// blockServer makes the emulator's PostgreSQL server (its address and port) unreachable from h: a
// policy routing rule in h's namespace prohibits TCP to that port of the catalog host (a connection
// fails at once with "permission denied"), while IMDS and the catalog database on the same host stay
// reachable. unblock removes the rule.
func blockServer(t *testing.T, ctx context.Context, h *netlab.Host, emu string) (unblock func()) {
	t.Helper()
	host, port, err := net.SplitHostPort(emu)
	if err != nil {
		t.Fatal(err)
	}
	rule := []string{"to", host + "/32", "ipproto", "tcp", "dport", port, "prohibit"}
	if out, err := h.Exec(ctx, append([]string{"ip", "rule", "add"}, rule...)...); err != nil {
		t.Fatalf("block the server from %s: %v\n%s", h.Name, err, out)
	}
	return func() {
		if out, err := h.Exec(ctx, append([]string{"ip", "rule", "del"}, rule...)...); err != nil {
			t.Fatalf("unblock the server from %s: %v\n%s", h.Name, err, out)
		}
	}
}

// reaches reports whether a TCP connection from h to addr is made within 3 s.
func reaches(ctx context.Context, h *netlab.Host, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// addResource adds a resource on the emulator's server with the extra flags (egress filter, proxy
// cluster), connects it through c and returns its psql connection string inside c's host.
func addResource(t *testing.T, ctx context.Context, c *fleet.Client, cat *fleet.Catalog, name string, extra ...string) string {
	t.Helper()
	args := append([]string{"admin", "datasources", "add", "azurepostgresmi", name,
		"--hostname=" + cat.Emu.Hostname(), "--port=5432", "--database=" + demo.Database, "--username=" + demo.Role,
		"--managed-identity-client-id=" + demo.ClientID, "--tls-required"}, extra...)
	if out, err := c.Ferry(ctx, args...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return connectResource(t, ctx, c, name)
}

// connectResource connects resource name through c and returns its psql connection string inside
// c's host.
func connectResource(t *testing.T, ctx context.Context, c *fleet.Client, name string) string {
	t.Helper()
	out, err := c.Ferry(ctx, "connect", name)
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("ferry connect %s printed %q: %v", name, out, err)
	}
	return "host=" + host + " port=" + port + " dbname=" + demo.Database + " user=" + demo.Role + " sslmode=disable"
}

// pgConnect logs in with pgconn (its SQLSTATE at hand, which psql does not print for a failed
// login) to the local address of conn (a psql connection string) from inside c's host.
func pgConnect(ctx context.Context, c *fleet.Client, conn string) error {
	cfg, err := pgconn.ParseConfig(conn + " connect_timeout=20")
	if err != nil {
		return err
	}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return c.Host.DialContext(ctx, network, addr)
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		pc.Close(ctx)
	}
	return err
}

// connections is the connection log of resource as the admin c reads it with the CLI, of node
// (name or ID) when not empty.
func connections(t *testing.T, ctx context.Context, c *fleet.Client, resource, node string) []api.Connection {
	t.Helper()
	args := []string{"admin", "logs", "connections", "--resource", resource, "--json"}
	if node != "" {
		args = append(args, "--node", node)
	}
	out, err := c.Ferry(ctx, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var cs []api.Connection
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		t.Fatalf("ferry %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return cs
}

// nodesOf counts connection records by node name.
func nodesOf(cs []api.Connection) map[string]int {
	n := map[string]int{}
	for _, c := range cs {
		n[c.NodeName]++
	}
	return n
}

// routeOf is resource name's route as c's daemon reads it from the node in use (GET /v1/resources).
func routeOf(ctx context.Context, c *fleet.Client, name string) (*api.Route, error) {
	rs, err := c.Control().API().Resources(ctx)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(rs, func(r api.Resource) bool { return r.Name == name })
	if i < 0 {
		return nil, fmt.Errorf("no resource %s in %+v", name, rs)
	}
	return rs[i].Route, nil
}

// waitHealth waits (up to 60 s: a node checks a new resource at once, then every health_interval)
// until the route of name gives each node of want (by ID) its health, and returns the route.
func waitHealth(t *testing.T, ctx context.Context, c *fleet.Client, name string, want map[string]string) *api.Route {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var rt *api.Route
	var err error
	for {
		rt, err = routeOf(ctx, c, name)
		if err == nil && rt != nil {
			ok := true
			for id, h := range want {
				i := slices.IndexFunc(rt.Nodes, func(n api.RouteNode) bool { return n.NodeID == id })
				ok = ok && i >= 0 && rt.Nodes[i].Health == h
			}
			if ok {
				return rt
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the route of %s is %+v (%v); want the health %v", name, rt, err, want)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// nodeIDs maps node names to IDs as the admin c reads them.
func nodeIDs(t *testing.T, ctx context.Context, c *fleet.Client) map[string]string {
	t.Helper()
	ns, err := c.Control().API().Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, n := range ns {
		ids[n.Name] = n.ID
	}
	return ids
}

// resourceNode is the node c's daemon sends resource name's new connections to (ferry status).
func resourceNode(ctx context.Context, c *fleet.Client, name string) string {
	st, err := status(ctx, c)
	if err != nil {
		return ""
	}
	for _, r := range st.Resources {
		if r.Name == name {
			return r.Node
		}
	}
	return ""
}

// waitResourceNode waits (up to 20 s) until c's daemon sends resource name's new connections to one
// of the nodes named (ferry status), and logs how long it took.
func waitResourceNode(t *testing.T, ctx context.Context, c *fleet.Client, name string, nodes ...string) {
	t.Helper()
	start := time.Now()
	for {
		got := resourceNode(ctx, c, name)
		if slices.Contains(nodes, got) {
			t.Logf("%s goes to %s (after %v)", name, got, time.Since(start).Round(100*time.Millisecond))
			return
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("%s still goes to %q after 20 s; want one of %v", name, got, nodes)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestEgressFilterAcrossHosts: node-1 (no tags, the device's own node) and node-2, node-3 (tagged
// env=prod), each a ferry-node process on a host of its own; the emulated Azure server is
// reachable from node-2 and node-3 only (node-1's namespace prohibits TCP to its port).
//   - pg-prod (egress filter tag:env=prod) is healthy on node-2 and node-3, connects, and its
//     sessions are logged on them only;
//   - pg-any (no filter) has all three nodes as candidates; while node-1 is unhealthy for it, the
//     client sends it to a tagged node (though node-1 is its own node); once node-1 reaches the
//     server and node-2 and node-3 do not, new connections go to node-1;
//   - pg-nowhere (tag:env=nothing) has no candidate: `ferry status`, `ferry admin datasources show`
//     and its health check say "no node can reach it: …", and psql gets FATAL 08001 naming it.
func TestEgressFilterAcrossHosts(t *testing.T) {
	needLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := routeLab(t, ctx, 3, "client")
	fast := func(cfg *node.Config) { cfg.HealthInterval = node.Duration(3 * time.Second) }
	prod := func(cfg *node.Config) { fast(cfg); cfg.Tags = map[string]string{"env": "prod"} }
	n1 := f.addNode(t, ctx, 1, "client", fast)
	unblock1 := blockServer(t, ctx, n1.Host, f.cat.Emu.Addr())
	f.addNode(t, ctx, 2, "client", prod)
	f.addNode(t, ctx, 3, "client", prod)
	for _, nd := range f.nodes {
		want := nd.Name != "node-1"
		if got := reaches(ctx, nd.Host, f.cat.Emu.Addr()); got != want {
			t.Fatalf("%s reaches the server at %s: %v; want %v", nd.Name, f.cat.Emu.Addr(), got, want)
		}
	}
	c := startClient(t, ctx, f.hosts["client"], n1.AdminToken, "laptop")
	f.waitNodeList(t, ctx, c)
	ids := nodeIDs(t, ctx, c)

	t.Run("tag:env=prod", func(t *testing.T) {
		conn := addResource(t, ctx, c, f.cat, "pg-prod", "--egress-filter=tag:env=prod")
		rt := waitHealth(t, ctx, c, "pg-prod", map[string]string{ids["node-2"]: api.HealthHealthy, ids["node-3"]: api.HealthHealthy})
		if len(rt.Nodes) != 2 {
			t.Errorf("pg-prod's route %+v; want node-2 and node-3 only", rt)
		}
		for i := range 3 {
			sql := fmt.Sprintf("SELECT 'prod %d'", i)
			if out, err := c.Psql(ctx, conn, sql); err != nil || out != fmt.Sprintf("prod %d", i) {
				t.Fatalf("psql through pg-prod: %q, %v", out, err)
			}
		}
		by := nodesOf(connections(t, ctx, c, "pg-prod", ""))
		if by["node-1"] != 0 || by["node-2"]+by["node-3"] != 3 {
			t.Errorf("pg-prod's sessions by node: %v; want all 3 on node-2 and node-3", by)
		}
		if out, err := c.Ferry(ctx, "admin", "datasources", "healthcheck", "pg-prod"); err != nil {
			t.Errorf("ferry admin datasources healthcheck pg-prod: %v\n%s", err, out)
		}
	})

	t.Run("no filter follows health", func(t *testing.T) {
		conn := addResource(t, ctx, c, f.cat, "pg-any")
		waitHealth(t, ctx, c, "pg-any", map[string]string{ids["node-1"]: api.HealthUnhealthy, ids["node-2"]: api.HealthHealthy, ids["node-3"]: api.HealthHealthy})
		// node-1 is the device's own node and as near as the others; the client may have chosen it
		// before any health was known, and leaves it once it reads node-1 unhealthy (within its
		// follow interval of 2 s; bounded at 20 s).
		waitResourceNode(t, ctx, c, "pg-any", "node-2", "node-3")
		if out, err := c.Psql(ctx, conn, "SELECT 'any while node-1 is unhealthy'"); err != nil {
			t.Fatalf("psql through pg-any: %q, %v", out, err)
		}
		if by := nodesOf(connections(t, ctx, c, "pg-any", "")); by["node-1"] != 0 || by["node-2"]+by["node-3"] != 1 {
			t.Errorf("pg-any's session while node-1 cannot reach the server: by node %v; want node-2 or node-3", by)
		}
		// node-1 reaches the server again, node-2 and node-3 no longer do.
		unblock1()
		blockServer(t, ctx, f.nodes[1].Host, f.cat.Emu.Addr())
		blockServer(t, ctx, f.nodes[2].Host, f.cat.Emu.Addr())
		waitHealth(t, ctx, c, "pg-any", map[string]string{ids["node-1"]: api.HealthHealthy, ids["node-2"]: api.HealthUnhealthy, ids["node-3"]: api.HealthUnhealthy})
		// The client re-reads the route within its follow interval (2 s); bounded at 20 s.
		waitResourceNode(t, ctx, c, "pg-any", "node-1")
		if out, err := c.Psql(ctx, conn, "SELECT 'any once node-1 is healthy'"); err != nil {
			t.Fatalf("psql through pg-any: %q, %v", out, err)
		}
		if by := nodesOf(connections(t, ctx, c, "pg-any", "node-1")); by["node-1"] != 1 {
			t.Errorf("pg-any's sessions on node-1 once it is the healthy one: %v; want 1", by)
		}
	})

	t.Run("tag:env=nothing", func(t *testing.T) {
		const reason = "no node can reach it: no gateway matches egress filter tag:env=nothing"
		conn := addResource(t, ctx, c, f.cat, "pg-nowhere", "--egress-filter=tag:env=nothing")
		var pe *pgconn.PgError
		if err := pgConnect(ctx, c, conn); !errors.As(err, &pe) || pe.Severity != "FATAL" || pe.Code != "08001" || !strings.Contains(pe.Message, reason) {
			t.Errorf("a login through pg-nowhere: %v; want FATAL 08001 naming %q", err, reason)
		}
		if out, err := c.Psql(ctx, conn, "SELECT 1"); err == nil || !strings.Contains(out, "FATAL") || !strings.Contains(out, reason) {
			t.Errorf("psql through pg-nowhere: %v\n%s", err, out)
		}
		if out, _ := c.Ferry(ctx, "status"); !strings.Contains(out, "pg-nowhere: "+reason) {
			t.Errorf("ferry status does not say why pg-nowhere has no node:\n%s", out)
		}
		if out, err := c.Ferry(ctx, "admin", "datasources", "show", "pg-nowhere"); err != nil || !strings.Contains(out, reason) {
			t.Errorf("ferry admin datasources show pg-nowhere: %v\n%s", err, out)
		}
		if out, err := c.Ferry(ctx, "admin", "datasources", "healthcheck", "pg-nowhere"); err == nil || !strings.Contains(out+err.Error(), reason) {
			t.Errorf("ferry admin datasources healthcheck pg-nowhere: %v\n%s", err, out)
		}
		// No node recorded a session of it: the client refused it itself.
		if cs := connections(t, ctx, c, "pg-nowhere", ""); len(cs) != 0 {
			t.Errorf("pg-nowhere's connection log: %+v; want none", cs)
		}
	})
}
