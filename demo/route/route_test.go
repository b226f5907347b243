package route_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/cli"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// cluster is a proxy cluster no node is a worker of.
const cluster = "n-1a2b345c67890123"

// TestRouteEnforced, on each catalog backend: node 1 (tags env=dev, a gateway) and a node tagged
// env=prod (on PostgreSQL the fleet's real second node; on SQLite, whose catalog only one node
// uses, a node record registered directly and kept online). A device that is granted every
// resource aims its own tunnel at node 1:
//   - egress filter tag:env=prod: FATAL 28000 `resource "…" is not served by node "…"`, recorded
//     denied with node 1's ID; through the env=prod node it connects (PostgreSQL);
//   - tag:env=nothing: FATAL 08001 naming the filter; a proxy cluster resource through a gateway:
//     FATAL 08001 (its cluster has no workers); once a cluster has an online worker, its resource
//     through a gateway: FATAL 28000 "the resource is carried by proxy cluster n-…", recorded denied;
//   - the connection log filters by node (API by ID and name, the CLI's --node) and shows it;
//   - a session through node 1 for tag:env=dev ends (57P01, outcome rerouted) once node 1's tags
//     change to env=test, and a new one is refused;
//   - PostgreSQL: with the catalog database down, node 1 still refuses from its read cache and the
//     env=prod node still admits.
func TestRouteEnforced(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes int
	}{{"sqlite", 1}, {"postgres", 2}} {
		t.Run(tc.name, func(t *testing.T) { testRouteEnforced(t, tc.nodes) })
	}
}

type resources struct{ prod, dev, nowhere, clustered resource.Resource }

