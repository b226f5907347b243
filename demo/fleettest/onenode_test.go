//go:build linux

package fleettest

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/fleet"
	"github.com/ferryhq/ferry/internal/netlab"
)

// lab is a lab with the named hosts, closed at t's cleanup.
func lab(t *testing.T, ctx context.Context, names ...string) (*netlab.Lab, map[string]*netlab.Host) {
	t.Helper()
	l, err := netlab.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	hosts := map[string]*netlab.Host{}
	for _, name := range names {
		if hosts[name], err = l.AddHost(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	return l, hosts
}

func startCatalog(t *testing.T, ctx context.Context, l *netlab.Lab, h *netlab.Host) *fleet.Catalog {
	t.Helper()
	c, err := fleet.StartCatalog(ctx, l, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// startNode inits and runs a node on h, ready when from reaches its enrollment endpoint; at
// cleanup it is stopped and, if t failed, its log is in the test log.
func startNode(t *testing.T, ctx context.Context, cat *fleet.Catalog, h, from *netlab.Host) *fleet.Node {
	t.Helper()
	n, err := fleet.InitNode(ctx, bins, h, filepath.Join(t.TempDir(), h.Name), cat.NodeConfig(h))
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, ctx, n, from)
	return n
}

// runNode runs the node n, ready when from reaches its enrollment endpoint; at cleanup it is
// stopped and, if t failed, its log is in the test log.
func runNode(t *testing.T, ctx context.Context, n *fleet.Node, from *netlab.Host) {
	t.Helper()
	t.Cleanup(func() {
		if err := n.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("log of the node on %s:\n%s", n.Host.Name, n.Log())
		}
	})
	if err := n.Start(ctx, from); err != nil {
		t.Fatal(err)
	}
}

// startClient enrolls a device on h with token and runs its daemon (startDaemon).
func startClient(t *testing.T, ctx context.Context, h *netlab.Host, token, device string) *fleet.Client {
	t.Helper()
	c := fleet.NewClient(bins, h, filepath.Join(t.TempDir(), h.Name))
	if _, err := c.Ferry(ctx, "login", token, "--device-name", device); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, ctx, c)
	return c
}

// startDaemon runs c's daemon; at cleanup it is stopped and, if t failed, its log is in the test
// log.
func startDaemon(t *testing.T, ctx context.Context, c *fleet.Client) {
	t.Helper()
	t.Cleanup(func() {
		if err := c.StopDaemon(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("log of the client daemon on %s:\n%s", c.Host.Name, c.DaemonLog())
		}
	})
	if err := c.StartDaemon(ctx); err != nil {
		t.Fatal(err)
	}
}

// addDemoResource adds azure-pg-mi-prod (the emulator's server) as the client's admin, connects it
// and returns the psql connection string of its local address inside the client's host.
func addDemoResource(t *testing.T, ctx context.Context, c *fleet.Client, cat *fleet.Catalog) string {
	t.Helper()
	if _, err := c.Ferry(ctx, "admin", "datasources", "add", "azurepostgresmi", demo.ResourceName,
		"--hostname="+cat.Emu.Hostname(), "--port=5432", "--database="+demo.Database, "--username="+demo.Role,
		"--managed-identity-client-id="+demo.ClientID, "--tls-required"); err != nil {
		t.Fatal(err)
	}
	return connectDemoResource(t, ctx, c)
}

// connectDemoResource connects azure-pg-mi-prod and returns the psql connection string of its
// local address inside the client's host.
func connectDemoResource(t *testing.T, ctx context.Context, c *fleet.Client) string {
	t.Helper()
	out, err := c.Ferry(ctx, "connect", demo.ResourceName)
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("ferry connect printed %q: %v", out, err)
	}
	return "host=" + host + " port=" + port + " dbname=" + demo.Database + " user=" + demo.Role + " sslmode=disable"
}

// queries is the node's query log as the client's admin reads it with the CLI.
func queries(t *testing.T, ctx context.Context, c *fleet.Client) []api.Query {
	t.Helper()
	out, err := c.Ferry(ctx, "admin", "logs", "queries", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var qs []api.Query
	if err := json.Unmarshal([]byte(out), &qs); err != nil {
		t.Fatalf("ferry admin logs queries --json: %v\n%s", err, out)
	}
	return qs
}

// TestOneNodeAcrossHosts: the emulator on a catalog host, ferry-node as a process on a host of its
// own, and the client (the ferry daemon and CLI as processes, psql) on a third, all talking over
// the lab's bridge by their lab addresses: the admin enrolls, adds and connects the resource, runs
// SELECT 1 through the tunnel, and the node's audit shows it. This machine's own namespace reaches
// none of it.
func TestOneNodeAcrossHosts(t *testing.T) {
	needLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, hosts := lab(t, ctx, "catalog", "node-a", "client")
	cat := startCatalog(t, ctx, l, hosts["catalog"])
	n := startNode(t, ctx, cat, hosts["node-a"], hosts["client"])
	c := startClient(t, ctx, hosts["client"], n.AdminToken, "laptop")
	conn := addDemoResource(t, ctx, c, cat)

	out, err := c.Psql(ctx, conn, "SELECT 1")
	if err != nil || out != "1" {
		t.Fatalf("psql SELECT 1 through the tunnel: %q, %v", out, err)
	}
	var found bool
	for _, q := range queries(t, ctx, c) {
		if q.SQL == "SELECT 1" && q.Resource == demo.ResourceName && q.User == "admin" {
			found = true
		}
	}
	if !found {
		t.Errorf("the audit has no SELECT 1 by admin on %s: %+v", demo.ResourceName, queries(t, ctx, c))
	}

	// This machine's own namespace does not reach the emulator: a token request to its IMDS from
	// here gets no token and the emulator sees no request. (A sandbox may answer every outbound
	// connection itself, so a failed dial alone would prove nothing either way.)
	seen := len(cat.Emu.IMDSRequests())
	if tok := imdsToken(ctx, cat.Emu.IMDSEndpoint()); tok != "" {
		t.Errorf("this machine's namespace got a token from the lab's IMDS at %s", cat.Emu.IMDSEndpoint())
	}
	if n := len(cat.Emu.IMDSRequests()); n != seen {
		t.Errorf("the emulator's IMDS saw %d requests from this machine's namespace", n-seen)
	}
}

// imdsToken asks the IMDS at endpoint for a token from this process's namespace and returns the
// access token, or "" when none came back within 3 s.
func imdsToken(ctx context.Context, endpoint string) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+azureemu.IMDSTokenPath+"?api-version=2018-02-01&resource="+url.QueryEscape(azureemu.Resource), nil)
	if err != nil {
		return ""
	}
	req.Header.Set("Metadata", "true")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil {
		return ""
	}
	return body.AccessToken
}
