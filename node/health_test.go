package node_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// TestHealth runs the node's health checks end to end: state at creation, on-demand checks through the
// control API, the check a new resource gets at once, diagnostics, the metrics endpoint and doctor.
// It uses identities of its own, so tokens MSAL cached for other tests' emulators do not matter.
func TestHealth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), NoResource: true, NodeConfig: func(c *node.Config) {
		c.MetricsListen = "127.0.0.1:0"
		c.HealthInterval = node.Duration(time.Hour) // only creation, change and on-demand checks here
		c.HealthStepTimeout = node.Duration(5 * time.Second)
	}})
	id := azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: "ferry-mi-health"}
	env.Emu.AddUserIdentity(id)
	if err := env.Emu.CreatePrincipal(ctx, "ferry-mi-health", id.ObjectID); err != nil {
		t.Fatal(err)
	}
	if err := env.Emu.CreateDatabase(ctx, "health", "ferry-mi-health"); err != nil {
		t.Fatal(err)
	}
	newRes := func(name, clientID string) resource.Resource {
		r := resource.New(name)
		r.Hostname, r.Database, r.Username, r.ManagedIdentityClientID = env.Emu.Hostname(), "health", "ferry-mi-health", clientID
		return r
	}
	apiC := env.Daemon.API()
	metricsURL := "http://" + env.Node.MetricsAddr().String()

	// Added behind the scheduler's back (no kick, hour-long interval): not checked yet.
	first := newRes("hc-first", id.ClientID)
	// A free loopback port: the default 10001 may be taken on a shared machine.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if first.PortOverride, err = resource.ParsePortOverride(strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Node.Catalog().AddResource(ctx, first); err != nil {
		t.Fatal(err)
	}
	h, err := apiC.Diagnostics(ctx, "hc-first")
	if err != nil || h.State != api.HealthUnhealthy || h.Checked || h.Label() != "unhealthy (not checked yet)" {
		t.Fatalf("at creation: %v %+v", err, h)
	}
	rs, err := apiC.Resources(ctx)
	if err != nil || len(rs) != 1 || rs[0].Health == nil || rs[0].Health.Label() != "unhealthy (not checked yet)" {
		t.Fatalf("resource list at creation: %v %+v", err, rs)
	}
	before := scrape(t, metricsURL)

	// On demand: healthy, every step recorded, and the metrics moved.
	h, err = apiC.HealthCheck(ctx, "hc-first")
	if err != nil || h.State != api.HealthHealthy || len(h.Steps) != 6 {
		t.Fatalf("healthcheck: %v %+v", err, h)
	}
	if h, _ := apiC.Diagnostics(ctx, "hc-first"); h.State != api.HealthHealthy || !h.Checked || len(h.Steps) != 6 {
		t.Fatalf("diagnostics after the check: %+v", h)
	}
	after := scrape(t, metricsURL)
	if d := after[`ferry_health_checks_total{resource="hc-first",result="healthy"}`] - before[`ferry_health_checks_total{resource="hc-first",result="healthy"}`]; d != 1 {
		t.Errorf("healthy checks of hc-first moved by %v, want 1", d)
	}
	if after[`ferry_token_requests_total{result="ok"}`] <= before[`ferry_token_requests_total{result="ok"}`] {
		t.Errorf("token requests did not move: %v -> %v", before[`ferry_token_requests_total{result="ok"}`], after[`ferry_token_requests_total{result="ok"}`])
	}
	if after[`ferry_resource_healthy{resource="hc-first"}`] != 1 {
		t.Errorf("ferry_resource_healthy for hc-first = %v", after[`ferry_resource_healthy{resource="hc-first"}`])
	}

	// Added through the API: checked at once, without waiting for the interval.
	unknown := uuid.NewString()
	if _, err := apiC.AddDatasource(ctx, newRes("hc-broken", unknown)); err != nil {
		t.Fatal(err)
	}
	waitChecked(t, apiC, "hc-broken")
	h, _ = apiC.Diagnostics(ctx, "hc-broken")
	wantHint := "the user-assigned identity " + unknown + " is not assigned to this VM: assign it (VM → Identity → User assigned)"
	if h.FailedStep != api.StepToken || h.Hint != wantHint {
		t.Errorf("hc-broken: %+v", h)
	}
	var se *api.StatusError
	if _, err := apiC.HealthCheck(ctx, "nope"); !errors.As(err, &se) || se.Status != 404 {
		t.Errorf("healthcheck of an unknown resource: %v", err)
	}
	all, err := apiC.HealthAll(ctx)
	if err != nil || len(all) != 2 || all[0].Resource != "hc-broken" || all[1].State != api.HealthHealthy {
		t.Errorf("health of all: %v %+v", err, all)
	}

	// Sessions and bytes: one psql-like session through the tunnel.
	before = scrape(t, metricsURL)
	rsConn, err := env.Daemon.Connect(ctx, "hc-first")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := pgconn.Connect(ctx, client.ConnString(rsConn))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Exec(ctx, "select 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	mid := scrape(t, metricsURL)
	if mid["ferry_active_sessions"] != before["ferry_active_sessions"]+1 {
		t.Errorf("active sessions %v -> %v", before["ferry_active_sessions"], mid["ferry_active_sessions"])
	}
	pc.Close(ctx)
	for _, k := range []string{`ferry_proxied_bytes_total{direction="from_client"}`, `ferry_proxied_bytes_total{direction="to_client"}`, "ferry_sessions_total"} {
		if mid[k] <= before[k] {
			t.Errorf("%s did not move: %v -> %v", k, before[k], mid[k])
		}
	}
	for _, p := range []string{"/livez", "/readyz"} {
		resp, err := http.Get(metricsURL + p)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %v %v", p, err, resp)
		} else {
			resp.Body.Close()
		}
	}

	t.Run("doctor", func(t *testing.T) {
		cfg, err := node.LoadConfig(filepath.Join(env.NodeDir, node.ConfigFile))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		ok, err := node.Doctor(ctx, &out, env.NodeDir, cfg, node.DoctorOptions{Resource: "hc-first"})
		if err != nil || !ok {
			t.Fatalf("doctor hc-first: ok=%v err=%v\n%s", ok, err, out.String())
		}
		for _, s := range []string{"✓ resolve", "✓ tcp", "✓ tls", "✓ token", "✓ login", "✓ query", "hc-first: healthy"} {
			if !strings.Contains(out.String(), s) {
				t.Errorf("doctor hc-first output lacks %q:\n%s", s, out.String())
			}
		}
		out.Reset()
		ok, err = node.Doctor(ctx, &out, env.NodeDir, cfg, node.DoctorOptions{})
		if err != nil || ok {
			t.Fatalf("doctor of everything: ok=%v err=%v (hc-broken must fail)\n%s", ok, err, out.String())
		}
		for _, s := range []string{"✓ catalog", "✓ wireguard", "✓ imds", "✓ clock", "hc-first: healthy",
			"✗ token", "      fix:   " + wantHint, "hc-broken: unhealthy (token)"} {
			if !strings.Contains(out.String(), s) {
				t.Errorf("doctor output lacks %q:\n%s", s, out.String())
			}
		}
		// The steps show a token error in one line; --verbose (DoctorOptions.Log) gives the operator
		// the full text as well (azidentity's dump: the request, IMDS's answer, the troubleshooting
		// link), which doctor otherwise dropped: its token source had no log.
		out.Reset()
		var full bytes.Buffer
		if ok, err := node.Doctor(ctx, &out, env.NodeDir, cfg, node.DoctorOptions{Resource: "hc-broken", Log: &full}); err != nil || ok {
			t.Fatalf("doctor hc-broken: ok=%v err=%v\n%s", ok, err, out.String())
		}
		if strings.Contains(out.String(), "RESPONSE 400") || !strings.Contains(out.String(), "✗ token") {
			t.Errorf("doctor's steps do not show the token error in one line:\n%s", out.String())
		}
		if !strings.Contains(full.String(), "RESPONSE 400") || !strings.Contains(full.String(), unknown) {
			t.Errorf("doctor's log lacks the full token error:\n%s", full.String())
		}
		// Without IMDS the clock cannot be checked: that gets a neutral mark, never a tick.
		noIMDS := cfg
		noIMDS.IMDSEndpoint = "http://" + closedLoopbackPort(t)
		out.Reset()
		ok, err = node.Doctor(ctx, &out, env.NodeDir, noIMDS, node.DoctorOptions{StepTimeout: 3 * time.Second})
		if err != nil || ok || !strings.Contains(out.String(), "✗ imds") || !regexp.MustCompile(`– clock +not checked`).MatchString(out.String()) || strings.Contains(out.String(), "✓ clock") {
			t.Errorf("doctor without IMDS: ok=%v err=%v; want ✗ imds and a neutral mark on the clock:\n%s", ok, err, out.String())
		}
		if _, err := node.Doctor(ctx, io.Discard, env.NodeDir, cfg, node.DoctorOptions{Resource: "nope"}); err == nil || !strings.Contains(err.Error(), `resource "nope" does not exist`) {
			t.Error("doctor of an unknown resource did not fail")
		}
	})
}

func waitChecked(t *testing.T, c *api.Client, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		h, err := c.Diagnostics(context.Background(), name)
		if err == nil && h.Checked {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not checked within 30s: %v %+v", name, err, h)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scrape reads the metrics endpoint into "name{labels}" -> value (Prometheus text format).
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatal(fmt.Errorf("metrics line %q: %w", line, err))
		}
		m[line[:i]] = v
	}
	return m
}

// closedLoopbackPort is a loopback TCP address nothing listens on.
func closedLoopbackPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