func testRouteEnforced(t *testing.T, nodes int) {
	env := testenv.Start(t, demo.Options{LoopbackIP: demo.RandomLoopbackIP(), Nodes: nodes})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	admin := env.Daemon.API()
	cat := env.Node.Catalog()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	n1, err := admin.UpdateNodeTags(ctx, env.Node.ID(), map[string]string{"env": "dev"})
	must(err)
	var other api.Node // the env=prod node
	keepOnline := func() {}
	if nodes > 1 {
		other, err = admin.UpdateNodeTags(ctx, env.Nodes[1].ID(), map[string]string{"env": "prod"})
		must(err)
	} else {
		far := farNode(t)
		_, err := cat.RegisterNode(ctx, far)
		must(err)
		other, err = admin.Node(ctx, far.ID)
		must(err)
		keepOnline = func() { must(cat.Heartbeat(ctx, far.ID, time.Now())) }
	}

	var rs resources
	for _, spec := range []struct {
		name, filter string
		out          *resource.Resource
	}{
		{"pg-prod-only", "tag:env=prod", &rs.prod},
		{"pg-dev-only", "tag:env=dev", &rs.dev},
		{"pg-nowhere", "tag:env=nothing", &rs.nowhere},
		{"pg-clustered", "", &rs.clustered},
	} {
		r := resource.New(spec.name)
		r.Hostname = env.Emu.Hostname()
		r.Database = demo.Database
		r.Username = demo.Role
		r.ManagedIdentityClientID = demo.ClientID
		r.BindInterface = demo.RandomLoopbackIP()
		r.Tags = map[string]string{"team": "route"}
		r.EgressFilter = spec.filter
		*spec.out, err = admin.AddDatasource(ctx, r)
		must(err)
	}
	// The clustered resource is put in a proxy cluster directly in the catalog, past the checks of
	// resource add/update (whether the cluster exists): the node must refuse it all the same.
	setCluster(t, ctx, cat, &rs.clustered, cluster)

	must(admin.AddRole(ctx, "routers"))
	must(admin.Grant(ctx, "routers", "tag:team=route"))
	must(admin.AddUser(ctx, api.NewUser{Name: "eng", Roles: []string{"routers"}}))
	tok, err := admin.EnrollUser(ctx, "eng")
	must(err)
	dev := craftedDevice(t, ctx, tok.Token)
	via1 := dev.to(t, env.Node)

	// A session node 1 carries, kept open for the tag change below.
	keepOnline()
	open, err := via1.connect(ctx, rs.dev)
	if err != nil {
		t.Fatalf("pg-dev-only through node 1 (env=dev): %v", err)
	}
	defer open.Close(context.Background())
	if err := open.Exec(ctx, "SELECT 1").Close(); err != nil {
		t.Fatal(err)
	}

	refusals := []struct {
		r          resource.Resource
		code, text string
		outcome    string
	}{
		{rs.prod, "28000", fmt.Sprintf(`resource "pg-prod-only" is not served by node %q: the node's tags do not match egress filter tag:env=prod`, n1.Name), audit.OutcomeDenied},
		{rs.nowhere, "08001", "no node can reach it: no gateway matches egress filter tag:env=nothing", audit.OutcomeFailed},
		{rs.clustered, "08001", "no node can reach it: proxy cluster " + cluster + " has no workers", audit.OutcomeFailed},
	}
	for _, tc := range refusals {
		keepOnline()
		pe := wantFatal(t, tc.r.Name+" through node 1", second(via1.connect(ctx, tc.r)), tc.code, tc.text)
		if tc.code == "28000" && pe != nil && !strings.Contains(pe.Hint, "Connect through one of its nodes ("+other.Name+")") {
			t.Errorf("the 28000's hint %q does not name the node that carries it (%s)", pe.Hint, other.Name)
		}
	}
	t.Run("cluster with an online worker", func(t *testing.T) {
		// A proxy cluster whose worker is online (a registered worker record kept online): its
		// resource through a gateway is another node's to carry, so 28000 naming the cluster.
		cl, err := admin.AddCluster(ctx, api.ClusterAdd{Name: "edge"})
		must(err)
		worker := farNode(t)
		worker.Name, worker.Kind, worker.ClusterID = "edge-worker", api.NodeKindWorker, cl.ID
		_, err = cat.RegisterNode(ctx, worker)
		must(err)
		r := resource.New("pg-edge")
		r.Hostname, r.Database, r.Username, r.ManagedIdentityClientID = env.Emu.Hostname(), demo.Database, demo.Role, demo.ClientID
		r.BindInterface = demo.RandomLoopbackIP()
		r.Tags = map[string]string{"team": "route"}
		r.ProxyClusterID = cl.ID
		r, err = admin.AddDatasource(ctx, r)
		must(err)
		must(cat.Heartbeat(ctx, worker.ID, time.Now()))
		keepOnline()
		text := fmt.Sprintf(`resource "pg-edge" is not served by node %q: the resource is carried by proxy cluster %s`, n1.Name, cl.ID)
		pe := wantFatal(t, "pg-edge through node 1 (a gateway)", second(via1.connect(ctx, r)), "28000", text)
		if pe != nil && !strings.Contains(pe.Hint, "Connect through one of its nodes (edge-worker)") {
			t.Errorf("the 28000's hint %q does not name the cluster's worker", pe.Hint)
		}
		// The record's end (outcome, SQLSTATE) is written just after the FATAL is sent: wait for it.
		var cs []api.Connection
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			cs, err = admin.ConnectionLog(ctx, api.LogFilter{Node: n1.ID, Resource: r.Name})
			must(err)
			if (len(cs) == 1 && cs[0].Outcome != "") || time.Now().After(deadline) {
				break
			}
		}
		if len(cs) != 1 || cs[0].Outcome != audit.OutcomeDenied || cs[0].SQLState != "28000" || cs[0].NodeID != n1.ID {
			t.Errorf("pg-edge's connection log on node 1: %+v; want one denied 28000 record with node 1's ID", cs)
		}
	})

	if nodes > 1 {
		via2 := dev.to(t, env.Nodes[1])
		c, err := via2.connect(ctx, rs.prod)
		if err != nil {
			t.Fatalf("pg-prod-only through %s (env=prod): %v", other.Name, err)
		}
		c.Close(ctx)
		wantFatal(t, "pg-dev-only through node 2", second(via2.connect(ctx, rs.dev)), "28000",
			fmt.Sprintf(`resource "pg-dev-only" is not served by node %q`, other.Name))
	}

	// The connection log: each refusal recorded with node 1's ID; filtered by node.
	byNode, err := admin.ConnectionLog(ctx, api.LogFilter{Node: n1.Name, User: "eng"})
	must(err)
	for _, tc := range refusals {
		var rec *api.Connection
		for i := range byNode {
			if byNode[i].Resource == tc.r.Name {
				rec = &byNode[i]
			}
		}
		if rec == nil || rec.Outcome != tc.outcome || rec.SQLState != tc.code || rec.NodeID != n1.ID || rec.NodeName != n1.Name || !strings.Contains(rec.Error, tc.text) {
			t.Errorf("connection record of %s through node 1 = %+v; want %s %s %q with node %s (%s)", tc.r.Name, rec, tc.outcome, tc.code, tc.text, n1.ID, n1.Name)
		}
	}
	for _, c := range byNode {
		if c.NodeID != n1.ID {
			t.Errorf("--node %s lists a connection of node %q: %+v", n1.Name, c.NodeID, c)
		}
	}
	byID, err := admin.ConnectionLog(ctx, api.LogFilter{Node: n1.ID, User: "eng"})
	if err != nil || len(byID) != len(byNode) {
		t.Errorf("connection log by node ID: %d records, %v; by name %d", len(byID), err, len(byNode))
	}
	if nodes > 1 {
		cs, err := admin.ConnectionLog(ctx, api.LogFilter{Node: other.ID, User: "eng"})
		must(err)
		if len(cs) != 2 {
			t.Errorf("connection log of %s: %+v; want its 2 connections", other.Name, cs)
		}
		for _, c := range cs {
			if c.NodeID != other.ID {
				t.Errorf("connection log of %s lists %+v", other.ID, c)
			}
		}
	}
	_, err = admin.ConnectionLog(ctx, api.LogFilter{Node: "no-such-node"})
	var se *api.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusNotFound || !strings.Contains(se.Message, "no-such-node") {
		t.Errorf("connection log of an unknown node: %v; want 404 naming it", err)
	}
	out := ferryCLI(t, ctx, env.Dirs, "admin", "logs", "connections", "--node", n1.Name, "--user", "eng", "--json")
	var cs []api.Connection
	if err := json.Unmarshal([]byte(out), &cs); err != nil || len(cs) != len(byNode) || cs[0].NodeID != n1.ID {
		t.Errorf("ferry admin logs connections --node %s --json: %v\n%s", n1.Name, err, out)
	}
	if out := ferryCLI(t, ctx, env.Dirs, "admin", "logs", "connections", "--node", n1.ID, "--user", "eng"); !strings.Contains(out, "NODE") ||
		!strings.Contains(out, n1.Name+" ("+n1.ID+")") {
		t.Errorf("ferry admin logs connections --node %s: no NODE column naming it:\n%s", n1.ID, out)
	}

	if nodes > 1 {
		t.Run("catalog outage", func(t *testing.T) {
			// Both nodes have read the tags into their cache by now (a refusal and an admission above).
			must(env.CatalogDB.StopPostgres())
			defer func() {
				must(env.CatalogDB.StartPostgres(context.Background()))
				for i, n := range env.Nodes {
					waitFor(t, fmt.Sprintf("node %d to see the catalog again", i+1), func() bool { return n.CatalogStatus().Reachable })
				}
			}()
			waitFor(t, "node 1 to see the catalog unreachable", func() bool { return !env.Node.CatalogStatus().Reachable })
			wantFatal(t, "pg-prod-only through node 1 during the outage", second(via1.connect(ctx, rs.prod)), "28000", `is not served by node "`+n1.Name+`"`)
			c, err := dev.to(t, env.Nodes[1]).connect(ctx, rs.prod)
			if err != nil {
				t.Fatalf("pg-prod-only through %s during the outage: %v", other.Name, err)
			}
			c.Close(ctx)
		})
	}

	// Node 1 stops matching pg-dev-only's filter: its open session ends, saying why.
	_, err = admin.UpdateNodeTags(ctx, n1.ID, map[string]string{"env": "test"})
	must(err)
	var endErr error
	waitFor(t, "the session through node 1 to end after its tags changed", func() bool {
		endErr = open.Exec(ctx, "SELECT 1").Close()
		return endErr != nil
	})
	wantFatal(t, "the open session after node 1's tags changed", endErr, "57P01",
		fmt.Sprintf(`resource "pg-dev-only" is no longer served by node %q: the node's tags do not match egress filter tag:env=dev`, n1.Name))
	waitFor(t, "the ended session's record", func() bool {
		cs, err := admin.ConnectionLog(ctx, api.LogFilter{Resource: rs.dev.Name, Node: n1.ID})
		return err == nil && len(cs) > 0 && cs[len(cs)-1].Outcome == audit.OutcomeRerouted
	})
	keepOnline()
	wantFatal(t, "pg-dev-only through node 1 after its tags changed", second(via1.connect(ctx, rs.dev)), "08001",
		"no node can reach it: no gateway matches egress filter tag:env=dev")
}

