package pgproxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// sessionProxy is one Proxy with a loopback listener per Ferry user, as the tunnel gives each
// connection the user of its peer; each session runs under a context the test can end with a cause,
// as the node's reconcile loop does.
type sessionProxy struct {
	p     *Proxy
	audit *audit.Log
	t     Target

	mu      sync.Mutex
	ends    []context.CancelCauseFunc
	wg      sync.WaitGroup
	running atomic.Int32 // sessions whose Serve has not returned
}

func startSessionProxy(t *testing.T, target Target, tokens TokenSource) *sessionProxy {
	t.Helper()
	log, _, _ := openTestAudit(t)
	sp := &sessionProxy{p: New(Config{Tokens: tokens, Audit: testAudit{log}, Logger: slog.New(slog.DiscardHandler)}), audit: log, t: target}
	t.Cleanup(func() {
		sp.endAll(nil)
		sp.wg.Wait()
	})
	return sp
}

// listen serves the connections of one tunnel peer (s) on a new loopback port and returns its port.
func (sp *sessionProxy) listen(t *testing.T, s Session) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	acceptLoop(l, &sp.wg, func(c net.Conn) func() {
		ctx, end := context.WithCancelCause(context.Background())
		sp.mu.Lock()
		sp.ends = append(sp.ends, end)
		sp.mu.Unlock()
		sp.running.Add(1)
		return func() {
			defer sp.running.Add(-1)
			defer end(nil)
			s := s
			s.ClientAddr = c.RemoteAddr().String()
			sp.p.Serve(ctx, c, sp.t, s)
		}
	})
	return l.Addr().(*net.TCPAddr).Port
}

// endAll ends every session with cause, as a revocation does.
func (sp *sessionProxy) endAll(cause error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for _, end := range sp.ends {
		end(cause)
	}
}

func connPort(port int) string {
	return "host=127.0.0.1 port=" + strconv.Itoa(port) + " user=whoever sslmode=disable dbname=appdb connect_timeout=10"
}

