package pgproxy

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// rawClient is a client speaking raw protocol messages to the proxy.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	fe *pgproto3.Frontend
}

// dialRaw logs in to the proxy with a raw frontend and waits for ReadyForQuery.
func dialRaw(t *testing.T, tp *testProxy) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", tp.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c := &rawClient{t: t, nc: nc, fe: pgproto3.NewFrontend(nc, nc)}
	c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "whoever", "database": "appdb"}})
	c.until(1)
	return c
}

// send writes msgs in one write.
func (c *rawClient) send(msgs ...pgproto3.FrontendMessage) {
	c.t.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			c.t.Fatal(err)
		}
	}
	if _, err := c.nc.Write(buf); err != nil {
		c.t.Fatal(err)
	}
}

// until reads through n ReadyForQuery messages and returns the SQLSTATEs of
// the ErrorResponses and the command tags seen.
func (c *rawClient) until(n int) (codes, tags []string) {
	c.t.Helper()
	for n > 0 {
		msg, err := c.fe.Receive()
		if err != nil {
			c.t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			codes = append(codes, m.Code)
		case *pgproto3.CommandComplete:
			tags = append(tags, string(m.CommandTag))
		case *pgproto3.FunctionCallResponse:
			tags = append(tags, "result "+string(m.Result))
		case *pgproto3.ReadyForQuery:
			n--
		}
	}
	return codes, tags
}

