package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/tunnel"
)

// TestNodeCommands: `ferry admin nodes list|show|update|delete` (tables and --json) against a
// running node and a second node's record that stopped a minute ago: states and tags as stored,
// bad --tags refused before the node is asked, the running node's delete refused naming it, the
// stopped one deleted, an unknown node named, and a node's text never reaching the terminal raw.
func TestNodeCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{NoResource: true})
	t.Setenv(client.EnvConfigDir, env.Dirs.Config)
	t.Setenv(client.EnvRuntimeDir, env.Dirs.Runtime)

	k, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	other, err := env.Node.Catalog().RegisterNode(ctx, catalog.Node{ID: catalog.NewNodeID(), Name: "gw-old", Tags: map[string]string{"region": "northeurope"},
		WireGuardPublicKey: k.PublicKey().String(), WireGuardEndpoint: "gw-old.example:51820", EnrollURL: "https://gw-old.example:8443",
		EnrollCertSHA256: strings.Repeat("0f", 32), Version: "v0.9\x1b[2J", StartedAt: old, LastHeartbeat: old})
	if err != nil {
		t.Fatal(err)
	}
	self, err := env.Node.Catalog().Node(ctx, env.Node.ID())
	if err != nil {
		t.Fatal(err)
	}

	out, err := run(t, "admin", "nodes", "list")
	if err != nil {
		t.Fatalf("list: %v: %s", err, out)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 {
			rows[f[1]] = f
		}
	}
	if r := rows[self.Name]; len(r) < 4 || r[0] != self.ID || r[2] != api.NodeOnline {
		t.Errorf("list row of the running node %v:\n%s", r, out)
	}
	if r := rows["gw-old"]; len(r) < 4 || r[2] != api.NodeOffline || !strings.Contains(out, "region=northeurope") {
		t.Errorf("list row of the stopped node %v:\n%s", r, out)
	}
	if strings.Contains(out, "\x1b") || !strings.Contains(out, `v0.9\x1b[2J`) {
		t.Errorf("list lets a node's text reach the terminal raw:\n%q", out)
	}
	out, err = run(t, "admin", "nodes", "list", "--json")
	var ns []api.Node
	if err != nil || json.Unmarshal([]byte(out), &ns) != nil || len(ns) != 2 {
		t.Fatalf("list --json: %v: %s", err, out)
	}
	for _, ref := range []string{other.ID, "gw-old"} {
		var n api.Node
		out, err = run(t, "admin", "nodes", "show", ref, "--json")
		if err != nil || json.Unmarshal([]byte(out), &n) != nil || n.ID != other.ID || n.State != api.NodeOffline || n.HeartbeatAgeSeconds < 59 {
			t.Fatalf("show %s --json: %v: %s", ref, err, out)
		}
	}
	out, err = run(t, "admin", "nodes", "show", self.Name)
	if err != nil || !hasLine(out, "state", "online") || !strings.Contains(out, self.WireGuardPublicKey) || !strings.Contains(out, self.EnrollCertSHA256) {
		t.Fatalf("show: %v:\n%s", err, out)
	}
	if out, err = run(t, "admin", "nodes", "show", "nope"); err == nil || !strings.Contains(err.Error(), `node "nope" does not exist`) {
		t.Fatalf("show nope: %v: %s", err, out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{self.Name, "--tags", "region"}, `"region" is not key=value`},
		{[]string{self.Name, "--tags", "region=westeurope,"}, "item 2 is empty"},
		{[]string{self.Name, "--tags", "env=pro d"}, "invalid"},
		{[]string{self.Name}, "nothing to update"},
		{[]string{"nope", "--tags", "a=b"}, `node "nope" does not exist`},
	} {
		out, err := run(t, append([]string{"admin", "nodes", "update"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("update %v: %v: %s; want %q", tc.args, err, out, tc.want)
		}
	}
	out, err = run(t, "admin", "nodes", "update", self.Name, "--tags", "region=westeurope,env=prod", "--json")
	var n api.Node
	if err != nil || json.Unmarshal([]byte(out), &n) != nil || api.FormatNodeTags(n.Tags) != "env=prod,region=westeurope" {
		t.Fatalf("update --json: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "nodes", "update", self.Name, "--tags", ""); err != nil || !strings.Contains(out, "tags ") {
		t.Fatalf("update --tags '': %v: %s", err, out)
	}
	if x, _ := env.Node.Catalog().Node(ctx, self.ID); len(x.Tags) != 0 {
		t.Fatalf("tags after clearing: %v", x.Tags)
	}

	out, err = run(t, "admin", "nodes", "delete", self.Name)
	if err == nil || !strings.Contains(err.Error(), "node "+self.Name+" is online (last heartbeat") || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("delete the running node: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "nodes", "delete", "gw-old"); err != nil || !strings.Contains(out, "Deleted node gw-old.") {
		t.Fatalf("delete: %v: %s", err, out)
	}
	out, err = run(t, "admin", "nodes", "list", "--json")
	if err != nil || json.Unmarshal([]byte(out), &ns) != nil || len(ns) != 1 || ns[0].ID != self.ID {
		t.Fatalf("list after delete: %v: %s", err, out)
	}
}

// hasLine reports whether out has a line of exactly these fields.
func hasLine(out string, fields ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(line), " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}
