package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
)

// run executes one ferry command line against the demo's daemon.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRoot(nil)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String() + errOut.String(), err
}

func TestCommandsAgainstDemo(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql is not installed")
	}
	// Single Server mode, so that the reference page's example (username mi_user@mypg) logs in as is.
	// The hostnames of the catalog-only resources below join the emulator's on the node's allow-list.
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), LoopbackIP: demo.RandomLoopbackIP(), SingleServer: true,
		NodeConfig: func(c *node.Config) {
			c.AllowedServerHosts = append(c.AllowedServerHosts, "a.example", "b.example", "bulk.example")
		}})
	t.Setenv(client.EnvConfigDir, env.Dirs.Config)
	t.Setenv(client.EnvRuntimeDir, env.Dirs.Runtime)

	bind := demo.RandomLoopbackIP()
	// The proxy cluster the resources below (and the reference page's example) name must exist:
	// until it does they are refused, naming it.
	out, err := run(t, "admin", "datasources", "add", "azurepostgresmi", "early", "--hostname=mypg.postgres.database.azure.com",
		"--database=production", "--username=mi_user", "--managed-identity-client-id="+demo.ClientID, "--proxy-cluster-id=n-1a2b345c67890123")
	if err == nil || !strings.Contains(err.Error(), `no proxy cluster "n-1a2b345c67890123"`) || !strings.Contains(err.Error(), "ferry admin clusters add") {
		t.Fatalf("add naming a missing cluster: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "clusters", "add", "prod-westeurope", "--id", "n-1a2b345c67890123"); err != nil || strings.TrimSpace(out) != "n-1a2b345c67890123" {
		t.Fatalf("admin clusters add --id: %v: %s", err, out)
	}
	out, err = run(t, "admin", "datasources", "add", "azurepostgresmi", "azure-pg-mi-dev",
		"--hostname=mypg.postgres.database.azure.com", "--port=5432", "--database=production",
		"--username=mi_user", "--managed-identity-client-id="+demo.ClientID, "--tls-required",
		"--bind-interface="+bind, "--egress-filter=tag:env=dev", "--port-override=-1",
		"--proxy-cluster-id=n-1a2b345c67890123", "--subdomain=azure-pg-mi-dev",
		"--tags=env=dev,team=data", "--use-azure-single-server-usernames")
	if err != nil || !strings.Contains(out, "Added azure-pg-mi-dev") {
		t.Fatalf("admin datasources add: %v: %s", err, out)
	}
	out, err = run(t, "admin", "datasources", "list")
	if err != nil || !strings.Contains(out, "azure-pg-mi-dev") || !strings.Contains(out, "azure-pg-mi-prod") {
		t.Fatalf("admin datasources list: %v: %s", err, out)
	}
	// Invalid input is refused before it reaches the node, naming the property.
	out, err = run(t, "admin", "datasources", "add", "azurepostgresmi", "bad<name>", "--hostname=h", "--database=d", "--username=u", "--managed-identity-client-id=nope")
	if err == nil || !strings.Contains(err.Error(), "name:") || !strings.Contains(err.Error(), "managed-identity-client-id:") {
		t.Fatalf("invalid add: %v: %s", err, out)
	}

	out, err = run(t, "connect", "azure-pg-mi-dev", "--env")
	if err != nil {
		t.Fatalf("connect --env: %v: %s", err, out)
	}
	for _, want := range []string{"export PGHOST=" + bind + "\n", "export PGPORT=10001\n", "export PGDATABASE=production\n", "export PGUSER=mi_user\n", "export PGSSLMODE=disable\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("connect --env output lacks %q:\n%s", want, out)
		}
	}
	// The node carries only what it is a candidate for: the resource's proxy cluster has no workers
	// (the demo's node is a gateway), so psql gets FATAL 08001 saying so. Out of the cluster, and
	// with the node tagged env=dev (its egress filter), the node carries it.
	env1 := out
	if got, err := exec.Command("bash", "-c", env1+"psql -X -A -t -c 'select 1'").CombinedOutput(); err == nil ||
		!strings.Contains(string(got), "FATAL") || !strings.Contains(string(got), "no node can reach it: proxy cluster n-1a2b345c67890123 has no workers") {
		t.Fatalf("psql to a resource of a cluster without workers: %v: %s", err, got)
	}
	if out, err := run(t, "admin", "datasources", "update", "azure-pg-mi-dev", "--proxy-cluster-id="); err != nil {
		t.Fatalf("leave the cluster: %v: %s", err, out)
	}
	if out, err := run(t, "admin", "nodes", "update", env.Node.ID(), "--tags", "env=dev"); err != nil {
		t.Fatalf("tag the node: %v: %s", err, out)
	}
	// The printed environment is what psql needs.
	cmd := exec.Command("bash", "-c", env1+"psql -X -A -t -c 'select current_database()'")
	got, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) != "production" {
		t.Fatalf("psql with the printed environment: %v: %s", err, got)
	}

	out, err = run(t, "status")
	if err != nil {
		t.Fatalf("status: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	// azure-pg-mi-dev left its cluster, so no line under the table says it has no node
	// (TestClusterCommands shows that line); then the node in use.
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "NAME TYPE ADDRESS STATUS HEALTH MODE NODE TAGS" || !strings.HasPrefix(lines[3], "Node: ") {
		t.Fatalf("status output:\n%s", out)
	}
	// The row names the node its connections go to: the node in use, for a resource that any node
	// may carry.
	inUse := strings.Fields(strings.TrimPrefix(lines[3], "Node: "))[0]
	if f := strings.Fields(lines[1]); f[0] != "azure-pg-mi-dev" || f[2] != bind+":10001" || f[3] != "connected" || f[len(f)-3] != "loopback" || f[len(f)-2] != inUse || f[len(f)-1] != "env=dev,team=data" {
		t.Fatalf("status row: %q (node in use %s)", lines[1], inUse)
	}
	out, err = run(t, "status", "--json")
	var js client.Status
	if err != nil || json.Unmarshal([]byte(out), &js) != nil || len(js.Resources) != 2 || js.Node != inUse {
		t.Fatalf("status --json: %v:\n%s", err, out)
	}
	for _, r := range js.Resources {
		if want := map[bool]string{true: inUse}[r.Connected]; r.Node != want {
			t.Fatalf("status --json: %s (connected %v) has node %q, want %q", r.Name, r.Connected, r.Node, want)
		}
	}
	t.Run("health", testHealthCommands)

	if out, err = run(t, "disconnect", "--all"); err != nil {
		t.Fatalf("disconnect --all: %v: %s", err, out)
	}
	out, _ = run(t, "status")
	if strings.Contains(strings.ReplaceAll(out, "not connected", ""), "connected") {
		t.Fatalf("after disconnect --all:\n%s", out)
	}
	if _, err = run(t, "connect", "no-such-resource"); err == nil || !strings.Contains(err.Error(), `resource "no-such-resource" does not exist`) {
		t.Fatalf("connect unknown: %v", err)
	}
	if _, err = run(t, "disconnect"); err == nil {
		t.Fatal("disconnect without names or --all succeeded")
	}

	// Users, roles and the activity log.
	for _, args := range [][]string{
		{"admin", "roles", "add", "developers"},
		{"admin", "roles", "grant", "developers", "tag:env=dev"},
		{"admin", "users", "add", "engineer", "--role", "developers"},
	} {
		if out, err := run(t, args...); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	out, err = run(t, "admin", "users", "list")
	if err != nil || !strings.Contains(out, "engineer") || !strings.Contains(out, "developers") {
		t.Fatalf("users list: %v: %s", err, out)
	}
	out, err = run(t, "admin", "roles", "list")
	if err != nil || !strings.Contains(out, "tag:env=dev") || !strings.Contains(out, "engineer") {
		t.Fatalf("roles list: %v: %s", err, out)
	}
	out, err = run(t, "admin", "users", "enroll", "engineer")
	if err != nil || !strings.Contains(out, "ferry-enroll.") {
		t.Fatalf("users enroll: %v: %s", err, out)
	}
	if _, err = run(t, "admin", "roles", "grant", "developers", "tag:env"); err == nil {
		t.Fatal("a malformed tag grant was accepted")
	}
	if _, err = run(t, "admin", "users", "add", "engineer"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate user: %v", err)
	}
	out, err = run(t, "admin", "activities")
	if err != nil || !strings.Contains(out, "role.grant") || !strings.Contains(out, "user.add") {
		t.Fatalf("activities: %v: %s", err, out)
	}

	t.Run("output", testOutput)
	t.Run("reference example", func(t *testing.T) { testReferenceExample(t, env) })

	// With the node gone, status still prints what the daemon knows but exits non-zero.
	if err := env.Node.Close(); err != nil {
		t.Fatal(err)
	}
	env.Node = nil
	if out, err = run(t, "status"); err == nil || !strings.Contains(err.Error(), "ferry-node unreachable") || !strings.Contains(out, "NAME") {
		t.Fatalf("status with the node down: %v:\n%s", err, out)
	}

	t.Setenv(client.EnvRuntimeDir, t.TempDir())
	if _, err = run(t, "status"); err == nil || !strings.Contains(err.Error(), "daemon is not running") {
		t.Fatalf("status without daemon: %v", err)
	}
}
