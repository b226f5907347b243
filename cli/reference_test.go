package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/resource"
)

// eventually polls cond every 200 ms for up to 15 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func statusRow(t *testing.T, name string) []string {
	t.Helper()
	out, err := run(t, "status")
	if err != nil {
		t.Fatalf("status: %v: %s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return f
		}
	}
	return nil
}

func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// testReferenceExample deletes the demo's azure-pg-mi-prod (ending its session), then runs the
// reference page's CLI example verbatim (binary name aside), checks show/list/status/psql, moves it with
// update, and adds 20 resources at once.
func testReferenceExample(t *testing.T, env *demo.Env) {
	ctx := context.Background()
	// Delete: an open session ends and the client stops listening within seconds.
	if out, err := run(t, "connect", demo.ResourceName); err != nil {
		t.Fatalf("connect: %v: %s", err, out)
	}
	oldAddr := env.Resource.Address
	sleepCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	sleeper := exec.CommandContext(sleepCtx, "psql", client.ConnString(env.Resource), "-X", "-c", "select pg_sleep(18)")
	var sleepOut strings.Builder
	sleeper.Stdout, sleeper.Stderr = &sleepOut, &sleepOut
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if out, err := run(t, "admin", "datasources", "delete", demo.ResourceName); err != nil || !strings.Contains(out, "Deleted") {
		t.Fatalf("delete: %v: %s", err, out)
	}
	if err := sleeper.Wait(); err == nil || sleepCtx.Err() != nil || !strings.Contains(sleepOut.String(), "deleted") {
		t.Fatalf("session after delete: err=%v out=%q, want it ended saying the resource was deleted", err, sleepOut.String())
	}
	// Its connection record says the node ended it because the resource was deleted (not "ok").
	var ended api.Connection
	eventually(t, "the ended session's connection record", func() bool {
		conns, err := env.Daemon.API().Connections(ctx, 20)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if c.Resource == demo.ResourceName && strings.Contains(c.Error, "was deleted") {
				ended = c
				return true
			}
		}
		return false
	})
	if ended.Outcome != audit.OutcomeDeleted {
		t.Errorf("connection record of the session ended by the delete = %+v; want outcome %q", ended, audit.OutcomeDeleted)
	}
	eventually(t, "the client to stop listening for the deleted resource", func() bool { return !listening(oldAddr) })
	if row := statusRow(t, demo.ResourceName); row != nil {
		t.Fatalf("status still lists the deleted resource: %v", row)
	}

	// The reference page's example, verbatim but for --secret-store-id=se-e1b2: a store that does
	// not exist is refused, and with a store the username is read from --username-path
	// (TestSecretStoreCommands). Its proxy cluster n-1a2b345c67890123 was created by
	// `ferry admin clusters add prod-westeurope --id n-1a2b345c67890123` (TestCommandsAgainstDemo):
	// a resource naming a cluster that does not exist is refused.
	out, err := run(t, "admin", "datasources", "add", "azurepostgresmi", "azure-pg-mi-prod",
		"--hostname=mypg.postgres.database.azure.com",
		"--port=5432",
		"--database=production",
		"--username=mi_user@mypg",
		"--managed-identity-client-id=11111111-2222-3333-4444-555555555555",
		"--tls-required",
		"--bind-interface=127.0.0.1",
		"--egress-filter=tag:env=prod",
		"--port-override=-1",
		"--proxy-cluster-id=n-1a2b345c67890123",
		"--subdomain=azure-pg-mi-prod",
		"--tags=env=production,team=data")
	if err != nil {
		t.Fatalf("reference example: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "datasources", "list", "--filter", "tag:env=production"); err != nil || !strings.Contains(out, "azure-pg-mi-prod") || strings.Contains(out, "azure-pg-mi-dev") {
		t.Fatalf("list --filter: %v: %s", err, out)
	}
	out, err = run(t, "admin", "datasources", "show", "azure-pg-mi-prod", "--json")
	if err != nil {
		t.Fatalf("show --json: %v: %s", err, out)
	}
	var shown map[string]any
	if err := json.Unmarshal([]byte(out), &shown); err != nil {
		t.Fatalf("show --json is not JSON: %v: %s", err, out)
	}
	// The cluster has no workers yet (the demo's node is a gateway): the route says so. Once a
	// node tagged env=prod joins it as a worker, the example routes through that worker.
	const noWorkers = "no node can reach it: proxy cluster n-1a2b345c67890123 has no workers"
	if route, _ := shown["route"].(map[string]any); route == nil || route["reason"] != noWorkers {
		t.Errorf("show --json route = %v, want the reason %q", shown["route"], noWorkers)
	}
	if text, err := run(t, "admin", "datasources", "show", "azure-pg-mi-prod"); err != nil || !hasLine(text, append([]string{"nodes"}, strings.Fields(noWorkers)...)...) {
		t.Errorf("show: %v: want a nodes line %q:\n%s", err, noWorkers, text)
	}
	worker := startWorker(t, env, "worker-prod", "n-1a2b345c67890123", map[string]string{"env": "prod"})
	if text, err := run(t, "admin", "datasources", "show", "azure-pg-mi-prod"); err != nil || !hasLine(text, "nodes", "worker-prod", "(online)") {
		t.Errorf("show after worker-prod joined the cluster: %v:\n%s", err, text)
	}
	var routed *api.Route
	if rs, err := env.Daemon.API().Resources(ctx); err == nil {
		for _, r := range rs {
			if r.Name == "azure-pg-mi-prod" {
				routed = r.Route
			}
		}
	}
	if routed == nil || len(routed.Nodes) != 1 || routed.Nodes[0].NodeID != worker.ID() {
		t.Errorf("the device's route of the reference example = %+v, want worker-prod (%s) only", routed, worker.ID())
	}
	want := map[string]any{
		"name": "azure-pg-mi-prod", "type": "azurepostgresmi", "hostname": "mypg.postgres.database.azure.com", "port": 5432.0,
		"database": "production", "username": "mi_user@mypg", "managed_identity_client_id": "11111111-2222-3333-4444-555555555555",
		"tls_required": true, "bind_interface": "127.0.0.1", "egress_filter": "tag:env=prod", "proxy_cluster_id": "n-1a2b345c67890123",
		"subdomain": "azure-pg-mi-prod", "loopback_address": "127.0.0.1:10001", "connectivity_mode": "loopback",
	}
	for k, v := range want {
		if fmt.Sprint(shown[k]) != fmt.Sprint(v) {
			t.Errorf("show --json %s = %v, want %v", k, shown[k], v)
		}
	}
	if tags, _ := shown["tags"].(map[string]any); fmt.Sprint(tags) != "map[env:production team:data]" {
		t.Errorf("show --json tags = %v", shown["tags"])
	}
	if vn, _ := shown["vn_address"].(string); !strings.HasPrefix(vn, "100.") {
		t.Errorf("show --json vn_address = %v", shown["vn_address"])
	}
	if out, err = run(t, "connect", "azure-pg-mi-prod"); err != nil || strings.TrimSpace(out) != "127.0.0.1:10001" {
		t.Fatalf("connect: %v: %q", err, out)
	}
	if row := statusRow(t, "azure-pg-mi-prod"); len(row) < 4 || row[2] != "127.0.0.1:10001" || row[3] != "connected" {
		t.Fatalf("status row: %v", row)
	}
	conn := "host=127.0.0.1 port=10001 dbname=production user=anyone sslmode=disable"
	// The reference example routes through its proxy cluster: the client picks worker-prod (the
	// cluster's only worker, tagged env=prod as its egress filter asks), and the connection log
	// names that node.
	if got, err := exec.Command("psql", conn, "-X", "-A", "-t", "-c", "select current_user").CombinedOutput(); err != nil || strings.TrimSpace(string(got)) != "mi_user" {
		t.Fatalf("psql through the reference example: %v: %s", err, got)
	}
	if row := statusRow(t, "azure-pg-mi-prod"); !slices.Contains(row, "worker-prod") {
		t.Errorf("status row of the reference example does not name worker-prod: %v", row)
	}
	if out, err := run(t, "admin", "logs", "connections", "--node", "worker-prod"); err != nil || !strings.Contains(out, "azure-pg-mi-prod") {
		t.Errorf("the connection log of worker-prod: %v:\n%s", err, out)
	}
	// --node filters: worker-prod's log holds its own records only (the demo's gateway carried the
	// sessions above); an unknown node is refused, saying what to do, naming it once.
	var carried []api.Connection
	if out, err := run(t, "admin", "logs", "connections", "--node", "worker-prod", "--json"); err != nil || json.Unmarshal([]byte(out), &carried) != nil || len(carried) == 0 {
		t.Errorf("the connection log of worker-prod --json: %v:\n%s", err, out)
	}
	for _, c := range carried {
		if c.NodeID != worker.ID() || c.NodeName != "worker-prod" {
			t.Errorf("the connection log of worker-prod holds a record of another node: %+v", c)
		}
	}
	if out, err := run(t, "admin", "logs", "connections", "--node", "no-such-node"); err == nil || strings.Count(err.Error(), "no-such-node") != 1 || !strings.Contains(err.Error(), "ferry admin nodes list") {
		t.Errorf("the connection log of an unknown node: %v (want one refusal naming it once, with what to do):\n%s", err, out)
	}

	// Update moves the client's listener.
	out, err = run(t, "admin", "datasources", "update", "azure-pg-mi-prod", "--port-override=12345")
	if err != nil || !strings.Contains(out, "port_override: \"\" -> 12345") || !strings.Contains(out, "loopback_address: 127.0.0.1:10001 -> 127.0.0.1:12345") {
		t.Fatalf("update: %v: %s", err, out)
	}
	eventually(t, "the client to listen on the moved address", func() bool { return listening("127.0.0.1:12345") && !listening("127.0.0.1:10001") })
	moved := "host=127.0.0.1 port=12345 dbname=production user=anyone sslmode=disable"
	if got, err := exec.Command("psql", moved, "-X", "-A", "-t", "-c", "select 1").CombinedOutput(); err != nil || strings.TrimSpace(string(got)) != "1" {
		t.Fatalf("psql at the moved address: %v: %s", err, got)
	}
	if out, err = run(t, "admin", "datasources", "update", "azure-pg-mi-prod", "--port-override=80"); err == nil || !strings.Contains(err.Error(), "port-override") {
		t.Fatalf("update with a bad port override: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "activities"); err != nil || !strings.Contains(out, "datasource.update") || !strings.Contains(out, "datasource.delete") {
		t.Fatalf("activities: %v: %s", err, out)
	}

	// Bulk add from a file (as show --json prints), with a warning for a role named like a client ID.
	file := filepath.Join(t.TempDir(), "resources.json")
	bulk := `[{"name":"file-a","hostname":"a.example","database":"d","username":"u","tags":{"env":"file"}},
	          {"name":"file-b","hostname":"b.example","database":"d","username":"11111111-2222-3333-4444-555555555555"}]`
	if err := os.WriteFile(file, []byte(bulk), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "admin", "datasources", "add", "azurepostgresmi", "--file", file)
	if err != nil || !strings.Contains(out, "Added file-a") || !strings.Contains(out, "Added file-b") || !strings.Contains(out, "warning: username") {
		t.Fatalf("add --file: %v: %s", err, out)
	}
	if err := os.WriteFile(file, []byte(`{"name":"bad<name>","hostname":"h","database":"d","username":"u"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err = run(t, "admin", "datasources", "add", "azurepostgresmi", "--file", file); err == nil || !strings.Contains(err.Error(), "name:") {
		t.Fatalf("add --file with an invalid resource: %v: %s", err, out)
	}

	// Changing the VN subnet moves what no longer fits, and says so.
	out, err = run(t, "admin", "settings", "set", "--vn-subnet", "10.200.0.0/16", "--dns-domain", "corp.example")
	if err != nil || !strings.Contains(out, "moved: azure-pg-mi-prod: virtual networking address 100.") || !strings.Contains(out, "-> 10.200.0.") {
		t.Fatalf("settings set: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "settings", "show"); err != nil || !strings.Contains(out, "10.200.0.0/16") || !strings.Contains(out, "corp.example") {
		t.Fatalf("settings show: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "settings", "set", "--vn-subnet", "8.8.8.0/24"); err == nil || !strings.Contains(err.Error(), "vn-subnet") {
		t.Fatalf("settings set with a public subnet: %v: %s", err, out)
	}
	// The loopback listener does not move, and psql works through the new VN address once the client
	// has followed the change (within seconds).
	eventually(t, "psql to work after the subnet change", func() bool {
		got, err := exec.Command("psql", moved, "-X", "-A", "-t", "-c", "select 1").CombinedOutput()
		return err == nil && strings.TrimSpace(string(got)) == "1"
	})

	// 20 concurrent adds yield 20 distinct addresses.
	ctl := client.NewControl(env.Dirs)
	var wg sync.WaitGroup
	var mu sync.Mutex
	lb, vn := map[string]bool{}, map[string]bool{}
	var errs []error
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := resource.New(fmt.Sprintf("bulk-%02d", i))
			r.Hostname, r.Database, r.Username = "bulk.example", "d", "u"
			out, err := ctl.API().AddDatasource(ctx, r)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			lb[out.LoopbackAddress], vn[out.VNAddress] = true, true
		}()
	}
	wg.Wait()
	if len(errs) > 0 || len(lb) != 20 || len(vn) != 20 {
		t.Fatalf("20 concurrent adds: %d distinct loopback and %d distinct VN addresses, errors %v", len(lb), len(vn), errs)
	}
}

// startWorker starts another node of env's deployment (joining its SQLite catalog) as a worker of
// proxy cluster clusterID with tags, closed by t.Cleanup.
func startWorker(t *testing.T, env *demo.Env, name, clusterID string, tags map[string]string) *node.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := demo.NodeConfig(env.Emu)
	cfg.CatalogURL = "sqlite:" + filepath.Join(env.NodeDir, "ferry.db")
	cfg.Name, cfg.ClusterID, cfg.Tags = name, clusterID, tags
	dir := filepath.Join(t.TempDir(), name)
	if err := node.Join(ctx, dir, cfg); err != nil {
		t.Fatal(err)
	}
	n, err := node.Start(ctx, dir, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}