// lastSession waits for the newest session to end and returns its connection
// record and its queries, oldest first.
func lastSession(t *testing.T, tp *testProxy) (audit.Connection, []audit.Query) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var conns []audit.Connection
	for {
		var err error
		conns, err = tp.audit.Connections(ctx, audit.ConnectionFilter{Limit: 1})
		if err != nil || len(conns) != 1 {
			t.Fatalf("audit connections = %+v, %v", conns, err)
		}
		if !conns[0].End.IsZero() {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the session's connection record was not ended within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := tp.audit.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	qs, err := tp.audit.Queries(ctx, audit.QueryFilter{ConnectionID: conns[0].ID})
	if err != nil {
		t.Fatal(err)
	}
	for i, j := 0, len(qs)-1; i < j; i, j = i+1, j-1 {
		qs[i], qs[j] = qs[j], qs[i]
	}
	return conns[0], qs
}

// TestAuditRecordsWhatServerRan drives a real PostgreSQL through the proxy
// as an attacker would and checks that each record names what the server
// ran.
func TestAuditRecordsWhatServerRan(t *testing.T) {
	pg := startPostgres(t)
	tp := startProxy(t, Config{Tokens: &testTokens{token: pg.token}}, pg.target())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE TABLE accounts (id int); INSERT INTO accounts SELECT generate_series(1, 10)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	count := func(where string) string {
		t.Helper()
		res, err := admin.Exec(ctx, "SELECT count(*) FROM accounts WHERE "+where).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		return string(res[0].Rows[0][0])
	}
	// find returns the records whose command is cmd.
	find := func(qs []audit.Query, cmd string) []audit.Query {
		var out []audit.Query
		for _, q := range qs {
			if q.Command == cmd {
				out = append(out, q)
			}
		}
		return out
	}

	decoys := []struct {
		name string
		run  func(c *rawClient)
		want audit.Query // SQL and Statement of the DELETE record
	}{
		{"Parse of a name in use (42P05)", func(c *rawClient) {
			c.send(&pgproto3.Parse{Name: "s1", Query: "DELETE FROM accounts WHERE id = 1"}, &pgproto3.Sync{})
			c.until(1)
			c.send(&pgproto3.Parse{Name: "s1", Query: "SELECT 'decoy'"}, &pgproto3.Sync{})
			if codes, _ := c.until(1); len(codes) != 1 || codes[0] != "42P05" {
				c.t.Fatalf("decoy Parse answered %v, want 42P05", codes)
			}
			c.send(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if _, tags := c.until(1); len(tags) != 1 || tags[0] != "DELETE 1" {
				c.t.Fatalf("Execute s1 answered %v", tags)
			}
		}, audit.Query{SQL: "DELETE FROM accounts WHERE id = 1", Statement: "s1"}},
		{"Parse skipped after an error earlier in the pipeline", func(c *rawClient) {
			c.send(&pgproto3.Parse{Query: "DELETE FROM accounts WHERE id = 2"}, &pgproto3.Sync{})
			c.until(1)
			c.send(&pgproto3.Execute{Portal: "nope"}, &pgproto3.Parse{Query: "SELECT 'decoy'"}, &pgproto3.Sync{})
			if codes, _ := c.until(1); len(codes) != 1 || codes[0] != "34000" {
				c.t.Fatalf("pipeline answered %v, want 34000", codes)
			}
			c.send(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if _, tags := c.until(1); len(tags) != 1 || tags[0] != "DELETE 1" {
				c.t.Fatalf("Execute of the unnamed statement answered %v", tags)
			}
		}, audit.Query{SQL: "DELETE FROM accounts WHERE id = 2"}},
		{"Close skipped after an error earlier in the pipeline", func(c *rawClient) {
			c.send(&pgproto3.Parse{Name: "s3", Query: "DELETE FROM accounts WHERE id = 3"}, &pgproto3.Sync{})
			c.until(1)
			c.send(&pgproto3.Execute{Portal: "nope"}, &pgproto3.Close{ObjectType: 'S', Name: "s3"}, &pgproto3.Sync{})
			c.until(1)
			c.send(&pgproto3.Bind{PreparedStatement: "s3"}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if _, tags := c.until(1); len(tags) != 1 || tags[0] != "DELETE 1" {
				c.t.Fatalf("Execute s3 answered %v", tags)
			}
		}, audit.Query{SQL: "DELETE FROM accounts WHERE id = 3", Statement: "s3"}},
		{"SQL DEALLOCATE and PREPARE of a name in use", func(c *rawClient) {
			c.send(&pgproto3.Parse{Name: "s4", Query: "SELECT 'decoy'"}, &pgproto3.Sync{})
			c.until(1)
			c.send(&pgproto3.Query{String: "DEALLOCATE s4; PREPARE s4 AS DELETE FROM accounts WHERE id = 4"})
			c.until(1)
			c.send(&pgproto3.Bind{PreparedStatement: "s4"}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if _, tags := c.until(1); len(tags) != 1 || tags[0] != "DELETE 1" {
				c.t.Fatalf("Execute s4 answered %v", tags)
			}
		}, audit.Query{SQL: "PREPARE s4 AS DELETE FROM accounts WHERE id = 4", Statement: "s4"}},
	}
	for _, tc := range decoys {
		t.Run("decoy "+tc.name, func(t *testing.T) {
			c := dialRaw(t, tp)
			tc.run(c)
			c.send(&pgproto3.Terminate{})
			c.nc.Close()
			_, qs := lastSession(t, tp)
			del := find(qs, "DELETE")
			if len(del) != 1 || del[0].SQL != tc.want.SQL || del[0].Statement != tc.want.Statement || del[0].Protocol != "extended" || del[0].Rows != 1 {
				t.Fatalf("DELETE records = %+v\nwant SQL %q statement %q", del, tc.want.SQL, tc.want.Statement)
			}
		})
	}

	t.Run("multi-statement strings split as the server splits them", func(t *testing.T) {
		atomic := "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2"
		tests := []struct {
			name    string
			options string // startup options
			sqls    []string
			want    []string // SQL of the records of the last string
		}{
			{"standard_conforming_strings set off by SET", "",
				[]string{"SET standard_conforming_strings = off", `SELECT 'a\'; DELETE FROM accounts; --'; SELECT 2`},
				[]string{`SELECT 'a\'; DELETE FROM accounts; --'`, "SELECT 2"}},
			{"standard_conforming_strings off at startup", "options='-c standard_conforming_strings=off'",
				[]string{`SELECT 'a\'; DELETE FROM accounts; --'; SELECT 2`},
				[]string{`SELECT 'a\'; DELETE FROM accounts; --'`, "SELECT 2"}},
			{"E string continued after a newline", "",
				[]string{"SELECT E'a'\n'\\'; DELETE FROM accounts; --'; SELECT 2"},
				[]string{"SELECT E'a'\n'\\'; DELETE FROM accounts; --'", "SELECT 2"}},
			{"count that differs from the server's keeps the whole text", "",
				[]string{atomic}, []string{atomic, atomic}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb "+tc.options))
				if err != nil {
					t.Fatal(err)
				}
				var results int
				for _, s := range tc.sqls {
					res, err := c.Exec(ctx, s).ReadAll()
					if err != nil {
						t.Fatalf("%s: %v", s, err)
					}
					results = len(res)
				}
				c.Close(ctx)
				if results != len(tc.want) {
					t.Fatalf("the server ran %d statements, want %d", results, len(tc.want))
				}
				_, qs := lastSession(t, tp)
				qs = qs[len(qs)-len(tc.want):]
				for i, q := range qs {
					if q.SQL != tc.want[i] {
						t.Fatalf("record %d SQL = %q, want %q", i, q.SQL, tc.want[i])
					}
				}
			})
		}
		if n := count("true"); n == "0" {
			t.Fatal("a DELETE inside a string constant ran")
		}
		admin.Exec(ctx, "DROP FUNCTION IF EXISTS f()").ReadAll()
	})

	t.Run("function call records its arguments", func(t *testing.T) {
		res, err := admin.Exec(ctx, "SELECT 'int4pl'::regproc::oid").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		oid := string(res[0].Rows[0][0])
		c := dialRaw(t, tp)
		n, _ := strconv.Atoi(oid)
		c.send(&pgproto3.FunctionCall{Function: uint32(n), ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("40"), []byte("2")}})
		if _, tags := c.until(1); len(tags) != 1 || tags[0] != "result 42" {
			t.Fatalf("FunctionCall answered %v", tags)
		}
		c.send(&pgproto3.Terminate{})
		c.nc.Close()
		_, qs := lastSession(t, tp)
		if len(qs) != 1 || qs[0].Protocol != "function" || qs[0].SQL != "function call: OID "+oid || qs[0].Params != "$1='40' $2='2'" {
			t.Fatalf("records = %+v", qs)
		}
	})

	t.Run("COPY reads the Syncs and the message it ends on", func(t *testing.T) {
		c := dialRaw(t, tp)
		// libpq's extended-protocol COPY: a Sync right after Execute (read and
		// ignored by the COPY), another after CopyDone.
		c.send(&pgproto3.Parse{Query: "COPY accounts FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.CopyData{Data: []byte("200\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
		if codes, tags := c.until(1); len(codes) != 0 || len(tags) != 1 || tags[0] != "COPY 1" {
			t.Fatalf("extended COPY answered %v %v", codes, tags)
		}
		// Data the COPY refuses ends it; the CopyDone sent after is ignored.
		c.send(&pgproto3.Query{String: "COPY accounts FROM STDIN"}, &pgproto3.CopyData{Data: []byte("x\n")}, &pgproto3.CopyDone{},
			&pgproto3.Query{String: "DELETE FROM accounts WHERE id = 5"})
		if codes, tags := c.until(2); len(codes) != 1 || codes[0] != "22P02" || len(tags) != 1 || tags[0] != "DELETE 1" {
			t.Fatalf("failed COPY and DELETE answered %v %v", codes, tags)
		}
		// A Query inside the COPY data ends the COPY (08P01) having been read,
		// and PostgreSQL then ends the session: the Query never runs.
		c.send(&pgproto3.Query{String: "COPY accounts FROM STDIN"}, &pgproto3.CopyData{Data: []byte("201\n")},
			&pgproto3.Query{String: "SELECT 'decoy'"})
		var codes []string
		for {
			msg, err := c.fe.Receive()
			if err != nil {
				break
			}
			if m, ok := msg.(*pgproto3.ErrorResponse); ok {
				codes = append(codes, m.Severity+" "+m.Code)
			}
		}
		if len(codes) == 0 || codes[0] != "ERROR 08P01" {
			t.Fatalf("Query inside COPY answered %v, want ERROR 08P01", codes)
		}
		c.nc.Close()
		_, qs := lastSession(t, tp)
		var got []string
		for _, q := range qs {
			got = append(got, q.Protocol+"|"+q.SQL+"|"+q.Command+"|"+q.SQLState)
		}
		want := []string{"extended|COPY accounts FROM STDIN|COPY|", "simple|COPY accounts FROM STDIN||22P02",
			"simple|DELETE FROM accounts WHERE id = 5|DELETE|", "simple|COPY accounts FROM STDIN||08P01"}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})

	t.Run("hang-up right after a statement", func(t *testing.T) {
		c := dialRaw(t, tp)
		sql := "INSERT INTO accounts SELECT 100 FROM pg_sleep(0.5)"
		// The statement and Terminate in one write, then close: no answer is awaited.
		c.send(&pgproto3.Query{String: sql}, &pgproto3.Terminate{})
		c.nc.Close()
		conn, qs := lastSession(t, tp)
		if len(qs) != 1 || qs[0].SQL != sql || qs[0].Command != Unanswered || qs[0].Error == "" {
			t.Fatalf("records = %+v, want one %s record of %q", qs, Unanswered, sql)
		}
		if conn.Outcome != audit.OutcomeOK || !strings.Contains(conn.Error, "had not answered") {
			t.Fatalf("connection record = %+v", conn)
		}
		// The server did run it.
		deadline := time.Now().Add(10 * time.Second)
		for count("id = 100") != "1" {
			if time.Now().After(deadline) {
				t.Fatal("the unanswered INSERT never ran on the server")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