// farNode is a node record of a node that does not run (its endpoints lead nowhere), tagged env=prod.
func farNode(t *testing.T) catalog.Node {
	t.Helper()
	k, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("far-node"))
	now := time.Now()
	return catalog.Node{ID: catalog.NewNodeID(), Name: "far-node", Kind: api.NodeKindGateway, Tags: map[string]string{"env": "prod"},
		WireGuardPublicKey: k.PublicKey().String(), WireGuardEndpoint: "127.0.0.1:9", EnrollURL: "https://127.0.0.1:9",
		EnrollCertSHA256: hex.EncodeToString(sum[:]), Version: "test", StartedAt: now, LastHeartbeat: now}
}

// setCluster sets r's proxy cluster in the catalog's stored record.
func setCluster(t *testing.T, ctx context.Context, cat *catalog.Catalog, r *resource.Resource, id string) {
	t.Helper()
	r.ProxyClusterID = id
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	db := cat.DB()
	if _, err := db.ExecContext(ctx, db.Rebind(`UPDATE resources SET data = ? WHERE name = ?`), string(b), r.Name); err != nil {
		t.Fatal(err)
	}
	got, err := cat.ResourceByName(ctx, r.Name)
	if err != nil || got.ProxyClusterID != id {
		t.Fatalf("resource %s after setting its cluster: %+v, %v", r.Name, got, err)
	}
}

