package outage_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
)

// outageSeconds is how long the catalog database is down (the 30 s).
const outageSeconds = 30

// TestCatalogOutage stops the fleet's catalog PostgreSQL for 30 s while pgbench (-c 4, -S) runs
// through each of two nodes (one client per node): no transaction of the open sessions fails; a
// known device logs in anew through each node during the outage; an admin write gets 503 saying
// the catalog is unreachable while the caller's resource list still answers (from the cache);
// /readyz, the metrics and doctor say the catalog is unreachable and how long, and the audit spool
// fills; after recovery the spools drain and the audit holds every statement pgbench ran exactly
// once.
func TestCatalogOutage(t *testing.T) {
	testenv.NeedBins(t, "pgbench", "psql")
	env := testenv.StartParallel(t, demo.Options{LoopbackIP: demo.RandomLoopbackIP(), Nodes: 2,
		NodeConfig: func(c *node.Config) { c.MetricsListen = "127.0.0.1:0" }})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	n1, n2 := env.Nodes[0], env.Nodes[1]

	// A second client, enrolled with (and so using) the second node, reaching the resource through
	// its tunnel.
	d2 := loginTo(t, ctx, n2, node.DefaultAdmin)
	conn1 := client.ConnString(env.Resource)
	conn2 := connString(bridge(t, d2, env.Resource.VNAddress))

	if out, err := run(ctx, "pgbench", "-i", "-s", "1", "-q", conn1); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}

	type result struct {
		out string
		err error
	}
	results := make([]chan result, 2)
	for i, conn := range []string{conn1, conn2} {
		results[i] = make(chan result, 1)
		go func() {
			out, err := run(ctx, "pgbench", "-c", "4", "-j", "2", "-S", "-n", "-T", strconv.Itoa(outageSeconds+30), conn)
			results[i] <- result{out, err}
		}()
	}
	for i, n := range env.Nodes {
		waitFor(t, fmt.Sprintf("pgbench's 4 sessions through node %d", i+1), func() bool {
			return metric(t, n, "ferry_active_sessions") >= 4
		})
	}

	tok, err := n2.EnrollToken(ctx, node.DefaultAdmin) // redeemed during the outage
	if err != nil {
		t.Fatal(err)
	}
	if err := env.CatalogDB.StopPostgres(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	restarted := false
	defer func() {
		if !restarted {
			_ = env.CatalogDB.StartPostgres(context.Background())
		}
	}()
	for i, n := range env.Nodes {
		waitFor(t, fmt.Sprintf("node %d to see the catalog unreachable", i+1), func() bool { return !n.CatalogStatus().Reachable })
	}

	t.Run("new logins of known devices", func(t *testing.T) {
		for i, conn := range []string{conn1, conn2} {
			out, err := psql(ctx, conn, "-c", "SELECT 'logged in during the outage'")
			if err != nil || strings.TrimSpace(out) != "logged in during the outage" {
				t.Errorf("psql through node %d during the outage: %q, %v", i+1, out, err)
			}
		}
	})
	t.Run("admin write gets 503, resource list answers", func(t *testing.T) {
		err := env.Daemon.API().AddUser(ctx, api.NewUser{Name: "during-outage"})
		var se *api.StatusError
		if !errors.As(err, &se) || se.Status != http.StatusServiceUnavailable ||
			!strings.HasPrefix(se.Message, "the catalog is unreachable") || !strings.HasSuffix(se.Message, "; try again when it is back") {
			t.Errorf("add a user during the outage: %#v (%v); want 503 the catalog is unreachable: …; try again when it is back", se, err)
		}
		dir := t.TempDir()
		_, err = client.Login(ctx, client.Dirs{Config: filepath.Join(dir, "c"), Runtime: filepath.Join(dir, "r")}, tok, "during-outage")
		if err == nil || !strings.Contains(err.Error(), "the catalog is unreachable") || !strings.Contains(err.Error(), "try again when it is back") {
			t.Errorf("enroll during the outage: %v; want the catalog is unreachable: …; try again when it is back", err)
		}
		rs, err := d2.API().Resources(ctx)
		if err != nil || len(rs) != 1 || rs[0].Name != demo.ResourceName {
			t.Errorf("resources through node 2 during the outage: %+v, %v", rs, err)
		}
	})
	t.Run("health says so", func(t *testing.T) {
		waitFor(t, "node 1's audit spool to hold records", func() bool { return n1.Audit().Stats().SpoolDepth > 0 })
		code, body := get(t, "http://"+n1.MetricsAddr().String()+"/readyz")
		if code != http.StatusServiceUnavailable || !regexp.MustCompile(`catalog: unreachable for \d+s \(since `).MatchString(body) ||
			!strings.Contains(body, "audit spool: ") {
			t.Errorf("/readyz during the outage: %d %q", code, body)
		}
		if metric(t, n1, "ferry_catalog_reachable") != 0 || metric(t, n1, "ferry_catalog_unreachable_seconds") <= 0 {
			t.Errorf("metrics during the outage: reachable %v, unreachable seconds %v",
				metric(t, n1, "ferry_catalog_reachable"), metric(t, n1, "ferry_catalog_unreachable_seconds"))
		}
		cfg, err := node.LoadConfig(filepath.Join(env.NodeDirs[0], node.ConfigFile))
		if err != nil {
			t.Fatal(err)
		}
		cfg.MetricsListen = n1.MetricsAddr().String() // the running node's bound port
		var out bytes.Buffer
		ok, err := node.Doctor(ctx, &out, env.NodeDirs[0], cfg, node.DoctorOptions{StepTimeout: 10 * time.Second})
		if ok || err != nil || !regexp.MustCompile(`✗ catalog\s+unreachable`).MatchString(out.String()) ||
			!regexp.MustCompile(`catalog: unreachable for \d+s`).MatchString(out.String()) ||
			!regexp.MustCompile(`audit spool: [1-9]\d* records waiting`).MatchString(out.String()) {
			t.Errorf("doctor during the outage: ok=%v err=%v\n%s", ok, err, out.String())
		}
	})

	t.Run("a node does not start", func(t *testing.T) {
		// A copy of node 2's state (keys, certificate, config), started while the catalog is down.
		dir := t.TempDir()
		ents, err := os.ReadDir(env.NodeDirs[1])
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), "audit-spool") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(env.NodeDirs[1], e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		cfg, err := node.LoadConfig(filepath.Join(dir, node.ConfigFile))
		if err != nil {
			t.Fatal(err)
		}
		cfg.MetricsListen = ""
		n, err := node.Start(ctx, dir, cfg, testLogger())
		if err == nil {
			n.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "the catalog is unreachable; a node does not start without it") {
			t.Errorf("start a node during the outage: %v", err)
		}
	})

	if d := outageSeconds*time.Second - time.Since(stopped); d > 0 {
		time.Sleep(d) // the 30 s outage
	}
	if err := env.CatalogDB.StartPostgres(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true

	processed := 0
	for i := range results {
		var r result
		select {
		case r = <-results[i]:
		case <-ctx.Done():
			t.Fatal("pgbench did not end")
		}
		if r.err != nil {
			t.Fatalf("pgbench through node %d: %v\n%s", i+1, r.err, r.out)
		}
		failed := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(r.out)
		done := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(r.out)
		if failed == nil || done == nil || failed[1] != "0" {
			t.Fatalf("pgbench through node %d: failed transactions %v\n%s", i+1, failed, r.out)
		}
		n, _ := strconv.Atoi(done[1])
		processed += n
		t.Logf("pgbench through node %d: %s transactions, 0 failed", i+1, done[1])
	}

	for i, n := range env.Nodes {
		// Every record pgbench's statements made is written (to the database or the spool) ...
		fctx, fcancel := context.WithTimeout(ctx, time.Minute)
		_ = n.Audit().Flush(fctx) // returns an error of the outage, if any
		fcancel()
		// ... and the spool shipped.
		waitFor(t, fmt.Sprintf("node %d to see the catalog again and ship its spool", i+1), func() bool {
			return n.CatalogStatus().Reachable && n.Audit().Stats().SpoolDepth == 0
		})
		if st := n.Audit().Stats(); st.Spooled == 0 || st.Shipped != st.Spooled {
			t.Errorf("node %d's audit spool: %+v; want records spooled during the outage and all shipped", i+1, st)
		}
	}
	if code, body := get(t, "http://"+n1.MetricsAddr().String()+"/readyz"); code != http.StatusOK || !strings.Contains(body, "catalog: reachable") {
		t.Errorf("/readyz after the outage: %d %q", code, body)
	}

	var total, distinct int
	catalogQuery(t, ctx, env, `SELECT count(*), count(DISTINCT record_id) FROM audit_queries WHERE sql LIKE 'SELECT abalance FROM pgbench_accounts%'`, &total, &distinct)
	if total != processed || distinct != total {
		t.Fatalf("audit holds %d pgbench statements (%d distinct record IDs); pgbench ran %d", total, distinct, processed)
	}
	t.Logf("audit: %d pgbench statements, each once", total)
	var devices, unused int
	catalogQuery(t, ctx, env, `SELECT (SELECT count(*) FROM devices WHERE name = 'during-outage'), 0`, &devices, &unused)
	if devices != 0 {
		t.Errorf("the enrollment refused during the outage stored %d devices", devices)
	}
}

