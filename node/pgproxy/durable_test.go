package pgproxy

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/node/audit"
)

// lockAudit holds SQLite's write lock on the test proxy's audit file from another connection (as a
// slow disk or a long transaction would), so the audit writer cannot commit until the returned
// function releases it (also at cleanup).
func (tp *testProxy) lockAudit(tb testing.TB) (unlock func()) {
	tb.Helper()
	ctx := context.Background()
	db, err := audit.OpenDB(tp.dbPath)
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		tb.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		conn.Close()
		db.Close()
		tb.Fatal(err)
	}
	locked := true
	unlock = func() {
		if !locked {
			return
		}
		locked = false
		if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
			tb.Error(err)
		}
		conn.Close()
		db.Close()
	}
	tb.Cleanup(unlock)
	return unlock
}

// received is one message from the server, or the error that ended the reading.
type received struct {
	msg pgproto3.BackendMessage
	err error
}

// receiveAll reads the server's messages on fe into a channel until an error (sent last).
func receiveAll(fe *pgproto3.Frontend) <-chan received {
	ch := make(chan received, 1<<16)
	go func() {
		for {
			m, err := fe.Receive()
			if err != nil {
				ch <- received{err: err}
				close(ch)
				return
			}
			// Receive reuses its messages: keep what the test looks at.
			switch m := m.(type) {
			case *pgproto3.CommandComplete:
				ch <- received{msg: &pgproto3.CommandComplete{CommandTag: append([]byte(nil), m.CommandTag...)}}
			case *pgproto3.ErrorResponse:
				e := *m
				ch <- received{msg: &e}
			case *pgproto3.ReadyForQuery:
				ch <- received{msg: &pgproto3.ReadyForQuery{TxStatus: m.TxStatus}}
			case *pgproto3.DataRow:
				ch <- received{msg: &pgproto3.DataRow{}}
			default:
				ch <- received{msg: m}
			}
		}
	}()
	return ch
}

// TestAnswerHeldUntilRecordDurable: while the audit writer cannot commit (another connection holds
// SQLite's write lock on the audit file), a statement runs on the real server and its record is
// made, but the client gets neither its completion (CommandComplete) nor the ReadyForQuery after
// it; rows that stream before a statement completes are not held. Once the lock is released the
// writer commits, the answer arrives, and the record is in the database at that moment (no Flush).
// A kill -9 of the node before the commit therefore cannot leave a client that saw its statement
// complete without its record.
func TestAnswerHeldUntilRecordDurable(t *testing.T) {
	pg := startPostgres(t)
	tests := []struct {
		name string
		send []pgproto3.FrontendMessage
		// rows: DataRows the client must get while the record is not durable (a long result
		// streams); 0 = none need arrive.
		rows    int
		records int      // records the statements make
		tags    []string // CommandCompletes after the release, in order
	}{
		{"simple query", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 'held 1'"}}, 0, 1, []string{"SELECT 1"}},
		{"simple query of several statements", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 'held 2'; SELECT 'held 3'"}}, 0, 2,
			[]string{"SELECT 1", "SELECT 1"}},
		{"extended pipeline: three Executes, one Sync", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "SELECT $1::int"},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("2")}}, &pgproto3.Execute{},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("3")}}, &pgproto3.Execute{},
			&pgproto3.Sync{},
		}, 0, 3, []string{"SELECT 1", "SELECT 1", "SELECT 1"}},
		{"long result streams, its completion is held", []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "SELECT repeat('x', 100) FROM generate_series(1, 20000)"}}, 1000, 1, []string{"SELECT 20000"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp := startProxy(t, Config{Tokens: &testTokens{token: pg.token}}, pg.target())
			c := dialRaw(t, tp)
			c.send(&pgproto3.Query{String: "SELECT 'before the lock'"})
			c.until(1)
			ctx := context.Background()
			if err := tp.audit.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			c.nc.SetDeadline(time.Time{})
			msgs := receiveAll(c.fe)
			unlock := tp.lockAudit(t)
			c.send(tc.send...)

			// The server has answered and the proxy has made the records: they wait for the writer.
			if !waitFor(20*time.Second, func() bool { return tp.audit.QueueDepth() >= tc.records }) {
				t.Fatalf("records queued: %d, want %d", tp.audit.QueueDepth(), tc.records)
			}
			// Give the relay ample time to pass on what it would: only rows may arrive.
			rows := 0
			quiet := time.After(time.Second)
		held:
			for {
				select {
				case r := <-msgs:
					switch m := r.msg.(type) {
					case *pgproto3.DataRow:
						rows++
					case *pgproto3.RowDescription:
					case *pgproto3.CommandComplete, *pgproto3.ReadyForQuery, *pgproto3.ErrorResponse:
						t.Fatalf("the client got %T %+v while its statement's record was not durable (queue depth %d)", m, m, tp.audit.QueueDepth())
					default:
						if r.err != nil {
							t.Fatalf("client connection: %v", r.err)
						}
					}
				case <-quiet:
					break held
				}
			}
			if rows < tc.rows {
				t.Fatalf("%d rows streamed while the completion was held, want at least %d (a long result must not be held)", rows, tc.rows)
			}
			if tp.audit.QueueDepth() < tc.records {
				t.Fatalf("queue depth %d: the writer committed with the lock held", tp.audit.QueueDepth())
			}

			unlock()
			var tags []string
			deadline := time.After(30 * time.Second)
		answered:
			for {
				select {
				case r := <-msgs:
					switch m := r.msg.(type) {
					case *pgproto3.CommandComplete:
						tags = append(tags, string(m.CommandTag))
					case *pgproto3.ErrorResponse:
						t.Fatalf("error after the release: %s %s", m.Code, m.Message)
					case *pgproto3.ReadyForQuery:
						break answered
					default:
						if r.err != nil {
							t.Fatalf("client connection: %v", r.err)
						}
					}
				case <-deadline:
					t.Fatal("no ReadyForQuery within 30s of the writer's release")
				}
			}
			// The records were committed before the answer was let through: no Flush.
			qs, err := tp.audit.Queries(ctx, audit.QueryFilter{})
			if err != nil {
				t.Fatal(err)
			}
			if len(qs) != tc.records+1 {
				t.Fatalf("records in the database when the client got ReadyForQuery: %d, want %d: %+v", len(qs), tc.records+1, qs)
			}
			if len(tags) != len(tc.tags) {
				t.Fatalf("command tags %q, want %q", tags, tc.tags)
			}
			for i := range tags {
				if tags[i] != tc.tags[i] {
					t.Fatalf("command tags %q, want %q", tags, tc.tags)
				}
			}
		})
	}
}