// device is an enrolled device whose key the test holds, so that it can aim its tunnel at any node
// (as a modified client could).
type device struct {
	key  tunnel.Key
	addr netip.Addr
}

func craftedDevice(t *testing.T, ctx context.Context, token string) device {
	t.Helper()
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := client.Login(ctx, dirs, token, "crafted"); err != nil {
		t.Fatal(err)
	}
	st, err := client.LoadState(dirs)
	if err != nil {
		t.Fatal(err)
	}
	k, err := tunnel.ParseKey(st.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netip.ParseAddr(st.DeviceAddress)
	if err != nil {
		t.Fatal(err)
	}
	return device{key: k, addr: a}
}

// via is a device's own tunnel to one node.
type via struct{ tun *tunnel.Tunnel }

func (d device) to(t *testing.T, n *node.Node) via {
	t.Helper()
	tun, err := tunnel.New(context.Background(), tunnel.Config{
		PrivateKey: d.key,
		Addresses:  []netip.Addr{d.addr},
		Peers: []tunnel.Peer{{PublicKey: n.PublicKey(), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.WireGuardPort()),
			AllowedIPs: []netip.Prefix{api.TunnelSubnet, resource.DefaultVNSubnet}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tun.Close() })
	return via{tun}
}

// connect logs in to r through the tunnel with pgconn (no TLS: the tunnel is the transport).
func (v via) connect(ctx context.Context, r resource.Resource) (*pgconn.PgConn, error) {
	host, port, _ := net.SplitHostPort(r.VNAddress)
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable connect_timeout=20", host, port, demo.Role, demo.Database))
	if err != nil {
		return nil, err
	}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		// The node learns a newly enrolled device within a reconcile tick: retry the dial briefly.
		var err error
		for range 20 {
			var c net.Conn
			dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			c, err = v.tun.Stack().DialContext(dctx, "tcp", addr)
			cancel()
			if err == nil {
				return c, nil
			}
			if ctx.Err() != nil {
				break
			}
		}
		return nil, err
	}
	return pgconn.ConnectConfig(ctx, cfg)
}

func second[T any](_ T, err error) error { return err }

// wantFatal checks that err is a FATAL ErrorResponse with code whose message contains text, and
// returns it (nil when err is none).
func wantFatal(t *testing.T, what string, err error, code, text string) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Errorf("%s: %v; want FATAL %s %q", what, err, code, text)
		return nil
	}
	if pe.Severity != "FATAL" || pe.Code != code || !strings.Contains(pe.Message, text) {
		t.Errorf("%s: %s %s %q (hint %q); want FATAL %s containing %q", what, pe.Severity, pe.Code, pe.Message, pe.Hint, code, text)
	}
	return pe
}

// ferryCLI runs the ferry CLI as the demo's admin device and returns what it printed.
func ferryCLI(t *testing.T, ctx context.Context, dirs client.Dirs, args ...string) string {
	t.Helper()
	t.Setenv(client.EnvConfigDir, dirs.Config)
	t.Setenv(client.EnvRuntimeDir, dirs.Runtime)
	root := cli.NewRoot(nil)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("ferry %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
