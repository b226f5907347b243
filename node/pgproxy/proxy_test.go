package pgproxy

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
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

// testTokens is a TokenSource test double: a fixed token or error.
type testTokens struct {
	token string
	err   error
	calls atomic.Int32
}

func (s *testTokens) Token(ctx context.Context, clientID string) (string, time.Time, error) {
	s.calls.Add(1)
	if s.err != nil {
		return "", time.Time{}, s.err
	}
	return s.token, time.Now().Add(time.Hour), nil
}

// testProxy serves a Proxy for one Target on a loopback listener.
type testProxy struct {
	addr   string
	port   int
	audit  *audit.Log
	db     *sql.DB // the audit log's database
	dbPath string
	stop   context.CancelFunc // ends every session, as a node shutdown does
	active atomic.Int32
	wg     sync.WaitGroup
}

func startProxy(tb testing.TB, cfg Config, target Target) *testProxy {
	tb.Helper()
	log, db, dbPath := openTestAudit(tb)
	cfg.Audit = testAudit{log}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := New(cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp := &testProxy{addr: l.Addr().String(), port: l.Addr().(*net.TCPAddr).Port, audit: log, db: db, dbPath: dbPath, stop: cancel}
	acceptLoop(l, &tp.wg, func(c net.Conn) func() {
		tp.active.Add(1)
		return func() {
			defer tp.active.Add(-1)
			p.Serve(ctx, c, target, Session{User: "alice", ClientAddr: c.RemoteAddr().String()})
		}
	})
	tb.Cleanup(func() {
		l.Close()
		cancel()
		tp.wg.Wait()
	})
	return tp
}

// waitIdle waits until every Serve call has returned (so its audit records are written).
func (tp *testProxy) waitIdle(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for tp.active.Load() != 0 {
		if time.Now().After(deadline) {
			tb.Fatalf("%d proxied connections still open after 10s", tp.active.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (tp *testProxy) connString(extra string) string {
	return "host=127.0.0.1 port=" + strconv.Itoa(tp.port) + " user=whoever password=ignored connect_timeout=10 " + extra
}

// psql runs the real psql client against the proxy.
func (tp *testProxy) psql(tb testing.TB, conn string, sqls ...string) (string, error) {
	tb.Helper()
	args := []string{"-X", "-w", "-At", "-v", "ON_ERROR_STOP=1", tp.connString(conn)}
	for _, s := range sqls {
		args = append(args, "-c", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "psql", args...).CombinedOutput()
	return string(out), err
}

func TestProxy(t *testing.T) {
	pg := startPostgres(t)
	tokens := &testTokens{token: pg.token}
	tp := startProxy(t, Config{Tokens: tokens}, pg.target())
	ctx := context.Background()

	t.Run("psql session", func(t *testing.T) {
		for _, mode := range []string{"sslmode=prefer", "sslmode=disable"} {
			out, err := tp.psql(t, "dbname=appdb application_name=ferry-psql "+mode,
				"SELECT version()",
				"CREATE TABLE IF NOT EXISTS t_"+mode[8:]+" (id int PRIMARY KEY, name text)",
				"INSERT INTO t_"+mode[8:]+" VALUES (1, 'one'), (2, 'two')",
				"SELECT id, name FROM t_"+mode[8:]+" ORDER BY id",
				"SELECT current_user, current_database(), current_setting('application_name')")
			if err != nil {
				t.Fatalf("psql %s: %v\n%s", mode, err, out)
			}
			for _, want := range []string{"PostgreSQL 15", "1|one\n2|two\n", "mi_user|appdb|ferry-psql"} {
				if !strings.Contains(out, want) {
					t.Fatalf("psql %s output lacks %q:\n%s", mode, want, out)
				}
			}
		}
		tp.waitIdle(t)
		conns, err := tp.audit.Connections(ctx, audit.ConnectionFilter{User: "alice", Resource: "pg-test", Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		if len(conns) != 2 {
			t.Fatalf("%d audit connections, want 2", len(conns))
		}
		for _, c := range conns {
			if c.Outcome != audit.OutcomeOK || c.Error != "" || c.End.IsZero() || c.Database != "appdb" || !strings.HasPrefix(c.ClientAddr, "127.0.0.1:") {
				t.Fatalf("audit connection = %+v", c)
			}
		}
		qs, err := tp.audit.Queries(ctx, audit.QueryFilter{ConnectionID: conns[0].ID})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for i := len(qs) - 1; i >= 0; i-- {
			got = append(got, qs[i].SQL)
		}
		want := []string{"SELECT version()", "CREATE TABLE IF NOT EXISTS t_disable (id int PRIMARY KEY, name text)",
			"INSERT INTO t_disable VALUES (1, 'one'), (2, 'two')", "SELECT id, name FROM t_disable ORDER BY id"}
		if len(got) < len(want) {
			t.Fatalf("audit queries = %q", got)
		}
		for i, w := range want {
			if got[i] != w || qs[len(qs)-1-i].User != "alice" || qs[len(qs)-1-i].Protocol != "simple" {
				t.Fatalf("audit query %d = %q (%+v), want %q", i, got[i], qs[len(qs)-1-i], w)
			}
		}
	})

	t.Run("pgx extended protocol and runtime params", func(t *testing.T) {
		c, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb application_name=ferry-pgx timezone=Asia/Tokyo"))
		if err != nil {
			t.Fatal(err)
		}
		res := c.ExecParams(ctx, "SELECT $1::int + 1, current_setting('TimeZone'), current_setting('application_name')", [][]byte{[]byte("41")}, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		if got := string(res.Rows[0][0]) + "|" + string(res.Rows[0][1]) + "|" + string(res.Rows[0][2]); got != "42|Asia/Tokyo|ferry-pgx" {
			t.Fatalf("row = %s", got)
		}
		if c.ParameterStatus("TimeZone") != "Asia/Tokyo" || c.ParameterStatus("server_version") == "" {
			t.Fatalf("ParameterStatus TimeZone=%q server_version=%q", c.ParameterStatus("TimeZone"), c.ParameterStatus("server_version"))
		}
		c.Close(ctx)
		tp.waitIdle(t)
		qs, err := tp.audit.Queries(ctx, audit.QueryFilter{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(qs) != 1 || qs[0].Protocol != "extended" || !strings.HasPrefix(qs[0].SQL, "SELECT $1::int + 1") {
			t.Fatalf("audit = %+v", qs)
		}
	})

	t.Run("protocol 3.2 client is negotiated down to 3.0", func(t *testing.T) {
		c, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb max_protocol_version=3.2"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if res := c.ExecParams(ctx, "SELECT 1", nil, nil, nil, nil).Read(); res.Err != nil || string(res.Rows[0][0]) != "1" {
			t.Fatalf("SELECT 1: %v %v", res.Err, res.Rows)
		}
		if len(c.SecretKey()) != 4 {
			t.Fatalf("secret key of %d bytes, want 4 (protocol 3.0)", len(c.SecretKey()))
		}
	})

	t.Run("StartupMessage one byte per write after GSSENCRequest and SSLRequest", func(t *testing.T) {
		nc, err := net.DialTimeout("tcp", tp.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(20 * time.Second))
		var answer [1]byte
		for _, req := range []pgproto3.FrontendMessage{&pgproto3.GSSEncRequest{}, &pgproto3.SSLRequest{}} {
			buf, _ := req.Encode(nil)
			writeByByte(t, nc, buf)
			if _, err := io.ReadFull(nc, answer[:]); err != nil || answer[0] != 'N' {
				t.Fatalf("answer to %T = %q, %v; want 'N'", req, answer[0], err)
			}
		}
		buf, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "bob", "database": "appdb"}}).Encode(nil)
		writeByByte(t, nc, buf)
		fe := pgproto3.NewFrontend(nc, nc)
		var sawAuth, sawKey bool
	login:
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			switch m := msg.(type) {
			case *pgproto3.AuthenticationOk:
				sawAuth = true
			case *pgproto3.BackendKeyData:
				sawKey = m.ProcessID != 0 && len(m.SecretKey) == 4
			case *pgproto3.ReadyForQuery:
				if m.TxStatus != 'I' {
					t.Fatalf("ReadyForQuery %q", m.TxStatus)
				}
				break login
			case *pgproto3.ParameterStatus:
			default:
				t.Fatalf("unexpected %T during login", msg)
			}
		}
		if !sawAuth || !sawKey {
			t.Fatalf("AuthenticationOk %v, BackendKeyData %v", sawAuth, sawKey)
		}
		// Pipelined: a Query and Terminate in one write.
		q, _ := (&pgproto3.Query{String: "SELECT 6*7"}).Encode(nil)
		writeByByte(t, nc, q)
		if v := readDataRow(t, fe); v != "42" {
			t.Fatalf("SELECT 6*7 = %q", v)
		}
	})

	t.Run("CancelRequest is forwarded upstream", func(t *testing.T) {
		c, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := c.Exec(context.Background(), "SELECT pg_sleep(20)").ReadAll()
			done <- err
		}()
		var qerr error
	wait:
		for {
			select {
			case qerr = <-done:
				break wait
			case <-time.After(300 * time.Millisecond):
				// Sent again until the query ends: an early one may arrive before the query runs.
				if err := c.CancelRequest(ctx); err != nil {
					t.Fatalf("CancelRequest: %v", err)
				}
			}
		}
		var pgErr *pgconn.PgError
		if !errors.As(qerr, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("cancelled query error = %v, want SQLSTATE 57014", qerr)
		}
	})

	t.Run("sslmode=prefer target still logs in over verified TLS", func(t *testing.T) {
		target := pg.target()
		target.TLSRequired = false // pg_hba has only hostssl lines: a plain login would be refused
		tp := startProxy(t, Config{Tokens: tokens}, target)
		out, err := tp.psql(t, "sslmode=disable dbname=appdb", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
		if err != nil || strings.TrimSpace(out) != "t" {
			t.Fatalf("psql: %v\n%s", err, out)
		}
	})

	t.Run("node shutdown tells the client", func(t *testing.T) {
		tp := startProxy(t, Config{Tokens: tokens}, pg.target())
		c, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		tp.stop()
		tp.waitIdle(t)
		_, err = c.Exec(ctx, "SELECT 1").ReadAll()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
			t.Fatalf("error after shutdown = %v, want SQLSTATE 57P01", err)
		}
		conns, _ := tp.audit.Connections(ctx, audit.ConnectionFilter{Limit: 1})
		if len(conns) != 1 || !strings.Contains(conns[0].Error, "shutting down") || conns[0].End.IsZero() {
			t.Fatalf("audit = %+v", conns)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		closedPort := freePort(t)
		tests := []struct {
			name     string
			tokens   TokenSource
			target   func(Target) Target
			conn     string
			code     string
			contains string
			outcome  string
		}{
			{"token source fails", &testTokens{err: errors.New("IMDS: connection refused")}, nil, "dbname=appdb",
				"28000", "could not get an access token for the node's system-assigned managed identity", audit.OutcomeFailed},
			{"token source fails with azidentity's dump", &testTokens{err: errors.New(azidentityDump)}, nil, "dbname=appdb",
				"28000", "the requested identity isn't assigned to this resource (IMDS: 400 Bad Request: Identity not found)", audit.OutcomeFailed},
			{"server unreachable", tokens, func(t Target) Target { t.Port = closedPort; return t }, "dbname=appdb",
				"08001", "could not connect to server", audit.OutcomeFailed},
			{"certificate not trusted", tokens, func(t Target) Target { t.RootCAs = x509.NewCertPool(); return t }, "dbname=appdb",
				"08001", "certificate", audit.OutcomeFailed},
			{"wrong token", &testTokens{token: "not-the-token"}, nil, "dbname=appdb",
				"28P01", "password authentication failed", audit.OutcomeDenied},
			{"server pg_hba rejects", tokens, nil, "dbname=rejectdb",
				"28000", "pg_hba.conf rejects connection", audit.OutcomeDenied},
			{"restricted database", tokens, func(t Target) Target { t.RestrictDatabase = true; return t }, "dbname=otherdb",
				"3D000", `connections are restricted to database "appdb"`, audit.OutcomeDenied},
			{"replication", tokens, nil, "dbname=appdb replication=database",
				"0A000", "replication connections", audit.OutcomeDenied},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				target := pg.target()
				if tc.target != nil {
					target = tc.target(target)
				}
				tp := startProxy(t, Config{Tokens: tc.tokens, LoginTimeout: 10 * time.Second}, target)
				_, err := pgconn.Connect(ctx, tp.connString("sslmode=disable "+tc.conn))
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) {
					t.Fatalf("connect error = %v, want a PgError", err)
				}
				if pgErr.Code != tc.code || pgErr.Severity != "FATAL" || !strings.Contains(pgErr.Message, tc.contains) {
					t.Fatalf("error = %s %s %q, want FATAL %s containing %q", pgErr.Severity, pgErr.Code, pgErr.Message, tc.code, tc.contains)
				}
				if strings.ContainsAny(pgErr.Message, "\n{") || strings.Contains(pgErr.Message, "GET http") || pgErr.Detail != "" {
					t.Fatalf("FATAL is not one short line: %q (DETAIL %q)", pgErr.Message, pgErr.Detail)
				}
				// psql shows the same FATAL error.
				out, err := tp.psql(t, "sslmode=prefer "+tc.conn, "SELECT 1")
				if err == nil || !strings.Contains(out, "FATAL") || !strings.Contains(out, tc.contains) {
					t.Fatalf("psql: %v\n%s", err, out)
				}
				tp.waitIdle(t)
				conns, err := tp.audit.Connections(ctx, audit.ConnectionFilter{})
				if err != nil {
					t.Fatal(err)
				}
				if len(conns) != 2 || conns[0].Outcome != tc.outcome || !strings.Contains(conns[0].Error, tc.contains) || conns[0].End.IsZero() {
					t.Fatalf("audit connections = %+v", conns)
				}
			})
		}
	})

	t.Run("message above the size limit", func(t *testing.T) {
		tp := startProxy(t, Config{Tokens: tokens, MaxMessageSize: 1 << 20}, pg.target())
		c, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		// A statement just under the limit passes.
		under := "SELECT length('" + strings.Repeat("x", 1<<19) + "')"
		if res, err := c.Exec(ctx, under).ReadAll(); err != nil || string(res[0].Rows[0][0]) != strconv.Itoa(1<<19) {
			t.Fatalf("statement under the limit: %v", err)
		}
		over := "SELECT length('" + strings.Repeat("x", 2<<20) + "')"
		_, err = c.Exec(ctx, over).ReadAll()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "54000" {
			t.Fatalf("error = %v, want SQLSTATE 54000", err)
		}
		tp.waitIdle(t)
		conns, _ := tp.audit.Connections(ctx, audit.ConnectionFilter{Limit: 1})
		if len(conns) != 1 || !strings.Contains(conns[0].Error, "exceeds the proxy's limit") {
			t.Fatalf("audit = %+v", conns)
		}
		qs, _ := tp.audit.Queries(ctx, audit.QueryFilter{ConnectionID: conns[0].ID})
		// Only the statement under the limit reached the server and the log.
		if len(qs) != 1 || qs[0].Rows != 1 {
			t.Fatalf("%d queries recorded; want only the one under the limit", len(qs))
		}
		checkHeadTail(t, qs[0], under, DefaultMaxAuditSQL)
	})

	t.Run("bad startup packets get an error, not a hang", func(t *testing.T) {
		tests := []struct {
			name   string
			packet []byte
			code   string
		}{
			{"length too large", be32(10009, 196608), "08P01"},
			{"length too small", be32(4), "08P01"},
			{"protocol 2.0", be32(8, 2<<16), "0A000"},
			{"SSLRequest twice", append(be32(8, codeSSLRequest), be32(8, codeSSLRequest)...), "08P01"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				nc, err := net.DialTimeout("tcp", tp.addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(10 * time.Second))
				nc.Write(tc.packet)
				out, _ := io.ReadAll(nc)
				out = []byte(strings.TrimLeft(string(out), "N"))
				if len(out) == 0 || out[0] != 'E' {
					t.Fatalf("reply %q, want an ErrorResponse", out)
				}
				var er pgproto3.ErrorResponse
				if err := er.Decode(out[5:]); err != nil || er.Code != tc.code {
					t.Fatalf("ErrorResponse %+v (%v), want code %s", er, err, tc.code)
				}
			})
		}
	})
}

func be32(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

func writeByByte(t *testing.T, w io.Writer, b []byte) {
	t.Helper()
	for i := range b {
		if _, err := w.Write(b[i : i+1]); err != nil {
			t.Fatal(err)
		}
	}
}

func readDataRow(t *testing.T, fe *pgproto3.Frontend) string {
	t.Helper()
	var v string
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			v = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("ErrorResponse %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return v
		}
	}
}

// azidentityDump is ManagedIdentityCredential's error for an identity IMDS does not know, as
// azidentity prints it (see tokensource.TestBrief, which gets it from the emulator).
const azidentityDump = `get managed identity token (client ID "8d3ff823-4338-4eaa-b786-91d7043c6f7a"): ManagedIdentityCredential authentication failed. the requested identity isn't assigned to this resource
GET http://127.0.0.1:44589/metadata/identity/oauth2/token
--------------------------------------------------------------------------------
RESPONSE 400: 400 Bad Request
--------------------------------------------------------------------------------
{
  "error": "invalid_request",
  "error_description": "Identity not found"
}

--------------------------------------------------------------------------------
To troubleshoot, visit https://aka.ms/azsdk/go/identity/troubleshoot#managed-id`