// TestRevokeDuringPartitionAppliesAfter: a node cut off from its catalog keeps an engineer's open
// session (and lets the device log in anew) from its cache; a grant revoked meanwhile, directly in
// the catalog database, ends that session with FATAL 57P01 within 5 s of the node reaching the
// catalog again.
func TestRevokeDuringPartitionAppliesAfter(t *testing.T) {
	var cut *cutter
	env := testenv.StartParallel(t, demo.Options{LoopbackIP: demo.RandomLoopbackIP(), Nodes: 2, Logger: testLogger(),
		NodeConfig: func(c *node.Config) {
			// The nodes reach the catalog through a link the test can cut.
			u, err := url.Parse(c.CatalogURL)
			if err != nil {
				t.Fatal(err)
			}
			host := strings.ToLower(u.Hostname())
			cut = newCutter(t, c.HostOverrides[host])
			c.HostOverrides[host] = cut.addr()
		}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := env.Daemon.API()
	for _, step := range []func() error{
		func() error { return admin.AddUser(ctx, api.NewUser{Name: "eng"}) },
		func() error { return admin.AddRole(ctx, "readers") },
		func() error { return admin.Grant(ctx, "readers", demo.ResourceName) },
		func() error { return admin.AssignRole(ctx, "readers", "eng") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	eng := loginTo(t, ctx, env.Node, "eng")
	enrolled := time.Now()
	// A known device is one in the node's snapshot of the catalog (read every second).
	waitFor(t, "a snapshot of the catalog with the engineer's device", func() bool { return env.Node.CatalogStatus().SnapshotAt.After(enrolled) })
	addr := bridge(t, eng, env.Resource.VNAddress)
	c, err := pgconn.Connect(ctx, connString(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	query := func() error {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := c.Exec(qctx, "SELECT 1").ReadAll()
		return err
	}
	if err := query(); err != nil {
		t.Fatal(err)
	}

	cut.set(true)
	waitFor(t, "the node to see the catalog unreachable", func() bool { return !env.Node.CatalogStatus().Reachable })
	catalogQuery(t, ctx, env, `WITH d AS (DELETE FROM role_grants WHERE role = 'readers' RETURNING 1) SELECT count(*), 0 FROM d`, new(int), new(int))
	// The node cannot see the revocation: the session goes on, and the device logs in anew.
	for range 3 {
		if err := query(); err != nil {
			t.Fatalf("the open session during the partition: %v", err)
		}
		time.Sleep(time.Second)
	}
	if out, err := psql(ctx, connString(addr), "-c", "SELECT 'cached'"); err != nil || strings.TrimSpace(out) != "cached" {
		t.Fatalf("a new login during the partition: %q, %v", out, err)
	}

	cut.set(false)
	healed := time.Now()
	deadline, stop := context.WithDeadline(ctx, healed.Add(5*time.Second))
	defer stop()
	for {
		_, err := c.Exec(deadline, "SELECT 1").ReadAll()
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			if pe.Code != "57P01" || !strings.Contains(pe.Message, "revoked") {
				t.Fatalf("the session ended with %v; want 57P01 revoked", pe)
			}
			t.Logf("the revoked session ended %s after the catalog came back", time.Since(healed).Round(10*time.Millisecond))
			return
		}
		if err != nil {
			t.Fatalf("the session within 5 s of the catalog's return: %v; want FATAL 57P01 revoked", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loginTo enrolls a new device of user with node n and starts its client daemon.
func loginTo(t *testing.T, ctx context.Context, n *node.Node, user string) *client.Daemon {
	t.Helper()
	tok, err := n.EnrollToken(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dirs := client.Dirs{Config: filepath.Join(dir, "client"), Runtime: filepath.Join(dir, "run")}
	if _, err := client.Login(ctx, dirs, tok, user+"-device"); err != nil {
		t.Fatal(err)
	}
	lg := testLogger()
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	d, err := client.StartDaemon(ctx, dirs, lg.With("component", "client-"+user))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// bridge listens on a loopback port and carries each connection through d's tunnel to vnAddr.
func bridge(t *testing.T, d *client.Daemon, vnAddr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				up, err := d.Dial(ctx, vnAddr)
				cancel()
				if err != nil {
					return
				}
				defer up.Close()
				go func() { io.Copy(up, c); up.Close() }()
				io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}

// cutter is a TCP link to the catalog database that the test can cut (a network partition): cut,
// it closes its open connections and refuses new ones.
type cutter struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	open   map[net.Conn]bool
}

func newCutter(t *testing.T, target string) *cutter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := &cutter{ln: ln, target: target, open: map[net.Conn]bool{}}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); k.set(true); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				k.carry(c)
			}()
		}
	}()
	return k
}

func (k *cutter) addr() string { return k.ln.Addr().String() }

func (k *cutter) track(cs ...net.Conn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down {
		return false
	}
	for _, c := range cs {
		k.open[c] = true
	}
	return true
}

func (k *cutter) carry(c net.Conn) {
	defer c.Close()
	if !k.track() {
		return
	}
	up, err := net.DialTimeout("tcp", k.target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	if !k.track(c, up) {
		return
	}
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
}

// set cuts (true) or restores (false) the link.
func (k *cutter) set(down bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.down = down
	if down {
		for c := range k.open {
			c.Close()
		}
		clear(k.open)
	}
}

// catalogQuery runs q, which returns one row of two integers, on the catalog database as its
// server's superuser.
func catalogQuery(t *testing.T, ctx context.Context, env *demo.Env, q string, a, b *int) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(env.CatalogDB.SuperuserConnString())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = demo.CatalogDatabase
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, q).ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		t.Fatalf("%s: %v", q, err)
	}
	*a, _ = strconv.Atoi(string(res[0].Rows[0][0]))
	*b, _ = strconv.Atoi(string(res[0].Rows[0][1]))
}

func connString(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return "host=" + host + " port=" + port + " dbname=" + demo.Database + " user=" + demo.Role + " sslmode=disable"
}

// run runs a PostgreSQL client program, returning its output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=30")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func psql(ctx context.Context, conn string, args ...string) (string, error) {
	return run(ctx, "psql", append([]string{conn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"}, args...)...)
}

// get fetches url, returning the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric reads the value of an unlabelled metric from node n's metrics endpoint.
func metric(t *testing.T, n *node.Node, name string) float64 {
	t.Helper()
	_, body := get(t, "http://"+n.MetricsAddr().String()+"/metrics")
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// waitFor polls cond until it holds, failing t after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testLogger is the installation's logger: discarded unless FERRY_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("FERRY_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
