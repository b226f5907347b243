package revoke_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/cli"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// env is one installation with an engineer whose role "developers" is granted tag:env=dev.
type env struct {
	*demo.Env
	admin   *api.Client
	dev     resource.Resource // azure-pg-mi-dev, env=dev
	prodVN  string            // azure-pg-mi-prod's address inside the tunnel
	eng     *client.Daemon
	engDirs client.Dirs
}

func startEnv(t *testing.T) *env {
	t.Helper()
	testenv.NeedBins(t, "psql")
	d := testenv.Start(t, demo.Options{LoopbackIP: demo.RandomLoopbackIP()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := &env{Env: d, admin: d.Daemon.API()}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	r := resource.New("azure-pg-mi-dev")
	r.Hostname = d.Emu.Hostname()
	r.Database = demo.Database
	r.Username = demo.Role
	r.ManagedIdentityClientID = demo.ClientID
	r.BindInterface = demo.RandomLoopbackIP()
	r.Tags = map[string]string{"env": "dev"}
	var err error
	e.dev, err = e.admin.AddDatasource(ctx, r)
	must(err)
	all, err := e.admin.Datasources(ctx)
	must(err)
	for _, x := range all.Datasources {
		if x.Name == demo.ResourceName {
			e.prodVN = x.VNAddress
		}
	}
	must(e.admin.AddRole(ctx, "developers"))
	must(e.admin.Grant(ctx, "developers", "tag:env=dev"))
	must(e.admin.AddUser(ctx, api.NewUser{Name: "engineer", Roles: []string{"developers"}}))
	tok, err := e.admin.EnrollUser(ctx, "engineer")
	must(err)
	e.engDirs = client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	_, err = client.Login(ctx, e.engDirs, tok.Token, "eng-laptop")
	must(err)
	e.eng, err = client.StartDaemon(ctx, e.engDirs, nil)
	must(err)
	t.Cleanup(func() { e.eng.Close() })

	// The probe table, in the database both resources reach.
	if out, err := psql(t, client.ConnString(d.Resource), "-c", "CREATE TABLE revoke_probe (id int)"); err != nil {
		t.Fatalf("create probe table: %v %s", err, out)
	}
	return e
}

// TestRevocationEndsWhatRuns runs the checks in order against one installation.
func TestRevocationEndsWhatRuns(t *testing.T) {
	e := startEnv(t)
	t.Run("CancelRequest from a user not granted the resource", func(t *testing.T) { testForeignCancel(t, e) })
	t.Run("revocation stops the running statement", func(t *testing.T) { testRevokeStopsStatement(t, e) })
	t.Run("suspension ends sessions and the client says so", func(t *testing.T) { testSuspension(t, e) })
}

// testForeignCancel: the engineer, not granted azure-pg-mi-prod, sends a CancelRequest with the key
// of the admin's session on it through the tunnel: it is refused and recorded, and the admin's
// statement runs on; the admin's own CancelRequest then cancels it.
func testForeignCancel(t *testing.T, e *env) {
	ctx := context.Background()
	c, err := pgconn.Connect(ctx, client.ConnString(e.Resource)+" connect_timeout=20")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "select pg_sleep(30) /* foreign cancel */").ReadAll()
		done <- err
	}()
	waitActive(t, e, "select pg_sleep(30) /* foreign cancel */")

	conn, err := dialTimeout(e.eng, e.prodVN)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := (&pgproto3.CancelRequest{ProcessID: c.PID(), SecretKey: c.SecretKey()}).Encode(nil)
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	io.Copy(io.Discard, conn)
	conn.Close()

	var rec api.Connection
	if !waitFor(15*time.Second, func() bool {
		conns, err := e.admin.Connections(ctx, 20)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if c.User == "engineer" && c.Resource == demo.ResourceName && strings.HasPrefix(c.Error, "CancelRequest refused") {
				rec = c
				return true
			}
		}
		return false
	}) {
		t.Fatal("no connection record of the engineer's refused CancelRequest on azure-pg-mi-prod")
	}
	if rec.Outcome != "denied" || !strings.Contains(rec.Error, "not granted") {
		t.Fatalf("refused CancelRequest record = %+v, want outcome denied saying the user is not granted the resource", rec)
	}
	select {
	case err := <-done:
		t.Fatalf("the admin's statement ended (%v) after the engineer's CancelRequest", err)
	case <-time.After(time.Second):
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := c.CancelRequest(cctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("the admin's statement ended with %v, want 57014 after the admin's own CancelRequest", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the admin's own CancelRequest did not cancel the statement within 15s")
	}
}

// testRevokeStopsStatement: revoking the grant while psql runs a statement followed by an insert
// (one simple Query) gives psql the FATAL, the insert never commits, even when the statement catches
// the cancel, and the server backend goes away.
func testRevokeStopsStatement(t *testing.T, e *env) {
	for _, sql := range []string{
		"select pg_sleep(8); insert into revoke_probe values (1)",
		"do $$ begin perform pg_sleep(8); exception when query_canceled then perform pg_sleep(1); end $$; insert into revoke_probe values (2)",
	} {
		revokeDuring(t, e, sql)
	}
}

func revokeDuring(t *testing.T, e *env, sql string) {
	ctx := context.Background()
	var st client.ResourceStatus
	if !waitFor(15*time.Second, func() bool {
		var err error
		st, err = e.eng.Connect(ctx, e.dev.Name)
		return err == nil
	}) {
		t.Fatal("the engineer cannot connect azure-pg-mi-dev")
	}
	pctx, cancel := context.WithTimeout(ctx, 25*time.Second)
	defer cancel()
	sleeper := exec.CommandContext(pctx, "psql", client.ConnString(st), "-X", "-c", sql)
	var out bytes.Buffer
	sleeper.Stdout, sleeper.Stderr = &out, &out
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	pid := waitActive(t, e, sql)
	revokedAt := time.Now()
	if err := e.admin.Revoke(ctx, "developers", "tag:env=dev"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.admin.Grant(ctx, "developers", "tag:env=dev"); err != nil {
			t.Error(err)
		}
	}()
	err := sleeper.Wait()
	t.Logf("psql ended %v after the revocation", time.Since(revokedAt).Round(time.Millisecond))
	if pctx.Err() != nil || err == nil || !strings.Contains(out.String(), "FATAL") || !strings.Contains(out.String(), "revoked") {
		t.Fatalf("psql after the revocation: err=%v out=%q; want a FATAL about the revocation", err, out.String())
	}
	waitGone(t, e, pid, 20*time.Second)
	t.Logf("server backend gone %v after the revocation", time.Since(revokedAt).Round(time.Millisecond))
	if rec := endedRecord(t, e, e.dev.Name, pid); rec.Outcome != audit.OutcomeRevoked {
		t.Errorf("connection record of the revoked session = %+v; want outcome %q", rec, audit.OutcomeRevoked)
	}
	time.Sleep(2 * time.Second) // what the statement would still do after a caught cancel
	if n := superuserQuery(t, e, demo.Database, "SELECT count(*) FROM revoke_probe"); n != "0" {
		t.Fatalf("the insert committed after the revocation of %q: %s rows", sql, n)
	}
}

// endedRecord waits for the ended connection record of the engineer's session with server pid.
func endedRecord(t *testing.T, e *env, res string, pid uint32) api.Connection {
	t.Helper()
	var rec api.Connection
	if !waitFor(10*time.Second, func() bool {
		conns, err := e.admin.Connections(context.Background(), 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if c.User == "engineer" && c.Resource == res && c.UpstreamPID == pid && c.Outcome != "" {
				rec = c
				return true
			}
		}
		return false
	}) {
		t.Fatal("no ended connection record of the session")
	}
	return rec
}

// testSuspension: suspending the engineer ends the open session within seconds with a FATAL saying
// so, the connection record says why, and the engineer's client status (what `ferry status` and the
// app show) says "suspended by an administrator", not "unreachable". The device status query that
// tells it answers nobody who does not hold the device key.
func testSuspension(t *testing.T, e *env) {
	ctx := context.Background()
	var st client.ResourceStatus
	if !waitFor(15*time.Second, func() bool {
		var err error
		st, err = e.eng.Connect(ctx, e.dev.Name)
		return err == nil
	}) {
		t.Fatal("the engineer cannot connect azure-pg-mi-dev again after the new grant")
	}
	pctx, cancel := context.WithTimeout(ctx, 25*time.Second)
	defer cancel()
	sleeper := exec.CommandContext(pctx, "psql", client.ConnString(st), "-X", "-c", "select pg_sleep(60) /* suspension */")
	var out bytes.Buffer
	sleeper.Stdout, sleeper.Stderr = &out, &out
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	pid := waitActive(t, e, "select pg_sleep(60) /* suspension */")
	suspendedAt := time.Now()
	if err := e.admin.SuspendUser(ctx, "engineer", true); err != nil {
		t.Fatal(err)
	}
	err := sleeper.Wait()
	t.Logf("psql ended %v after the suspension", time.Since(suspendedAt).Round(time.Millisecond))
	if pctx.Err() != nil || err == nil || !strings.Contains(out.String(), "FATAL") || !strings.Contains(out.String(), "suspended") {
		t.Fatalf("psql after the suspension: err=%v ctx=%v out=%q; want a FATAL saying the user was suspended", err, pctx.Err(), out.String())
	}
	waitGone(t, e, pid, 20*time.Second)

	var rec api.Connection
	if !waitFor(10*time.Second, func() bool {
		conns, err := e.admin.Connections(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if c.User == "engineer" && c.Resource == e.dev.Name && c.UpstreamPID == pid && c.Outcome != "" {
				rec = c
				return true
			}
		}
		return false
	}) {
		t.Fatal("no ended connection record of the suspended session")
	}
	if !strings.Contains(rec.Error, "suspended") || rec.Outcome != audit.OutcomeSuspended {
		t.Fatalf("connection record of the suspended session = %+v; want its error to say the user was suspended", rec)
	}

	var status client.Status
	if !waitFor(20*time.Second, func() bool {
		status, err = client.NewControl(e.engDirs).Status(ctx)
		return err == nil && status.Suspended
	}) {
		t.Fatalf("engineer's status = %+v, %v; want suspended", status, err)
	}
	if status.NodeReachable || !strings.Contains(status.NodeError, "suspended by an administrator") {
		t.Fatalf("engineer's status = %+v; want it to say suspended by an administrator", status)
	}
	t.Setenv(client.EnvConfigDir, e.engDirs.Config)
	t.Setenv(client.EnvRuntimeDir, e.engDirs.Runtime)
	root := cli.NewRoot(nil)
	var cliOut bytes.Buffer
	root.SetOut(&cliOut)
	root.SetErr(&cliOut)
	root.SetArgs([]string{"status"})
	// It exits non-zero (the error is what ferry prints on stderr) and does not claim "unreachable".
	if err := root.ExecuteContext(ctx); err == nil || !strings.Contains(err.Error(), "suspended by an administrator") || strings.Contains(err.Error()+cliOut.String(), "unreachable") {
		t.Fatalf("ferry status as the suspended engineer: err=%v out=%q; want it to say suspended by an administrator", err, cliOut.String())
	}

	// The query without the device key: the same 401 for the engineer's key and anyone's, naming nothing.
	state, err := client.LoadState(e.engDirs)
	if err != nil {
		t.Fatal(err)
	}
	engKey, err := tunnel.ParseKey(state.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	other, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for _, pub := range []tunnel.Key{engKey.PublicKey(), other.PublicKey()} {
		code, body := postDeviceStatus(t, state.NodeURL, api.DeviceStatusRequest{PublicKey: pub.String(), Time: time.Now().Unix(), Nonce: strings.Repeat("ab", 16), MAC: strings.Repeat("00", 32)})
		if code != http.StatusUnauthorized || strings.Contains(body, "suspend") || strings.Contains(body, "engineer") {
			t.Fatalf("device status query without the key: %d %q; want 401 naming nothing", code, body)
		}
		bodies = append(bodies, body)
	}
	if bodies[0] != bodies[1] {
		t.Fatalf("unauthenticated answers differ by key: %q vs %q", bodies[0], bodies[1])
	}
	// With the engineer's key, a replayed request under another nonce's answer would not verify:
	// QueryDeviceStatus checks the answer's MAC; here it simply works.
	ds, err := api.QueryDeviceStatus(ctx, state.NodeURL, state.NodeCertSHA256, engKey, mustKey(t, state.NodePublicKey))
	if err != nil || ds.Status != api.DeviceSuspended || ds.User != "engineer" {
		t.Fatalf("device status with the engineer's key = %+v, %v; want suspended", ds, err)
	}

	// Reinstated: the client works again.
	if err := e.admin.SuspendUser(ctx, "engineer", false); err != nil {
		t.Fatal(err)
	}
	if !waitFor(30*time.Second, func() bool {
		status, err = client.NewControl(e.engDirs).Status(ctx)
		return err == nil && status.NodeReachable && !status.Suspended
	}) {
		t.Fatalf("engineer's status after reinstatement = %+v, %v", status, err)
	}
}

func mustKey(t *testing.T, s string) tunnel.Key {
	t.Helper()
	k, err := tunnel.ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// postDeviceStatus posts req to the enrollment endpoint without any pin (as anyone could) and
// returns the status code and body.
func postDeviceStatus(t *testing.T, nodeURL string, req api.DeviceStatusRequest) (int, string) {
	t.Helper()
	b, _ := json.Marshal(req)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Post(strings.TrimSuffix(nodeURL, "/")+"/v1/device-status", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func dialTimeout(d *client.Daemon, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.Dial(ctx, addr)
}

func psql(t *testing.T, conn string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "psql", append([]string{conn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"}, args...)...).CombinedOutput()
	return string(out), err
}

// superuserQuery runs sql as the emulator's superuser in database db and returns the first value.
func superuserQuery(t *testing.T, e *env, db, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, e.Emu.SuperuserConnString()+" dbname="+db)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return ""
	}
	return string(res[0].Rows[0][0])
}

// waitActive waits until a backend runs query sql and returns its pid.
func waitActive(t *testing.T, e *env, sql string) uint32 {
	t.Helper()
	var pid string
	if !waitFor(15*time.Second, func() bool {
		pid = superuserQuery(t, e, "postgres", "SELECT coalesce(max(pid)::text, '') FROM pg_stat_activity WHERE state = 'active' AND query = '"+strings.ReplaceAll(sql, "'", "''")+"'")
		return pid != ""
	}) {
		t.Fatalf("no backend runs %q after 15s", sql)
	}
	n, err := strconv.Atoi(pid)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(n)
}

// waitGone waits, at most limit, until backend pid has left pg_stat_activity.
func waitGone(t *testing.T, e *env, pid uint32, limit time.Duration) {
	t.Helper()
	if !waitFor(limit, func() bool {
		return superuserQuery(t, e, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE pid = "+strconv.Itoa(int(pid))) == "0"
	}) {
		t.Fatalf("server backend %d still in pg_stat_activity %v later", pid, limit)
	}
}

// waitFor polls cond every 100 ms until it holds or limit has passed, and says whether it held.
func waitFor(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}
