package cli

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// TestClusterCommands: `ferry admin clusters add|list|show|delete` (tables and --json) against a
// running node: add prints the new ID (or the one --id gives), bad names and IDs are refused
// before the node is asked, a taken name is refused; a worker shows its kind and cluster in `ferry
// admin nodes list|show`; a resource naming a missing cluster is refused naming the ID;
// `datasources show` prints its candidate nodes or why there is none; delete is refused while a
// resource names the cluster or a node is its worker, listing them, and succeeds after.
func TestClusterCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{NoResource: true})
	t.Setenv(client.EnvConfigDir, env.Dirs.Config)
	t.Setenv(client.EnvRuntimeDir, env.Dirs.Runtime)

	out, err := run(t, "admin", "clusters", "add", "prod")
	id := strings.TrimSpace(out)
	if err != nil || !api.ValidClusterID(id) {
		t.Fatalf("clusters add: %v: %q", err, out)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"taken name", []string{"prod"}, "already exists"},
		{"bad name", []string{"Prod_1"}, "DNS label"},
		{"ID-shaped name", []string{"n-0123456789abcdef"}, "form of a cluster ID"},
		{"bad --id", []string{"dev", "--id", "n-123"}, "--id"},
		{"taken --id", []string{"dev", "--id", id}, "already exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(t, append([]string{"admin", "clusters", "add"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("clusters add %v: %v: %s; want %q", tc.args, err, out, tc.want)
			}
		})
	}
	if out, err = run(t, "admin", "clusters", "add", "dev", "--id", "n-1a2b345c67890123", "--json"); err != nil || !strings.Contains(out, `"id": "n-1a2b345c67890123"`) {
		t.Fatalf("clusters add --id --json: %v: %s", err, out)
	}

	// A worker of prod, stopped a minute ago.
	k, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	worker, err := env.Node.Catalog().RegisterNode(ctx, catalog.Node{ID: catalog.NewNodeID(), Name: "worker-1", ClusterID: id,
		WireGuardPublicKey: k.PublicKey().String(), WireGuardEndpoint: "worker-1.example:51820", EnrollURL: "https://worker-1.example:8443",
		EnrollCertSHA256: strings.Repeat("0f", 32), Version: "v1", StartedAt: old, LastHeartbeat: old})
	if err != nil {
		t.Fatal(err)
	}
	self, err := env.Node.Catalog().Node(ctx, env.Node.ID())
	if err != nil {
		t.Fatal(err)
	}

	out, err = run(t, "admin", "clusters", "list")
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "worker-1") || !strings.Contains(out, "n-1a2b345c67890123") {
		t.Fatalf("clusters list: %v:\n%s", err, out)
	}
	var list []api.Cluster
	if out, err = run(t, "admin", "clusters", "list", "--json"); err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 || list[1].Name != "prod" || len(list[1].Workers) != 1 || list[1].Workers[0] != worker.ID {
		t.Fatalf("clusters list --json: %v: %s", err, out)
	}
	for _, ref := range []string{id, "prod"} {
		if out, err = run(t, "admin", "clusters", "show", ref); err != nil || !hasLine(out, "id", id) || !hasLine(out, "workers", "worker-1") {
			t.Fatalf("clusters show %s: %v:\n%s", ref, err, out)
		}
	}
	if out, err = run(t, "admin", "clusters", "show", "nope"); err == nil || !strings.Contains(err.Error(), `proxy cluster "nope" does not exist`) {
		t.Fatalf("clusters show nope: %v: %s", err, out)
	}

	out, err = run(t, "admin", "nodes", "list")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 6 {
			rows[f[1]] = f
		}
	}
	if r := rows["worker-1"]; len(r) < 7 || r[5] != api.NodeKindWorker || r[6] != id {
		t.Errorf("nodes list row of the worker %v:\n%s", r, out)
	}
	if r := rows[self.Name]; len(r) < 7 || r[5] != api.NodeKindGateway || r[6] != "-" {
		t.Errorf("nodes list row of the gateway %v:\n%s", r, out)
	}
	if out, err = run(t, "admin", "nodes", "show", "worker-1"); err != nil || !hasLine(out, "kind", "worker") || !hasLine(out, "proxy", "cluster", id) {
		t.Errorf("nodes show worker-1: %v:\n%s", err, out)
	}

	add := func(name string, extra ...string) (string, error) {
		return run(t, append([]string{"admin", "datasources", "add", "azurepostgresmi", name, "--hostname=" + env.Emu.Hostname(),
			"--database=" + demo.Database, "--username=" + demo.Role, "--managed-identity-client-id=" + demo.ClientID}, extra...)...)
	}
	if out, err = add("missing", "--proxy-cluster-id=n-00000000000000aa"); err == nil || !strings.Contains(err.Error(), `no proxy cluster "n-00000000000000aa"`) {
		t.Fatalf("add naming a missing cluster: %v: %s", err, out)
	}
	if out, err = add("in-prod", "--proxy-cluster-id="+id); err != nil {
		t.Fatalf("add in prod: %v: %s", err, out)
	}
	if out, err = add("on-gateways"); err != nil {
		t.Fatalf("add on gateways: %v: %s", err, out)
	}
	if out, err = add("filtered", "--egress-filter=tag:env=nothing"); err != nil {
		t.Fatalf("add filtered: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "datasources", "update", "on-gateways", "--proxy-cluster-id=n-00000000000000aa"); err == nil || !strings.Contains(err.Error(), "n-00000000000000aa") {
		t.Fatalf("update to a missing cluster: %v: %s", err, out)
	}
	for _, tc := range []struct{ name, nodes string }{
		{"in-prod", "no node can reach it: no worker of proxy cluster " + id + " is online"},
		{"on-gateways", self.Name + " (online)"},
		{"filtered", "no node can reach it: no gateway matches egress filter tag:env=nothing"},
	} {
		out, err := run(t, "admin", "datasources", "show", tc.name)
		if err != nil || !hasLine(out, append([]string{"nodes"}, strings.Fields(tc.nodes)...)...) {
			t.Errorf("datasources show %s: %v: want nodes %q:\n%s", tc.name, err, tc.nodes, out)
		}
	}
	// `ferry status` says why a resource has no node (the admin's device reaches every resource).
	eventually(t, "status to say why filtered has no node", func() bool {
		out, _ := run(t, "status")
		return strings.Contains(out, "\nfiltered: no node can reach it: no gateway matches egress filter tag:env=nothing\n") &&
			!strings.Contains(out, "on-gateways: ")
	})
	// GET /v1/resources (the device's list) carries each resource's route.
	rs, err := env.Daemon.API().Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]*api.Route{}
	for _, r := range rs {
		routes[r.Name] = r.Route
	}
	if r := routes["on-gateways"]; r == nil || len(r.Nodes) != 1 || r.Nodes[0].NodeID != self.ID || r.Reason != "" {
		t.Errorf("route of on-gateways = %+v, want the running gateway", r)
	}
	if r := routes["in-prod"]; r == nil || len(r.Nodes) != 0 || !strings.Contains(r.Reason, id) {
		t.Errorf("route of in-prod = %+v, want none and the reason naming the cluster", r)
	}
	var shown api.Datasource
	if out, err = run(t, "admin", "datasources", "show", "on-gateways", "--json"); err != nil || json.Unmarshal([]byte(out), &shown) != nil ||
		shown.Route == nil || len(shown.Route.Nodes) != 1 || shown.Route.Nodes[0].NodeID != self.ID || len(shown.Candidates) != 1 {
		t.Errorf("datasources show --json: %v: %s", err, out)
	}

	// The API's status codes, through the SDK: 400 for a missing cluster, 409 for a used one, 404
	// for an unknown one.
	sdk := env.Daemon.API()
	r := resource.New("sdk-missing")
	r.Hostname, r.Database, r.Username, r.ProxyClusterID = env.Emu.Hostname(), demo.Database, demo.Role, "n-00000000000000aa"
	for _, tc := range []struct {
		name string
		call func() error
		want int
	}{
		{"add naming a missing cluster", func() error { _, err := sdk.AddDatasource(ctx, r); return err }, http.StatusBadRequest},
		{"delete a used cluster", func() error { _, err := sdk.DeleteCluster(ctx, id); return err }, http.StatusConflict},
		{"show an unknown cluster", func() error { _, err := sdk.Cluster(ctx, "nope"); return err }, http.StatusNotFound},
		{"add a taken name", func() error { _, err := sdk.AddCluster(ctx, api.ClusterAdd{Name: "prod"}); return err }, http.StatusConflict},
		{"add a bad name", func() error { _, err := sdk.AddCluster(ctx, api.ClusterAdd{Name: "-x"}); return err }, http.StatusBadRequest},
	} {
		var se *api.StatusError
		if err := tc.call(); !errors.As(err, &se) || se.Status != tc.want {
			t.Errorf("%s: %v, want HTTP %d", tc.name, err, tc.want)
		}
	}
	if out, err = run(t, "admin", "clusters", "delete", "prod"); err == nil || !strings.Contains(err.Error(), "in-prod") {
		t.Fatalf("delete a cluster a resource names: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "datasources", "delete", "in-prod"); err != nil {
		t.Fatalf("delete in-prod: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "clusters", "delete", id); err == nil || !strings.Contains(err.Error(), "worker-1") {
		t.Fatalf("delete a cluster with a worker: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "nodes", "delete", "worker-1"); err != nil {
		t.Fatalf("nodes delete worker-1: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "clusters", "delete", "prod"); err != nil || !strings.Contains(out, "Deleted proxy cluster prod ("+id+")") {
		t.Fatalf("clusters delete: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "clusters", "delete", "prod"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("second delete: %v: %s", err, out)
	}
	// --json answers as the other admin deletes do (nodes, secret stores): {"deleted": ARG}.
	var deleted map[string]string
	if out, err = run(t, "admin", "clusters", "delete", "dev", "--json"); err != nil || json.Unmarshal([]byte(out), &deleted) != nil || len(deleted) != 1 || deleted["deleted"] != "dev" {
		t.Fatalf(`clusters delete --json: want {"deleted": "dev"}: %v: %s`, err, out)
	}
}
