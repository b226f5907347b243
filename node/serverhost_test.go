package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/pgtrap"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/resource"
)

// TestTokenOnlyToAllowedHostsOverTLS attacks the node as an admin who wants its access token: the
// control API refuses resources whose hostname is not on the node's allow-list (the demo's holds
// exactly the emulator's name, plus here one name the test adds), and for a resource that got into the
// catalog anyway, or whose allowed name points at a server that refuses TLS, neither the health check
// nor a proxied login sends the token anywhere (a fake server records what it receives).
func TestTokenOnlyToAllowedHostsOverTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	trap, attacker := pgtrap.Start(t), pgtrap.Start(t)
	const trapHost = "trap.postgres.database.azure.com"
	var cfg node.Config
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), NoResource: true, NodeConfig: func(c *node.Config) {
		c.HealthInterval = node.Duration(time.Hour) // only creation, change and on-demand checks here
		c.HealthStepTimeout = node.Duration(5 * time.Second)
		c.AllowedServerHosts = append(c.AllowedServerHosts, trapHost)
		c.HostOverrides[trapHost] = trap.Addr()
		c.HostOverrides["attacker.example"] = attacker.Addr()
		cfg = *c
	}})
	if want := []string{strings.ToLower(env.Emu.Hostname()), trapHost}; strings.Join(cfg.AllowedServerHosts, ",") != strings.Join(want, ",") {
		t.Fatalf("the demo's allow-list is %v, want exactly the emulator's name (and the test's %s)", cfg.AllowedServerHosts, trapHost)
	}
	admin := env.Daemon.API()
	newRes := func(name, host string) resource.Resource {
		r := resource.New(name)
		r.Hostname, r.Database, r.Username, r.ManagedIdentityClientID = host, demo.Database, demo.Role, demo.ClientID
		r.BindInterface = demo.RandomLoopbackIP()
		return r
	}

	t.Run("create and update refuse hosts off the list", func(t *testing.T) {
		for i, host := range []string{
			"attacker.example",
			"127.0.0.1",
			"::1",
			"other.postgres.database.azure.com", // an Azure name, but not on this node's list
			"evil" + env.Emu.Hostname(),         // no label boundary
			env.Emu.Hostname() + ".attacker.example",
		} {
			_, err := admin.AddDatasource(ctx, newRes(fmt.Sprintf("off-list-%d", i), host))
			var se *api.StatusError
			if !errors.As(err, &se) || se.Status != http.StatusBadRequest || !strings.Contains(se.Message, serverhost.ConfigKey) || !strings.Contains(se.Message, host) {
				t.Errorf("add with hostname %q: %v, want 400 naming %s", host, err, serverhost.ConfigKey)
			}
		}
		ok, err := admin.AddDatasource(ctx, newRes("on-list", strings.ToUpper(env.Emu.Hostname())+"."))
		if err != nil {
			t.Fatalf("add with the emulator's name (upper case, trailing dot): %v", err)
		}
		moved := ok
		moved.Hostname = "attacker.example"
		_, err = admin.UpdateDatasource(ctx, ok.Name, moved)
		var se *api.StatusError
		if !errors.As(err, &se) || se.Status != http.StatusBadRequest || !strings.Contains(se.Message, serverhost.ConfigKey) {
			t.Fatalf("update to attacker.example: %v, want 400 naming %s", err, serverhost.ConfigKey)
		}
		if got, err := admin.Datasource(ctx, ok.Name); err != nil || got.Hostname != ok.Hostname {
			t.Fatalf("after the refused update: %+v, %v", got, err)
		}
	})

	t.Run("tls_required left out of the API's JSON is true", func(t *testing.T) {
		hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return env.Daemon.Dial(ctx, addr) }}}
		base := "http://" + netip.AddrPortFrom(api.NodeTunnelAddress, api.APIPort).String()
		send := func(method, path string, body map[string]any) resource.Resource {
			t.Helper()
			b, _ := json.Marshal(body)
			req, _ := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(b))
			req.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			if resp.StatusCode/100 != 2 {
				t.Fatalf("%s %s: %s %s", method, path, resp.Status, out)
			}
			var r resource.Resource
			if method == http.MethodPut {
				var up api.DatasourceUpdate
				if err := json.Unmarshal(out, &up); err != nil {
					t.Fatal(err)
				}
				return up.After
			}
			if err := json.Unmarshal(out, &r); err != nil {
				t.Fatal(err)
			}
			return r
		}
		body := map[string]any{"name": "raw-json", "type": resource.TypeAzurePostgresMI, "hostname": env.Emu.Hostname(),
			"port": 5432, "database": demo.Database, "username": demo.Role, "bind_interface": demo.RandomLoopbackIP()}
		if r := send(http.MethodPost, "/v1/admin/datasources", body); !r.TLSRequired {
			t.Fatalf("POST without tls_required stored %+v", r)
		}
		body["tls_required"] = false
		if r := send(http.MethodPut, "/v1/admin/datasources/raw-json", body); r.TLSRequired {
			t.Fatalf("PUT with tls_required=false stored %+v", r)
		}
		delete(body, "tls_required")
		if r := send(http.MethodPut, "/v1/admin/datasources/raw-json", body); !r.TLSRequired {
			t.Fatalf("PUT without tls_required stored %+v", r)
		}
	})

	// A server that refuses TLS and asks for the password in clear: on the list (trapHost) with
	// tls_required=false, and off the list (attacker.example, put into the catalog behind the API's
	// back, as a node whose list shrank would hold it).
	for _, tc := range []struct {
		name, host, step, errPart string
		viaCatalog                bool
		server                    *pgtrap.Trap
	}{
		{"allowed host without TLS", trapHost, api.StepTLS, "refused TLS", false, trap},
		{"host off the list", "attacker.example", api.StepResolve, serverhost.ConfigKey, true, attacker},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRes(strings.ReplaceAll(tc.name, " ", "-"), tc.host)
			r.TLSRequired = false
			if tc.viaCatalog {
				if _, err := env.Node.Catalog().AddResource(ctx, r); err != nil {
					t.Fatal(err)
				}
			} else if _, err := admin.AddDatasource(ctx, r); err != nil {
				t.Fatal(err)
			}
			h, err := admin.HealthCheck(ctx, r.Name)
			if err != nil || h.State != api.HealthUnhealthy || h.FailedStep != tc.step || !strings.Contains(h.Error, tc.errPart) {
				t.Fatalf("health check: %v %+v, want unhealthy at %s with %q", err, h, tc.step, tc.errPart)
			}
			rs, err := env.Daemon.Connect(ctx, r.Name)
			if err != nil {
				t.Fatal(err)
			}
			_, err = pgconn.Connect(ctx, client.ConnString(rs))
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Severity != "FATAL" || pgErr.Code != "08001" {
				t.Fatalf("login: %v, want FATAL 08001", err)
			}
			if tc.viaCatalog && (!strings.Contains(pgErr.Message, serverhost.ConfigKey) || tc.server.Conns() != 0) {
				t.Fatalf("login to a host off the list: %q, %d connections to its server", pgErr.Message, tc.server.Conns())
			}
			if !tc.viaCatalog && !strings.Contains(pgErr.Message, "does not offer TLS") {
				t.Fatalf("login: %q, want the reason", pgErr.Message)
			}
			// An Entra ID access token is a JWT: base64 of '{"' starts every one.
			if got := tc.server.Received(); bytes.Contains(got, []byte("eyJ")) {
				t.Fatalf("an access token reached a server without TLS: %q", got)
			}
		})
	}
}

