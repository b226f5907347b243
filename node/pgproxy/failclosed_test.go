package pgproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/node/audit"
)

// countingDial wraps t.Dial and counts the connections the proxy opens to the server.
func countingDial(t Target, n *atomic.Int32) Target {
	dial := t.Dial
	t.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		n.Add(1)
		return dial(ctx, network, addr)
	}
	return t
}

// breakAudit makes writes to the audit log's table fail for as long as the test runs, in the real
// SQLite file through a second connection: a trigger that aborts every insert (or update) with an
// I/O error, as a full or failing disk would.
func (tp *testProxy) breakAudit(tb testing.TB, table, event string) {
	tb.Helper()
	db, err := audit.OpenDB(tp.dbPath)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TRIGGER fail_` + table + ` BEFORE ` + event + ` ON ` + table +
		` BEGIN SELECT RAISE(ABORT, 'disk I/O error (test: the audit store is failing)'); END`); err != nil {
		tb.Fatal(err)
	}
}

// TestAuditUnavailableRefusesSession: when the connection record cannot be written the session is
// refused with FATAL 58030 before the proxy asks for a token or opens a connection to the server.
func TestAuditUnavailableRefusesSession(t *testing.T) {
	pg := startPostgres(t)
	tests := []struct {
		name       string
		breakStore func(t *testing.T, tp *testProxy)
	}{
		{"insert fails", func(t *testing.T, tp *testProxy) { tp.breakAudit(t, "audit_connections", "INSERT") }},
		{"database closed", func(t *testing.T, tp *testProxy) { tp.db.Close() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			tokens := &testTokens{token: pg.token}
			var dials atomic.Int32
			tp := startProxy(t, Config{Tokens: tokens}, countingDial(pg.target(), &dials))
			// The store works: a session runs.
			if out, err := tp.psql(t, "sslmode=disable dbname=appdb", "SELECT 1"); err != nil {
				t.Fatalf("psql before the store broke: %v\n%s", err, out)
			}
			tp.waitIdle(t)
			tokensBefore, dialsBefore := tokens.calls.Load(), dials.Load()

			tc.breakStore(t, tp)
			_, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb"))
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "58030" || pgErr.Severity != "FATAL" || !strings.Contains(pgErr.Message, "audit log is unavailable") {
				t.Fatalf("connect with a broken audit log: %v; want FATAL 58030 the audit log is unavailable", err)
			}
			// psql shows it too.
			out, err := tp.psql(t, "sslmode=prefer dbname=appdb", "SELECT 1")
			if err == nil || !strings.Contains(out, "FATAL") || !strings.Contains(out, "audit log is unavailable") {
				t.Fatalf("psql with a broken audit log: %v\n%s", err, out)
			}
			tp.waitIdle(t)
			if n, d := tokens.calls.Load()-tokensBefore, dials.Load()-dialsBefore; n != 0 || d != 0 {
				t.Fatalf("refused sessions asked for %d tokens and opened %d server connections; want none (refused before the upstream login)", n, d)
			}
		})
	}
}

// TestAuditFailureEndsSession: a running session whose statement records cannot be written (after
// the log's retries), or whose audit log has been closed, is ended with FATAL 58030 instead of
// running unaudited, and its connection record counts the lost records.
func TestAuditFailureEndsSession(t *testing.T) {
	pg := startPostgres(t)
	tests := []struct {
		name       string
		breakStore func(t *testing.T, tp *testProxy)
	}{
		{"query insert fails", func(t *testing.T, tp *testProxy) { tp.breakAudit(t, "audit_queries", "INSERT") }},
		{"log closed", func(t *testing.T, tp *testProxy) { tp.audit.Close() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp := startProxy(t, Config{Tokens: &testTokens{token: pg.token}}, pg.target())
			ctx := context.Background()
			c, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			if _, err := c.Exec(ctx, "SELECT 'recorded'").ReadAll(); err != nil {
				t.Fatal(err)
			}
			if err := tp.audit.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			tc.breakStore(t, tp)
			// This statement runs (its record is made once the server has answered) and its record
			// fails; the session is then ended, at the latest while the next, long, statement runs.
			qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			_, err = c.Exec(qctx, "SELECT 'not recorded'").ReadAll()
			if err == nil {
				_, err = c.Exec(qctx, "SELECT pg_sleep(20)").ReadAll()
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "58030" || !strings.Contains(pgErr.Message, "audit log is unavailable") {
				t.Fatalf("session after its records failed: %v; want FATAL 58030 the audit log is unavailable", err)
			}
			tp.waitIdle(t)
			conns, err := tp.audit.Connections(ctx, audit.ConnectionFilter{Limit: 1})
			if err != nil || len(conns) != 1 {
				t.Fatalf("connections = %+v, %v", conns, err)
			}
			if cn := conns[0]; cn.QueriesDropped < 1 || !strings.Contains(cn.Error, "audit log is unavailable") || cn.End.IsZero() {
				t.Fatalf("connection record = %+v; want queries_dropped >= 1 and the reason", cn)
			}
			qs, _ := tp.audit.Queries(ctx, audit.QueryFilter{ConnectionID: conns[0].ID})
			if len(qs) != 1 || qs[0].SQL != "SELECT 'recorded'" {
				t.Fatalf("queries = %+v", qs)
			}
		})
	}
}

// TestFloodingSessionCannotDropOthersRecords: while the audit writer is stalled (another process
// holds SQLite's write lock), one session floods 20000 statements and another runs a few. The
// flooding session waits for its own allowance; the other's record is queued (its answer waits
// for the writer, as every answer does until its record is durable), and in the end every record
// of both sessions is in the log and none was dropped.
func TestFloodingSessionCannotDropOthersRecords(t *testing.T) {
	pg := startPostgres(t)
	tp := startProxy(t, Config{Tokens: &testTokens{token: pg.token}}, pg.target())
	ctx := context.Background()
	flooder, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb application_name=flooder"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb application_name=other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)

	// Stall the writer: hold SQLite's write lock from another connection (as a slow disk or a
	// long transaction would).
	lockDB, err := audit.OpenDB(tp.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer lockDB.Close()
	lock, err := lockDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	locked := true
	unlock := func() {
		if locked {
			locked = false
			if _, err := lock.ExecContext(ctx, "COMMIT"); err != nil {
				t.Error(err)
			}
		}
	}
	defer unlock()

	// The flood: 20000 Query messages pipelined on the raw connection, the answers read as they come.
	const flood = 20000
	hc, err := flooder.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()
	flooded := make(chan error, 2)
	go func() {
		msg, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
		buf := bytes.Repeat(msg, 1000)
		for range flood / 1000 {
			if _, err := hc.Conn.Write(buf); err != nil {
				flooded <- err
				return
			}
		}
	}()
	go func() {
		for ready := 0; ready < flood; {
			msg, err := hc.Frontend.Receive()
			if err != nil {
				flooded <- err
				return
			}
			switch m := msg.(type) {
			case *pgproto3.ReadyForQuery:
				ready++
			case *pgproto3.ErrorResponse:
				flooded <- fmt.Errorf("flood: %s %s", m.Code, m.Message)
				return
			}
		}
		flooded <- nil
	}()
	// Wait until the flood has queued all it can while the writer is stalled.
	deadline := time.Now().Add(20 * time.Second)
	for last, stable := -1, 0; stable < 3; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("queue depth did not settle (now %d)", tp.audit.QueueDepth())
		}
		d := tp.audit.QueueDepth()
		if d > 0 && d == last {
			stable++
		} else {
			stable = 0
		}
		last = d
	}
	stalled := tp.audit.QueueDepth()
	t.Logf("queue depth with the writer stalled: %d", stalled)
	// The other session is not refused or dropped because of the flood: its first statement runs
	// and its record is queued within its own allowance; like every session's, its answer waits
	// until the writer has committed the record (durable before the client hears of it).
	otherDone := make(chan error, 1)
	go func() {
		for i := range 10 {
			qctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			_, err := other.Exec(qctx, fmt.Sprintf("SELECT 'other %d'", i)).ReadAll()
			cancel()
			if err != nil {
				otherDone <- fmt.Errorf("other session, statement %d: %w", i, err)
				return
			}
		}
		otherDone <- nil
	}()
	if !waitFor(20*time.Second, func() bool { return tp.audit.QueueDepth() > stalled }) {
		t.Fatalf("the other session's record was not queued (queue depth %d)", tp.audit.QueueDepth())
	}
	select {
	case err := <-otherDone:
		t.Fatalf("the other session's statements completed while their records could not be written: %v", err)
	default:
	}
	unlock()
	select {
	case err := <-otherDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the other session did not finish within 60s of the writer's release")
	}
	select {
	case err := <-flooded:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the flood did not finish within 60s of the writer's release")
	}
	hc.Conn.Close()
	other.Close(ctx)
	tp.waitIdle(t)

	conns, err := tp.audit.Connections(ctx, audit.ConnectionFilter{Limit: 2})
	if err != nil || len(conns) != 2 {
		t.Fatalf("connections = %+v, %v", conns, err)
	}
	want := map[string]int{"SELECT 1": flood}
	for i := range 10 {
		want[fmt.Sprintf("SELECT 'other %d'", i)] = 1
	}
	got := map[string]int{}
	for _, cn := range conns {
		if cn.QueriesDropped != 0 {
			t.Errorf("connection %d: queries_dropped = %d, want 0", cn.ID, cn.QueriesDropped)
		}
		qs, err := tp.audit.Queries(ctx, audit.QueryFilter{ConnectionID: cn.ID, Limit: 2 * flood})
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			got[q.SQL]++
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("recorded statements (text: count) = %v\nwant %v", got, want)
	}
	if d := tp.audit.Dropped(); d != 0 {
		t.Fatalf("%d records dropped node-wide, want 0", d)
	}
}
