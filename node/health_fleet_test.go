package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/cli"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// TestHealthPerNode: two nodes on one PostgreSQL catalog; health is kept per (node, resource) and
// only candidate nodes check. node-2 (env=prod) is the only candidate of hp-prod (egress filter
// tag:env=prod) and node-1 (role=one) of hp-one; hp-none matches no node. Every answer comes
// through node-1's control API and names the node that said it: hp-prod's result is node-2's and
// node-1 has none; healthcheck of hp-one runs on node-1 itself; hp-none shows the reason instead of
// a result. The ferry CLI (healthcheck, diagnostics, --json) and ferry-node doctor on each node say
// which node said what; a stopped node's result turns stale.
func TestHealthPerNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	env, err := demo.Start(ctx, demo.Options{Dir: t.TempDir(), NoResource: true, Nodes: 2, NodeConfig: func(c *node.Config) {
		c.HealthInterval = node.Duration(time.Hour) // creation, change and on-demand checks only
		c.HealthStepTimeout = node.Duration(5 * time.Second)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	// An identity of this test's own: MSAL caches tokens process-wide, per client ID.
	id := azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: "ferry-mi-pernode"}
	env.Emu.AddUserIdentity(id)
	if err := env.Emu.CreatePrincipal(ctx, "ferry-mi-pernode", id.ObjectID); err != nil {
		t.Fatal(err)
	}
	if err := env.Emu.CreateDatabase(ctx, "pernode", "ferry-mi-pernode"); err != nil {
		t.Fatal(err)
	}
	cat := env.Node.Catalog()
	for name, tags := range map[string]map[string]string{"node-1": {"role": "one"}, "node-2": {"env": "prod"}} {
		if _, err := cat.UpdateNodeTags(ctx, name, tags); err != nil {
			t.Fatal(err)
		}
	}
	n1, err := cat.Node(ctx, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	n2, err := cat.Node(ctx, "node-2")
	if err != nil {
		t.Fatal(err)
	}
	apiC := env.Daemon.API() // the client is enrolled with node-1
	add := func(name, filter string) resource.Resource {
		r := resource.New(name)
		r.Hostname, r.Database, r.Username, r.ManagedIdentityClientID = env.Emu.Hostname(), "pernode", "ferry-mi-pernode", id.ClientID
		r.EgressFilter = filter
		r.PortOverride = -1 // no loopback listener needed
		out, err := apiC.AddDatasource(ctx, r)
		if err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
		return out
	}
	prod := add("hp-prod", "tag:env=prod")
	one := add("hp-one", "tag:role=one")
	none := add("hp-none", "tag:env=nothing")

	// node-2 finds hp-prod at its next round (it polls the catalog at least every 10 s).
	var h api.Health
	deadline := time.Now().Add(60 * time.Second)
	for {
		h, err = apiC.Diagnostics(ctx, "hp-prod")
		if err == nil && h.Checked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hp-prod not checked by node-2 within 60 s: %v %+v", err, h)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if h.State != api.HealthHealthy || h.NodeID != n2.ID || h.NodeName != "node-2" || len(h.Steps) != 6 ||
		len(h.Nodes) != 1 || h.Nodes[0].NodeName != "node-2" || h.Nodes[0].State != api.HealthHealthy || h.Nodes[0].Stale {
		t.Fatalf("diagnostics of hp-prod through node-1: %+v; want node-2's healthy result alone", h)
	}
	// healthcheck through node-1, which is no candidate: node-2's latest result, nothing run here.
	h, err = apiC.HealthCheck(ctx, "hp-prod")
	if err != nil || h.NodeName != "node-2" || h.State != api.HealthHealthy || len(h.Nodes) != 1 {
		t.Fatalf("healthcheck of hp-prod through node-1: %v %+v", err, h)
	}
	// healthcheck of hp-one: node-1 is its candidate and checks it now.
	before := time.Now()
	h, err = apiC.HealthCheck(ctx, "hp-one")
	if err != nil || h.NodeName != "node-1" || h.NodeID != n1.ID || h.State != api.HealthHealthy || h.Time.Before(before.Add(-time.Second)) ||
		len(h.Nodes) != 1 || h.Nodes[0].NodeName != "node-1" {
		t.Fatalf("healthcheck of hp-one through node-1: %v %+v", err, h)
	}
	// The catalog: one row per (candidate node, resource), none from a node that is no candidate.
	for _, c := range []struct {
		r    resource.Resource
		node string
	}{{prod, n2.ID}, {one, n1.ID}, {none, ""}} {
		rows, err := cat.HealthResults(ctx, c.r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if c.node == "" && len(rows) != 0 || c.node != "" && (len(rows) != 1 || rows[0].NodeID != c.node) {
			t.Errorf("stored results of %s: %+v; want only node %q's", c.r.Name, rows, c.node)
		}
	}
	// No candidate: the reason instead of a result.
	h, err = apiC.Diagnostics(ctx, "hp-none")
	if err != nil || h.Reason != "no node can reach it: no gateway matches egress filter tag:env=nothing" || h.Label() != "no node can reach it" || h.Checked || len(h.Nodes) != 0 {
		t.Fatalf("diagnostics of hp-none: %v %+v", err, h)
	}
	all, err := apiC.HealthAll(ctx)
	if err != nil || len(all) != 3 || all[0].Resource != "hp-none" || all[0].Reason == "" || all[1].NodeName != "node-1" || all[2].NodeName != "node-2" {
		t.Fatalf("health of all: %v %+v", err, all)
	}
	rs, err := apiC.Resources(ctx)
	if err != nil || len(rs) != 3 {
		t.Fatalf("resource list: %v %+v", err, rs)
	}
	for _, r := range rs {
		want := map[string]string{"hp-prod": "node-2", "hp-one": "node-1", "hp-none": ""}[r.Name]
		if r.Health == nil || r.Health.NodeName != want || len(r.Health.Steps) != 0 {
			t.Errorf("resource list health of %s: %+v; want node %q's, without steps", r.Name, r.Health, want)
		}
	}
	// Each route node carries its own health of the resource, on the device's list and on the
	// admin's show alike (api.RouteNode.Health, CheckedAt).
	for _, r := range rs {
		if r.Name == "hp-prod" && (r.Route == nil || len(r.Route.Nodes) != 1 || r.Route.Nodes[0].Health != api.HealthHealthy || r.Route.Nodes[0].CheckedAt.IsZero()) {
			t.Errorf("resource list route of hp-prod: %+v; want node-2, healthy, with its check time", r.Route)
		}
	}
	d, err := apiC.DatasourceDetail(ctx, "hp-prod")
	if err != nil || d.Route == nil || len(d.Route.Nodes) != 1 || d.Route.Nodes[0].NodeID != n2.ID ||
		d.Route.Nodes[0].Health != api.HealthHealthy || d.Route.Nodes[0].CheckedAt.IsZero() {
		t.Errorf("admin show route of hp-prod: %v %+v; want node-2, healthy, with its check time", err, d.Route)
	}

	// The CLI names the node in its text and its JSON.
	t.Setenv(client.EnvConfigDir, env.Dirs.Config)
	t.Setenv(client.EnvRuntimeDir, env.Dirs.Runtime)
	out, err := ferryCLI(ctx, "admin", "datasources", "healthcheck", "hp-prod")
	if err != nil || !strings.Contains(out, "by node node-2)") || !regexpLine(out, `^node-2 +healthy +`) || regexpLine(out, `^node-1 `) {
		t.Errorf("ferry admin datasources healthcheck hp-prod: %v\n%s", err, out)
	}
	out, err = ferryCLI(ctx, "admin", "datasources", "diagnostics", "hp-one")
	if err != nil || !strings.Contains(out, "by node node-1)") || !regexpLine(out, `^node-1 +healthy +`) || regexpLine(out, `^node-2 `) {
		t.Errorf("ferry admin datasources diagnostics hp-one: %v\n%s", err, out)
	}
	out, err = ferryCLI(ctx, "admin", "datasources", "diagnostics", "hp-none")
	if err != nil || !strings.Contains(out, "hp-none: no node can reach it\nno node can reach it: no gateway matches egress filter tag:env=nothing\n") {
		t.Errorf("ferry admin datasources diagnostics hp-none: %v\n%s", err, out)
	}
	out, err = ferryCLI(ctx, "admin", "datasources", "healthcheck", "hp-none")
	if err == nil || err.Error() != "hp-none: no node can reach it: no gateway matches egress filter tag:env=nothing" {
		t.Errorf("ferry admin datasources healthcheck hp-none: %v (want the reason as the error)\n%s", err, out)
	}
	out, err = ferryCLI(ctx, "admin", "datasources", "diagnostics", "hp-prod", "--json")
	var js struct {
		NodeName string `json:"node_name"`
		Nodes    []struct {
			NodeID   string `json:"node_id"`
			NodeName string `json:"node_name"`
			State    string `json:"state"`
		} `json:"nodes"`
	}
	if err != nil || json.Unmarshal([]byte(out), &js) != nil || js.NodeName != "node-2" || len(js.Nodes) != 1 ||
		js.Nodes[0].NodeID != n2.ID || js.Nodes[0].NodeName != "node-2" || js.Nodes[0].State != api.HealthHealthy {
		t.Errorf("diagnostics --json: %v %+v\n%s", err, js, out)
	}

	// doctor on node-1 does not check hp-prod (not a candidate) and shows node-2's result; on
	// node-2 it checks it and names itself.
	doctor := func(i int, res string) string {
		t.Helper()
		cfg, err := node.LoadConfig(filepath.Join(env.NodeDirs[i], node.ConfigFile))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := node.Doctor(ctx, &out, env.NodeDirs[i], cfg, node.DoctorOptions{Resource: res}); err != nil {
			t.Fatalf("doctor on node %d: %v\n%s", i+1, err, out.String())
		}
		return out.String()
	}
	out = doctor(0, "hp-prod")
	if !strings.Contains(out, "not checked on this node (node-1): the node's tags do not match egress filter tag:env=prod") ||
		!regexpLine(out, `^ +node-2: healthy \(checked `) || strings.Contains(out, "✓ login") || !strings.Contains(out, "hp-prod: not checked on node node-1") {
		t.Errorf("doctor hp-prod on node-1:\n%s", out)
	}
	out = doctor(1, "hp-prod")
	if !strings.Contains(out, "✓ login") || !strings.Contains(out, "hp-prod: healthy on node node-2") || !regexpLine(out, `^ +node-2: healthy \(checked `) {
		t.Errorf("doctor hp-prod on node-2:\n%s", out)
	}
	out = doctor(0, "hp-none")
	if !strings.Contains(out, "no node can reach it: no gateway matches egress filter tag:env=nothing") {
		t.Errorf("doctor hp-none on node-1:\n%s", out)
	}

	// node-1 loses its tag: its result of hp-one is hidden at once (no longer a candidate), and
	// node-1 deletes it at its next round.
	if _, err := cat.UpdateNodeTags(ctx, "node-1", nil); err != nil {
		t.Fatal(err)
	}
	h, err = apiC.Diagnostics(ctx, "hp-one")
	if err != nil || h.Reason != "no node can reach it: no gateway matches egress filter tag:role=one" || len(h.Nodes) != 0 {
		t.Fatalf("diagnostics of hp-one after node-1 lost its tag: %v %+v", err, h)
	}
	deadline = time.Now().Add(60 * time.Second)
	for {
		rows, err := cat.HealthResults(ctx, one.ID)
		if err == nil && len(rows) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-1 kept its result of hp-one for 60 s after it stopped being a candidate: %+v %v", rows, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// node-2 stops: its last result stays, marked stale, and no online node can reach hp-prod.
	if err := env.Nodes[1].Close(); err != nil {
		t.Fatal(err)
	}
	h, err = apiC.Diagnostics(ctx, "hp-prod")
	if err != nil || h.Reason != "no node can reach it: no online gateway matches egress filter tag:env=prod" || len(h.Nodes) != 1 ||
		!h.Nodes[0].Stale || h.Nodes[0].NodeName != "node-2" || h.Nodes[0].State != api.HealthHealthy {
		t.Fatalf("diagnostics of hp-prod with node-2 stopped: %v %+v", err, h)
	}
	out, err = ferryCLI(ctx, "admin", "datasources", "diagnostics", "hp-prod")
	if err != nil || !regexpLine(out, `^node-2 +healthy +.*\(stale: node offline\)`) {
		t.Errorf("diagnostics of hp-prod with node-2 stopped: %v\n%s", err, out)
	}
}

// ferryCLI runs one ferry command line (the CLI's own root command) and returns what it printed.
func ferryCLI(ctx context.Context, args ...string) (string, error) {
	root := cli.NewRoot(nil)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// regexpLine reports whether a line of s matches re.
func regexpLine(s, re string) bool { return regexp.MustCompile("(?m)" + re).MatchString(s) }