// TestConfigAllowedServerHosts: a config without the key gets the Azure defaults; an empty or
// malformed list is refused, naming the key, so that a node never starts without a list.
func TestConfigAllowedServerHosts(t *testing.T) {
	dir := t.TempDir()
	load := func(body string) (node.Config, error) {
		p := filepath.Join(dir, "config.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := node.LoadConfig(p)
		if err != nil {
			return c, err
		}
		return c, c.Validate()
	}
	c, err := load(`{"public_host":"node.example.com"}`)
	if err != nil || strings.Join(c.AllowedServerHosts, ",") != strings.Join(serverhost.Defaults, ",") {
		t.Fatalf("without the key: %v %v", c.AllowedServerHosts, err)
	}
	for _, bad := range []string{`[]`, `["*"]`, `["*.com"]`, `["10.0.0.0/8"]`, `["my host"]`} {
		if _, err := load(`{"public_host":"node.example.com","allowed_server_hosts":` + bad + `}`); err == nil || !strings.Contains(err.Error(), serverhost.ConfigKey) {
			t.Errorf("allowed_server_hosts %s: %v, want an error naming %s", bad, err, serverhost.ConfigKey)
		}
	}
	if c, err := load(`{"public_host":"node.example.com","allowed_server_hosts":["*.postgres.database.azure.com","db.corp.example","10.0.0.4"]}`); err != nil || len(c.AllowedServerHosts) != 3 {
		t.Fatalf("a valid list: %v %v", c.AllowedServerHosts, err)
	}
}
