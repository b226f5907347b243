//go:build linux

package fleettest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/fleet"
	"github.com/ferryhq/ferry/internal/netlab"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// TestProxyClusterAcrossHosts: node-1 a gateway, node-2 and node-3 workers of the proxy cluster
// "edge" (`ferry admin clusters add edge`, then `ferry-node init --join … --cluster n-…`), each a
// ferry-node process on a host of its own.
//   - pg-cluster (--proxy-cluster-id of edge) is carried only by the workers and pg-gateway only by
//     node-1: the connection log (`ferry admin logs connections --node`) shows each session's node;
//   - a device whose own tunnel goes to a node that is not a candidate (a modified client, on a host
//     of its own) gets FATAL 28000 `… is not served by node …`, recorded denied with that node's ID;
//   - one worker killed with kill -9 while pgbench opens a connection per transaction through it:
//     new connections go to the other worker (the time it took is logged; bounded at 20 s), and a
//     new pgbench run there has no failed transaction.
func TestProxyClusterAcrossHosts(t *testing.T) {
	needLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := routeLab(t, ctx, 3, "client", "crafted")
	n1 := f.addNode(t, ctx, 1, "client", nil)
	c := startClient(t, ctx, f.hosts["client"], n1.AdminToken, "laptop")
	out, err := c.Ferry(ctx, "admin", "clusters", "add", "edge")
	cluster := strings.TrimSpace(out)
	if err != nil || !api.ValidClusterID(cluster) {
		t.Fatalf("ferry admin clusters add edge: %q, %v", out, err)
	}
	for i := 2; i <= 3; i++ {
		f.addNode(t, ctx, i, "client", func(cfg *node.Config) { cfg.ClusterID = cluster })
	}
	// The daemon reads the node list at start and every 30 s: restarted, it knows the workers now.
	if err := c.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, ctx, c)
	f.waitNodeList(t, ctx, c)
	if out, err := c.Ferry(ctx, "admin", "clusters", "show", "edge"); err != nil || !strings.Contains(out, "node-2") || !strings.Contains(out, "node-3") {
		t.Errorf("ferry admin clusters show edge: %v\n%s", err, out)
	}
	ids := nodeIDs(t, ctx, c)
	connCl := addResource(t, ctx, c, f.cat, "pg-cluster", "--proxy-cluster-id="+cluster)
	connGw := addResource(t, ctx, c, f.cat, "pg-gateway")
	for i := range 3 {
		for _, r := range []struct{ name, conn string }{{"pg-cluster", connCl}, {"pg-gateway", connGw}} {
			want := fmt.Sprintf("%s %d", r.name, i)
			if out, err := c.Psql(ctx, r.conn, "SELECT '"+want+"'"); err != nil || out != want {
				t.Fatalf("psql through %s: %q, %v", r.name, out, err)
			}
		}
	}
	t.Run("sessions land on their nodes", func(t *testing.T) {
		if by := nodesOf(connections(t, ctx, c, "pg-cluster", "")); by["node-1"] != 0 || by["node-2"]+by["node-3"] != 3 {
			t.Errorf("pg-cluster's sessions by node: %v; want all 3 on the workers node-2 and node-3", by)
		}
		if by := nodesOf(connections(t, ctx, c, "pg-gateway", "")); by["node-1"] != 3 || len(by) != 1 {
			t.Errorf("pg-gateway's sessions by node: %v; want all 3 on the gateway node-1", by)
		}
		for _, nd := range []string{"node-2", ids["node-3"]} { // --node takes a name or an ID
			for _, cn := range connections(t, ctx, c, "pg-gateway", nd) {
				t.Errorf("--node %s lists a pg-gateway session: %+v", nd, cn)
			}
		}
		out, err := c.Ferry(ctx, "admin", "logs", "connections", "--node", "node-1")
		if err != nil || !strings.Contains(out, "node-1 ("+ids["node-1"]+")") || strings.Contains(out, "pg-cluster") {
			t.Errorf("ferry admin logs connections --node node-1: %v\n%s", err, out)
		}
	})

	t.Run("crafted tunnel to a node that is not a candidate", func(t *testing.T) {
		tok, err := n1.EnrollToken(ctx, "admin")
		if err != nil {
			t.Fatal(err)
		}
		dev := enrollBare(t, ctx, f.hosts["crafted"], tok)
		rs, err := c.Control().API().Resources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		vn := map[string]string{}
		for _, r := range rs {
			vn[r.Name] = r.VNAddress
		}
		for _, tc := range []struct {
			res  string
			via  *fleet.Node
			text string
		}{
			{"pg-cluster", n1, `resource "pg-cluster" is not served by node "node-1": the resource is carried by proxy cluster ` + cluster},
			{"pg-gateway", f.nodes[1], `resource "pg-gateway" is not served by node "node-2": the resource is carried by gateways, and this node is a worker of proxy cluster ` + cluster},
		} {
			_, err := dev.connect(t, ctx, tc.via, vn[tc.res])
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Severity != "FATAL" || pe.Code != "28000" || !strings.Contains(pe.Message, tc.text) {
				t.Errorf("%s through %s from the crafted device: %v; want FATAL 28000 %q", tc.res, tc.via.Name, err, tc.text)
			}
			cs := connections(t, ctx, c, tc.res, tc.via.Name)
			if !slices.ContainsFunc(cs, func(cn api.Connection) bool {
				return cn.Outcome == audit.OutcomeDenied && cn.SQLState == "28000" && cn.NodeID == ids[tc.via.Name] && strings.Contains(cn.Error, tc.text)
			}) {
				t.Errorf("%s's connection log on %s has no denied record with its ID %s: %+v", tc.res, tc.via.Name, ids[tc.via.Name], cs)
			}
		}
	})

	t.Run("worker killed under pgbench", func(t *testing.T) {
		var used string
		for wait := time.Now().Add(10 * time.Second); used == ""; {
			if used = resourceNode(ctx, c, "pg-cluster"); used == "" && time.Now().After(wait) {
				t.Fatal("ferry status names no node for pg-cluster")
			}
			time.Sleep(100 * time.Millisecond)
		}
		victim, other := f.nodes[1], f.nodes[2]
		if used == "node-3" {
			victim, other = other, victim
		}
		if used != victim.Name {
			t.Fatalf("pg-cluster goes to %q; want a worker", used)
		}
		script := writeScript(t, "cluster.sql", "SELECT 'bench cluster'")
		b := &bench{done: make(chan struct{})}
		go func() {
			defer close(b.done)
			// -C: a new connection per transaction, so that new connections meet the kill.
			b.out, b.err = c.Pgbench(ctx, connCl, "-n", "-C", "-f", script, "-c", "2", "-R", "10", "-T", "25")
		}()
		time.Sleep(4 * time.Second)
		victim.Kill()
		killed := time.Now()
		t.Logf("%s (carrying pg-cluster) killed", victim.Name)
		for resourceNode(ctx, c, "pg-cluster") != other.Name {
			if time.Since(killed) > failoverBound {
				t.Fatalf("pg-cluster still goes to %q %v after %s was killed", resourceNode(ctx, c, "pg-cluster"), failoverBound, victim.Name)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("pg-cluster's new connections go to %s %v after %s was killed", other.Name, time.Since(killed).Round(100*time.Millisecond), victim.Name)
		if out, err := c.Psql(ctx, connCl, "SELECT 'after the kill'"); err != nil || out != "after the kill" {
			t.Errorf("psql through pg-cluster after the kill: %q, %v", out, err)
		}
		// pgbench's clients whose connection met the kill abort (pgbench gives up on a failed
		// connection); a new run opens every connection through the other worker.
		<-b.done
		t.Logf("pgbench through pg-cluster during the kill: %v\n%s", b.err, b.out)
		out, err := c.Pgbench(ctx, connCl, "-n", "-C", "-f", script, "-c", "2", "-R", "10", "-T", "4")
		if err != nil || !strings.Contains(out, "number of failed transactions: 0 ") || processed(out) <= 0 {
			t.Errorf("pgbench through pg-cluster after the move: %v\n%s", err, out)
		}
		// Records reach the shared catalog shortly after their sessions end: read until all are there.
		var after int
		var by map[string]int
		for wait := time.Now().Add(30 * time.Second); ; {
			after, by = 0, map[string]int{}
			for _, cn := range connections(t, ctx, c, "pg-cluster", "") {
				if cn.Outcome == audit.OutcomeDenied {
					continue // the crafted device's refusal above
				}
				by[cn.NodeName]++
				if cn.Start.After(killed) {
					after++
					if cn.NodeName != other.Name {
						t.Errorf("a pg-cluster session after the kill went to %q: %+v", cn.NodeName, cn)
					}
				}
			}
			if after >= 1+processed(out) || time.Now().After(wait) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if after < 1+processed(out) {
			t.Errorf("the connection log has %d pg-cluster sessions after the kill; want psql's and pgbench's %d on %s", after, processed(out), other.Name)
		}
		if by["node-1"] != 0 {
			t.Errorf("pg-cluster's sessions by node: %v; none may be on the gateway", by)
		}
	})
}

// bareDevice is a device enrolled with `ferry login` on a host of its own whose key the test holds,
// so that it aims its own WireGuard tunnel at any node, as a modified client could.
type bareDevice struct {
	host *netlab.Host
	key  tunnel.Key
	addr netip.Addr
}

// enrollBare enrolls a device on h with token (ferry login, no daemon) and reads its key.
func enrollBare(t *testing.T, ctx context.Context, h *netlab.Host, token string) bareDevice {
	t.Helper()
	cl := fleet.NewClient(bins, h, filepath.Join(t.TempDir(), h.Name))
	if out, err := cl.Ferry(ctx, "login", token, "--device-name", "crafted"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	st, err := client.LoadState(cl.Dirs)
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
	return bareDevice{host: h, key: k, addr: a}
}

// connect logs in with pgconn to the VN address vn through a WireGuard tunnel of the device's own to
// nd (its UDP socket made inside the device's host, so its packets cross the lab's bridge).
func (d bareDevice) connect(t *testing.T, ctx context.Context, nd *fleet.Node, vn string) (*pgconn.PgConn, error) {
	t.Helper()
	ep, err := nd.Endpoint()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tunnel.ParseKey(ep.NodePublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var tun *tunnel.Tunnel
	err = d.host.Do(func() error {
		var err error
		tun, err = tunnel.New(context.Background(), tunnel.Config{
			PrivateKey: d.key,
			Addresses:  []netip.Addr{d.addr},
			Peers: []tunnel.Peer{{PublicKey: pub, Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte(nd.Host.Addr().To4())), uint16(nd.WireGuardPort())),
				AllowedIPs: []netip.Prefix{api.TunnelSubnet, resource.DefaultVNSubnet}}},
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tun.Close() })
	host, port, _ := net.SplitHostPort(vn)
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable connect_timeout=30", host, port, demo.Role, demo.Database))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		// The node learns a newly enrolled device within a reconcile tick: retry the dial briefly.
		var err error
		for range 8 {
			var c net.Conn
			dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			c, err = tun.Stack().DialContext(dctx, "tcp", addr)
			cancel()
			if err == nil || ctx.Err() != nil {
				return c, err
			}
		}
		return nil, err
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		t.Cleanup(func() { pc.Close(context.Background()) })
	}
	return pc, err
}