// psqlAdminDB runs SQL as the superuser over the Unix socket in database db.
func (pg *testPG) psqlAdminDB(tb testing.TB, db, sql string) string {
	tb.Helper()
	out, err := exec.Command("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", pg.sockDir, "-p", strconv.Itoa(pg.port), "-U", "postgres", "-d", db, "-c", sql).CombinedOutput()
	if err != nil {
		tb.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return string(out)
}

// activity returns the state of the backend pid in pg_stat_activity ("" when it has gone).
func (pg *testPG) activity(tb testing.TB, pid uint32) string {
	return strings.TrimSpace(pg.psqlAdmin(tb, "SELECT coalesce(max(state), '') FROM pg_stat_activity WHERE pid = "+strconv.Itoa(int(pid))))
}

// waitFor polls cond every 50 ms until it holds or limit has passed, and says whether it held.
func waitFor(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// TestRevokedSessionStopsUpstream: a session the node ends while the server runs a statement
// followed by an insert (one simple Query) gets the FATAL at once, the statement is stopped on the
// server so the insert never commits, even when the statement catches the cancel, and the server
// backend goes away.
func TestRevokedSessionStopsUpstream(t *testing.T) {
	pg := startPostgres(t)
	sp := startSessionProxy(t, pg.target(), &testTokens{token: pg.token})
	port := sp.listen(t, Session{User: "alice"})
	ctx := context.Background()

	setup, err := pgconn.Connect(ctx, connPort(port))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.Exec(ctx, "CREATE TABLE after_revoke (id int)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)

	for i, tc := range []struct{ name, sql string }{
		{"sleep then insert", "select pg_sleep(8); insert into after_revoke values (1)"},
		{"statement that catches the cancel", "do $$ begin perform pg_sleep(8); exception when query_canceled then perform pg_sleep(1); end $$; insert into after_revoke values (2)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := pgconn.Connect(ctx, connPort(port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			done := make(chan error, 1)
			go func() {
				_, err := c.Exec(ctx, tc.sql).ReadAll()
				done <- err
			}()
			var backend string
			if !waitFor(10*time.Second, func() bool {
				backend = strings.TrimSpace(pg.psqlAdmin(t, "SELECT coalesce(max(pid)::text, '') FROM pg_stat_activity WHERE query = '"+strings.ReplaceAll(tc.sql, "'", "''")+"' AND state = 'active'"))
				return backend != ""
			}) {
				t.Fatal("the statement did not start on the server within 10s")
			}
			pid, _ := strconv.Atoi(backend)

			revokedAt := time.Now()
			sp.endAll(&Refusal{Code: "57P01", Message: "terminating connection: access of user \"alice\" to resource \"pg-test\" was revoked"})
			select {
			case err := <-done:
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Severity != "FATAL" || !strings.Contains(pgErr.Message, "revoked") {
					t.Fatalf("client got %v, want FATAL 57P01 about the revocation", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the client got no FATAL within 5s of the revocation")
			}
			if !waitFor(20*time.Second, func() bool { return pg.activity(t, uint32(pid)) == "" }) {
				t.Fatalf("server backend %d still in pg_stat_activity 20s after the revocation (state %q)", pid, pg.activity(t, uint32(pid)))
			}
			t.Logf("the server backend went away %v after the revocation", time.Since(revokedAt).Round(time.Millisecond))
			time.Sleep(2 * time.Second) // what the statement would still do after a caught cancel
			if n := strings.TrimSpace(pg.psqlAdminDB(t, "appdb", "SELECT count(*) FROM after_revoke")); n != "0" {
				t.Fatalf("the insert committed after the revocation: %s rows in after_revoke", n)
			}
			var conns []audit.Connection
			if !waitFor(10*time.Second, func() bool {
				conns, err = sp.audit.Connections(ctx, audit.ConnectionFilter{User: "alice", Limit: 1})
				return err == nil && len(conns) == 1 && conns[0].ID > int64(i+1) && !conns[0].End.IsZero()
			}) || !strings.Contains(conns[0].Error, "revoked") {
				t.Fatalf("connection record = %+v, %v; want one ended, whose error says it was revoked", conns, err)
			}
		})
	}
}

// TestCancelRequestOfOthers: a CancelRequest is forwarded only when it comes from the session's own
// user who is still granted the resource; any other is refused, leaves the statement running and is
// recorded with outcome denied.
func TestCancelRequestOfOthers(t *testing.T) {
	pg := startPostgres(t)
	sp := startSessionProxy(t, pg.target(), &testTokens{token: pg.token})
	alice := sp.listen(t, Session{User: "alice"})
	ctx := context.Background()

	for _, tc := range []struct {
		name    string
		from    Session
		forward bool
		reason  string
	}{
		{"user not granted the resource", Session{User: "mallory", Denied: &Refusal{Code: "28000", Message: `ferry: user "mallory" is not granted access to resource "pg-test"`}}, false, "not granted"},
		{"suspended owner", Session{User: "alice", Denied: &Refusal{Code: "28000", Message: `ferry: user "alice" is suspended`}}, false, "suspended"},
		{"another granted user", Session{User: "bob"}, false, "another user"},
		// The owner's key, sent through a node the resource is not routed to (session.routeRefusal):
		// refused like any other admission refusal, whatever the key names.
		{"the owner through a node that does not carry the resource", Session{User: "alice", Denied: &Refusal{Code: "28000", Message: `ferry: resource "pg-test" is not served by node "gw-dev": the node's tags do not match egress filter tag:env=prod`}}, false, "not served by node"},
		{"the owner", Session{User: "alice"}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from := sp.listen(t, tc.from)
			c, err := pgconn.Connect(ctx, connPort(alice))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			done := make(chan error, 1)
			go func() {
				_, err := c.Exec(ctx, "select pg_sleep(30)").ReadAll()
				done <- err
			}()
			if !waitFor(10*time.Second, func() bool {
				return strings.TrimSpace(pg.psqlAdmin(t, "SELECT count(*) FROM pg_stat_activity WHERE query = 'select pg_sleep(30)' AND state = 'active'")) == "1"
			}) {
				t.Fatal("the statement did not start within 10s")
			}
			sendCancel(t, from, c.PID(), c.SecretKey())
			if tc.forward {
				select {
				case err := <-done:
					var pgErr *pgconn.PgError
					if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
						t.Fatalf("statement ended with %v, want 57014 (cancelled)", err)
					}
				case <-time.After(15 * time.Second):
					t.Fatal("the owner's CancelRequest did not cancel the statement within 15s")
				}
				return
			}
			var rec audit.Connection
			if !waitFor(10*time.Second, func() bool {
				conns, err := sp.audit.Connections(ctx, audit.ConnectionFilter{User: tc.from.User, Limit: 5})
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range conns {
					if strings.HasPrefix(c.Error, "CancelRequest refused") && strings.Contains(c.Error, tc.reason) && !c.End.IsZero() {
						rec = c
						return true
					}
				}
				return false
			}) {
				t.Fatalf("no connection record of the refused CancelRequest from %s", tc.from.User)
			}
			if rec.Outcome != audit.OutcomeDenied || rec.Resource != "pg-test" || rec.UpstreamPID == 0 {
				t.Fatalf("refusal record = %+v, want outcome denied on pg-test naming the targeted backend", rec)
			}
			select {
			case err := <-done:
				t.Fatalf("statement ended (%v) after a refused CancelRequest", err)
			case <-time.After(time.Second):
			}
			// End it for the next case (and as the owner may).
			if err := c.CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			<-done
		})
	}
}

// sendCancel sends a raw CancelRequest to the proxy port and waits for the proxy to close.
func sendCancel(t *testing.T, port int, pid uint32, secret []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg, err := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: secret}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	var b [1]byte
	if n, err := conn.Read(b[:]); n != 0 || err == nil {
		t.Fatalf("the proxy answered a CancelRequest with %d bytes (%v); want it closed without an answer", n, err)
	}
}

// TestEndedSessionOfClientThatDoesNotRead: a session the node ends while its client reads nothing
// (the server's rows fill the client's TCP window, so the proxy's write to the client blocks) still
// ends: its server backend goes, Serve returns (no goroutine or descriptor is left behind) and its
// connection record is ended, whether the client then stays silent or keeps sending.
func TestEndedSessionOfClientThatDoesNotRead(t *testing.T) {
	pg := startPostgres(t)
	sp := startSessionProxy(t, pg.target(), &testTokens{token: pg.token})
	port := sp.listen(t, Session{User: "alice"})
	ctx := context.Background()
	const query = "select repeat('x', 1000000) from generate_series(1, 1000)"

	for i, tc := range []struct {
		name        string
		keepOnGoing bool
	}{
		{"client silent", false},
		{"client still sending", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close() // before the proxy's cleanup waits for its sessions
			nc.(*net.TCPConn).SetReadBuffer(4096)
			c := &rawClient{t: t, nc: nc, fe: pgproto3.NewFrontend(nc, nc)}
			nc.SetDeadline(time.Now().Add(30 * time.Second))
			c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "whoever", "database": "appdb"}})
			c.until(1)
			nc.SetDeadline(time.Time{})
			c.send(&pgproto3.Query{String: query})
			// The server blocks writing to the proxy only once the proxy blocks writing to the client.
			if !waitFor(20*time.Second, func() bool {
				return strings.TrimSpace(pg.psqlAdmin(t, "SELECT count(*) FROM pg_stat_activity WHERE query = '"+strings.ReplaceAll(query, "'", "''")+"' AND wait_event = 'ClientWrite'")) == "1"
			}) {
				t.Fatal("the server did not block writing its rows within 20s")
			}
			stopSending := make(chan struct{})
			defer close(stopSending)
			if tc.keepOnGoing {
				go func() {
					sync, _ := (&pgproto3.Sync{}).Encode(nil)
					for {
						select {
						case <-stopSending:
							return
						case <-time.After(20 * time.Millisecond):
						}
						nc.SetWriteDeadline(time.Now().Add(time.Second))
						if _, err := nc.Write(sync); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
							return
						}
					}
				}()
			}

			sp.endAll(&Refusal{Code: "57P01", Message: "terminating connection: access of user \"alice\" to resource \"pg-test\" was revoked"})
			if !waitFor(20*time.Second, func() bool { return sp.running.Load() == 0 }) {
				t.Fatal("the ended session of a client that does not read was still running 20s after it was ended")
			}
			if n := strings.TrimSpace(pg.psqlAdmin(t, "SELECT count(*) FROM pg_stat_activity WHERE query = '"+strings.ReplaceAll(query, "'", "''")+"'")); n != "0" {
				t.Fatalf("%s server backend(s) of the ended session still running", n)
			}
			conns, err := sp.audit.Connections(ctx, audit.ConnectionFilter{User: "alice", Limit: 1})
			if err != nil || len(conns) != 1 || conns[0].ID != int64(i+1) || conns[0].End.IsZero() || !strings.Contains(conns[0].Error, "revoked") {
				t.Fatalf("connection record = %+v, %v; want the session's, ended, whose error says it was revoked", conns, err)
			}
		})
	}
}
