package pgproxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/jackc/pgx/v5/pgproto3"
)

func encode(t testing.TB, msgs ...pgproto3.FrontendMessage) []byte {
	t.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			t.Fatal(err)
		}
	}
	return buf
}

func encodeB(t testing.TB, msgs ...pgproto3.BackendMessage) []byte {
	t.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			t.Fatal(err)
		}
	}
	return buf
}

// TestClientToServer checks the framing, limits and byte-exact relay of the client side.
func TestClientToServer(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		max     int64
		wantErr any
		relayed bool // the whole input reaches the server
	}{
		{"simple query", encode(t, &pgproto3.Query{String: "SELECT 1"}), 1 << 30, nil, true},
		{"extended protocol", encode(t, &pgproto3.Parse{Name: "s1", Query: "SELECT $1"}, &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("x")}}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			1 << 30, nil, true},
		{"copy data and terminate", encode(t, &pgproto3.CopyData{Data: bytes.Repeat([]byte("a,b\n"), 100000)}, &pgproto3.CopyDone{}, &pgproto3.Terminate{}), 1 << 30, nil, true},
		{"long sql", encode(t, &pgproto3.Query{String: "SELECT '" + strings.Repeat("y", 3*DefaultMaxAuditSQL) + "'"}), 1 << 30, nil, true},
		{"message above the limit", encode(t, &pgproto3.Query{String: "SELECT 1"}, &pgproto3.CopyData{Data: make([]byte, 2000)}), 1000, new(*errTooLarge), false},
		{"length below 4", []byte{'Q', 0, 0, 0, 3}, 1 << 30, new(*errBadLength), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			var term atomic.Bool
			var n atomic.Int64
			w := bufio.NewWriterSize(&out, relayBufferSize)
			tr := newTracker(0, false, func(audit.Query) {})
			err := clientToServer(fixedBuffers(bufio.NewReaderSize(bytes.NewReader(tc.in), relayBufferSize), w), tc.max, &term, tr, &n)
			w.Flush()
			if tc.wantErr == nil && err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != nil && !errors.As(err, tc.wantErr) {
				t.Fatalf("error = %v, want %T", err, tc.wantErr)
			}
			if tc.relayed && (!bytes.Equal(out.Bytes(), tc.in) || n.Load() != int64(len(tc.in))) {
				t.Fatalf("relayed %d bytes (counted %d) differ from the %d sent", out.Len(), n.Load(), len(tc.in))
			}
		})
	}
}

// TestTracker feeds client and server streams through both relay halves and
// checks that the bytes pass unchanged and the records pair up.
func TestTracker(t *testing.T) {
	long := "SELECT '" + strings.Repeat("é", 40000) + "'" // 80,009 bytes > 64 KiB
	rfq := &pgproto3.ReadyForQuery{TxStatus: 'I'}
	cc := func(tag string) *pgproto3.CommandComplete { return &pgproto3.CommandComplete{CommandTag: []byte(tag)} }
	errResp := func(code, msg string) *pgproto3.ErrorResponse {
		return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg}
	}
	row := &pgproto3.DataRow{Values: [][]byte{[]byte("1")}}
	type rec struct {
		sql, protocol, stmt, params, command string
		rows                                 int64
		sqlstate                             string
	}
	tests := []struct {
		name   string
		client []byte
		server []byte
		redact bool
		want   []rec
	}{
		{"multi-statement simple query gives one record per statement",
			encode(t, &pgproto3.Query{String: "CREATE TABLE t (a int); INSERT INTO t VALUES (1),(2); SELECT 'a;b' FROM t -- c;\n;"}),
			encodeB(t, cc("CREATE TABLE"), cc("INSERT 0 2"), &pgproto3.RowDescription{}, row, row, cc("SELECT 2"), rfq),
			false,
			[]rec{{"CREATE TABLE t (a int)", "simple", "", "", "CREATE TABLE", -1, ""}, {"INSERT INTO t VALUES (1),(2)", "simple", "", "", "INSERT", 2, ""},
				{"SELECT 'a;b' FROM t -- c;", "simple", "", "", "SELECT", 2, ""}}},
		{"error stops a simple query string, whose record keeps the whole text",
			encode(t, &pgproto3.Query{String: "SELECT 1/0; SELECT 2"}),
			encodeB(t, errResp("22012", "division by zero"), rfq), false,
			[]rec{{"SELECT 1/0; SELECT 2", "simple", "", "", "", -1, "22012"}}},
		{"empty query",
			encode(t, &pgproto3.Query{String: ""}), encodeB(t, &pgproto3.EmptyQueryResponse{}, rfq), false,
			[]rec{{"", "simple", "", "", "EMPTY", -1, ""}}},
		{"extended protocol with a named statement and parameters",
			encode(t, &pgproto3.Parse{Name: "s1", Query: "SELECT $1, $2, $3"}, &pgproto3.Sync{},
				&pgproto3.Bind{PreparedStatement: "s1", ParameterFormatCodes: []int16{0, 0, 1}, Parameters: [][]byte{[]byte("it's"), nil, {0, 0xff}}},
				&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			encodeB(t, &pgproto3.ParseComplete{}, rfq, &pgproto3.BindComplete{}, &pgproto3.RowDescription{}, row, cc("SELECT 1"), rfq), false,
			[]rec{{"SELECT $1, $2, $3", "extended", "s1", `$1='it''s' $2=NULL $3='\x00ff'`, "SELECT", 1, ""}}},
		{"redacted parameters",
			encode(t, &pgproto3.Parse{Query: "SELECT $1"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("secret")}}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			encodeB(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, row, cc("SELECT 1"), rfq), true,
			[]rec{{"SELECT $1", "extended", "", "[redacted: 1 parameters]", "SELECT", 1, ""}}},
		{"pipeline with a failing statement skips to Sync",
			encode(t, &pgproto3.Parse{Query: "INSERT INTO t VALUES (1)"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Parse{Query: "SELEC 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
				&pgproto3.Parse{Query: "SELECT 3"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			encodeB(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, cc("INSERT 0 1"), errResp("42601", "syntax error"), &pgproto3.ReadyForQuery{TxStatus: 'I'},
				&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, row, cc("SELECT 1"), rfq), false,
			[]rec{{"INSERT INTO t VALUES (1)", "extended", "", "", "INSERT", 1, ""}, {"SELEC 1", "extended", "", "", "", -1, "42601"}, {"SELECT 3", "extended", "", "", "SELECT", 1, ""}}},
		{"portal fetched in batches gives one record",
			encode(t, &pgproto3.Parse{Name: "c", Query: "SELECT g FROM generate_series(1,5) g"}, &pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "c"},
				&pgproto3.Execute{Portal: "p", MaxRows: 2}, &pgproto3.Sync{}, &pgproto3.Execute{Portal: "p", MaxRows: 2}, &pgproto3.Sync{},
				&pgproto3.Execute{Portal: "p", MaxRows: 2}, &pgproto3.Sync{}),
			encodeB(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, row, row, &pgproto3.PortalSuspended{}, &pgproto3.ReadyForQuery{TxStatus: 'T'},
				row, row, &pgproto3.PortalSuspended{}, &pgproto3.ReadyForQuery{TxStatus: 'T'}, row, cc("SELECT 1"), &pgproto3.ReadyForQuery{TxStatus: 'T'}), false,
			[]rec{{"SELECT g FROM generate_series(1,5) g", "extended", "c", "", "SELECT", 5, ""}}},
		{"copy from stdin counts rows, not data",
			encode(t, &pgproto3.Query{String: "COPY t FROM STDIN"}, &pgproto3.CopyData{Data: []byte("1\n2\n")}, &pgproto3.CopyDone{}),
			encodeB(t, &pgproto3.CopyInResponse{}, cc("COPY 2"), rfq), false,
			[]rec{{"COPY t FROM STDIN", "simple", "", "", "COPY", 2, ""}}},
		{"copy fail",
			encode(t, &pgproto3.Query{String: "COPY t FROM STDIN"}, &pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyFail{Message: "stop"}),
			encodeB(t, &pgproto3.CopyInResponse{}, errResp("57014", "COPY from stdin failed: stop"), rfq), false,
			[]rec{{"COPY t FROM STDIN", "simple", "", "", "", -1, "57014"}}},
		{"notifications and notices are passed over",
			encode(t, &pgproto3.Query{String: "LISTEN c"}),
			encodeB(t, cc("LISTEN"), rfq, &pgproto3.NotificationResponse{PID: 1, Channel: "c", Payload: "x"}, &pgproto3.NoticeResponse{Message: "hi"}, &pgproto3.ParameterStatus{Name: "a", Value: "b"}), false,
			[]rec{{"LISTEN c", "simple", "", "", "LISTEN", -1, ""}}},
		{"long sql is cut with its length and hash",
			encode(t, &pgproto3.Query{String: long}), encodeB(t, row, cc("SELECT 1"), rfq), false,
			[]rec{{"", "simple", "", "", "SELECT", 1, ""}}},
		// The audit records what the server ran: a statement's text is the
		// one the server accepted (ParseComplete), dropped at CloseComplete.
		{"decoy Parse of a name in use (42P05) does not change the statement's text",
			encode(t, &pgproto3.Parse{Name: "s1", Query: "DELETE FROM accounts"}, &pgproto3.Sync{},
				&pgproto3.Parse{Name: "s1", Query: "SELECT 'decoy'"}, &pgproto3.Sync{},
				&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			encodeB(t, &pgproto3.ParseComplete{}, rfq, errResp("42P05", `prepared statement "s1" already exists`), rfq,
				&pgproto3.BindComplete{}, cc("DELETE 7"), rfq), false,
			[]rec{{"SELECT 'decoy'", "extended", "s1", "", "", -1, "42P05"}, {"DELETE FROM accounts", "extended", "s1", "", "DELETE", 7, ""}}},
		{"decoy Parse skipped after an error earlier in the pipeline does not change the statement's text",
			encode(t, &pgproto3.Parse{Query: "DELETE FROM accounts"}, &pgproto3.Sync{},
				&pgproto3.Execute{Portal: "nope"}, &pgproto3.Parse{Query: "SELECT 'decoy'"}, &pgproto3.Sync{},
				&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			encodeB(t, &pgproto3.ParseComplete{}, rfq, errResp("34000", `portal "nope" does not exist`), rfq,
				&pgproto3.BindComplete{}, cc("DELETE 7"), rfq), false,
			[]rec{{"", "extended", "", "", "", -1, "34000"}, {"DELETE FROM accounts", "extended", "", "", "DELETE", 7, ""}}},
		{"Close skipped after an error does not drop the statement's text",
			encode(t, &pgproto3.Parse{Name: "s2", Query: "DELETE FROM accounts"}, &pgproto3.Sync{},
				&pgproto3.Execute{Portal: "nope"}, &pgproto3.Close{ObjectType: 'S', Name: "s2"}, &pgproto3.Sync{},
				&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			encodeB(t, &pgproto3.ParseComplete{}, rfq, errResp("34000", `portal "nope" does not exist`), rfq,
				&pgproto3.BindComplete{}, cc("DELETE 7"), rfq), false,
			[]rec{{"", "extended", "", "", "", -1, "34000"}, {"DELETE FROM accounts", "extended", "s2", "", "DELETE", 7, ""}}},
		{"SQL DEALLOCATE and PREPARE of a statement name replace its text",
			encode(t, &pgproto3.Parse{Name: "s1", Query: "SELECT 1"}, &pgproto3.Sync{},
				&pgproto3.Query{String: "DEALLOCATE s1; PREPARE s1 AS DELETE FROM accounts"},
				&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			encodeB(t, &pgproto3.ParseComplete{}, rfq, cc("DEALLOCATE"), cc("PREPARE"), rfq,
				&pgproto3.BindComplete{}, cc("DELETE 7"), rfq), false,
			[]rec{{"DEALLOCATE s1", "simple", "", "", "DEALLOCATE", -1, ""}, {"PREPARE s1 AS DELETE FROM accounts", "simple", "", "", "PREPARE", -1, ""},
				{"PREPARE s1 AS DELETE FROM accounts", "extended", "s1", "", "DELETE", 7, ""}}},
		{"a simple Query destroys the unnamed statement and portal",
			encode(t, &pgproto3.Parse{Query: "SELECT g FROM generate_series(1,5) g"}, &pgproto3.Bind{}, &pgproto3.Execute{MaxRows: 2}, &pgproto3.Sync{},
				&pgproto3.Query{String: "SELECT 1"}, &pgproto3.Execute{MaxRows: 2}, &pgproto3.Sync{}),
			encodeB(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, row, row, &pgproto3.PortalSuspended{}, &pgproto3.ReadyForQuery{TxStatus: 'T'},
				row, cc("SELECT 1"), &pgproto3.ReadyForQuery{TxStatus: 'T'}, errResp("34000", `portal "" does not exist`), &pgproto3.ReadyForQuery{TxStatus: 'E'}), false,
			[]rec{{"SELECT g FROM generate_series(1,5) g", "extended", "", "", "FETCH", 2, ""}, {"SELECT 1", "simple", "", "", "SELECT", 1, ""},
				{"", "extended", "", "", "", -1, "34000"}}},
		// COPY FROM STDIN reads the client's messages up to CopyDone.
		{"Syncs read by an extended-protocol COPY get no answer (libpq)",
			encode(t, &pgproto3.Parse{Query: "COPY t FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
				&pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{}, &pgproto3.Query{String: "DELETE FROM accounts"}),
			encodeB(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.CopyInResponse{}, cc("COPY 1"), rfq, cc("DELETE 7"), rfq), false,
			[]rec{{"COPY t FROM STDIN", "extended", "", "", "COPY", 1, ""}, {"DELETE FROM accounts", "simple", "", "", "DELETE", 7, ""}}},
		{"a Query sent inside COPY data is read by the COPY",
			encode(t, &pgproto3.Query{String: "COPY t FROM STDIN"}, &pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.Query{String: "SELECT 'decoy'"},
				&pgproto3.Query{String: "DELETE FROM accounts"}),
			encodeB(t, &pgproto3.CopyInResponse{}, errResp("08P01", "unexpected message type 0x51 during COPY from stdin"), rfq, cc("DELETE 7"), rfq), false,
			[]rec{{"COPY t FROM STDIN", "simple", "", "", "", -1, "08P01"}, {"DELETE FROM accounts", "simple", "", "", "DELETE", 7, ""}}},
		{"CopyDone after a failed COPY is ignored",
			encode(t, &pgproto3.Query{String: "COPY t FROM STDIN"}, &pgproto3.CopyData{Data: []byte("x\n")}, &pgproto3.CopyDone{},
				&pgproto3.Query{String: "DELETE FROM accounts"}),
			encodeB(t, &pgproto3.CopyInResponse{}, errResp("22P02", "invalid input syntax for type integer"), rfq, cc("DELETE 7"), rfq), false,
			[]rec{{"COPY t FROM STDIN", "simple", "", "", "", -1, "22P02"}, {"DELETE FROM accounts", "simple", "", "", "DELETE", 7, ""}}},
		{"a FATAL after a Query's error adds no record",
			encode(t, &pgproto3.Query{String: "COPY t FROM STDIN"}, &pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.Query{String: "SELECT 'decoy'"}),
			encodeB(t, &pgproto3.CopyInResponse{}, errResp("08P01", "unexpected message type 0x51 during COPY from stdin"),
				&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08P01", Message: "terminating connection because protocol synchronization was lost"}), false,
			[]rec{{"COPY t FROM STDIN", "simple", "", "", "", -1, "08P01"}}},
		{"a request the answers skipped is still recorded",
			encode(t, &pgproto3.Query{String: "SELECT 1"}, &pgproto3.Query{String: "DELETE FROM accounts"}),
			encodeB(t, rfq, cc("DELETE 7"), rfq), false,
			[]rec{{"SELECT 1", "simple", "", "", Unanswered, -1, ""}, {"DELETE FROM accounts", "simple", "", "", "DELETE", 7, ""}}},
		// Multi-statement strings are split as the server splits them.
		{"standard_conforming_strings off, as the server reports it, changes the split",
			encode(t, &pgproto3.Query{String: "SET standard_conforming_strings = off"},
				&pgproto3.Query{String: `SELECT 'a\'; DROP TABLE t; --'; SELECT 2`}),
			encodeB(t, cc("SET"), &pgproto3.ParameterStatus{Name: "standard_conforming_strings", Value: "off"}, rfq,
				&pgproto3.RowDescription{}, row, cc("SELECT 1"), &pgproto3.RowDescription{}, row, cc("SELECT 1"), rfq), false,
			[]rec{{"SET standard_conforming_strings = off", "simple", "", "", "SET", -1, ""},
				{`SELECT 'a\'; DROP TABLE t; --'`, "simple", "", "", "SELECT", 1, ""}, {"SELECT 2", "simple", "", "", "SELECT", 1, ""}}},
		{"a SET inside a string does not change how that string was split",
			encode(t, &pgproto3.Query{String: `SET standard_conforming_strings = off; SELECT 'a\'; SELECT 2; --'`}),
			encodeB(t, cc("SET"), &pgproto3.ParameterStatus{Name: "standard_conforming_strings", Value: "off"},
				row, cc("SELECT 1"), row, cc("SELECT 1"), rfq), false,
			[]rec{{"SET standard_conforming_strings = off", "simple", "", "", "SET", -1, ""},
				{`SELECT 'a\'`, "simple", "", "", "SELECT", 1, ""}, {"SELECT 2", "simple", "", "", "SELECT", 1, ""}}},
		{"statement count that differs from the server's keeps the whole text",
			encode(t, &pgproto3.Query{String: "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2"}),
			encodeB(t, cc("CREATE FUNCTION"), row, cc("SELECT 1"), rfq), false,
			[]rec{{"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2", "simple", "", "", "CREATE FUNCTION", -1, ""},
				{"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2", "simple", "", "", "SELECT", 1, ""}}},
		// FunctionCall records its OID and arguments like Bind parameters.
		{"function call with its arguments",
			encode(t, &pgproto3.FunctionCall{Function: 1598, ArgFormatCodes: []uint16{0, 1}, Arguments: [][]byte{[]byte("it's"), {0xca, 0xfe}}}),
			encodeB(t, &pgproto3.FunctionCallResponse{Result: []byte("x")}, rfq), false,
			[]rec{{"function call: OID 1598", "function", "", `$1='it''s' $2='\xcafe'`, "", -1, ""}}},
		{"function call with redacted arguments",
			encode(t, &pgproto3.FunctionCall{Function: 1598, Arguments: [][]byte{[]byte("secret")}}),
			encodeB(t, errResp("42501", "permission denied"), rfq), true,
			[]rec{{"function call: OID 1598", "function", "", "[redacted: 1 parameters]", "", -1, "42501"}}},
		// A request the server got but never answered is recorded at the end.
		{"query sent just before hang-up is recorded as unanswered",
			encode(t, &pgproto3.Query{String: "SELECT 1"}, &pgproto3.Query{String: "DELETE FROM accounts"}, &pgproto3.Terminate{}),
			encodeB(t, row, cc("SELECT 1"), rfq), false,
			[]rec{{"SELECT 1", "simple", "", "", "SELECT", 1, ""}, {"DELETE FROM accounts", "simple", "", "", Unanswered, -1, ""}}},
		{"pipelined execute sent just before hang-up is recorded as unanswered",
			encode(t, &pgproto3.Parse{Name: "s1", Query: "DELETE FROM accounts WHERE id = $1"}, &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("5")}},
				&pgproto3.Execute{}, &pgproto3.Sync{}, &pgproto3.FunctionCall{Function: 1598}),
			nil, false,
			[]rec{{"DELETE FROM accounts WHERE id = $1", "extended", "s1", "$1='5'", Unanswered, -1, ""},
				{"function call: OID 1598", "function", "", "", Unanswered, -1, ""}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []audit.Query
			tr := newTracker(0, tc.redact, func(q audit.Query) { got = append(got, q) })
			var toServer, toClient bytes.Buffer
			var term atomic.Bool
			var n atomic.Int64
			w := bufio.NewWriter(&toServer)
			if err := clientToServer(fixedBuffers(bufio.NewReader(bytes.NewReader(tc.client)), w), 1<<30, &term, tr, &n); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			w = bufio.NewWriter(&toClient)
			if err := serverToClient(fixedBuffers(bufio.NewReader(bytes.NewReader(tc.server)), w), tr, &n); err != nil {
				t.Fatal(err)
			}
			tr.finish()
			if !bytes.Equal(toServer.Bytes(), tc.client) || !bytes.Equal(toClient.Bytes(), tc.server) {
				t.Fatal("relayed bytes differ from the input")
			}
			if len(got) != len(tc.want) {
				t.Fatalf("%d records, want %d: %+v", len(got), len(tc.want), got)
			}
			for i, q := range got {
				r := rec{q.SQL, q.Protocol, q.Statement, q.Params, q.Command, q.Rows, q.SQLState}
				if tc.name == "long sql is cut with its length and hash" {
					checkHeadTail(t, q, long, DefaultMaxAuditSQL)
					r.sql = ""
				}
				if r != tc.want[i] {
					t.Fatalf("record %d = %+v\nwant       %+v", i, r, tc.want[i])
				}
				if q.Duration < 0 || q.Time.IsZero() {
					t.Fatalf("record %d time %v duration %v", i, q.Time, q.Duration)
				}
			}
		})
	}
}

// TestTrackerDuration checks that a statement's duration runs from its
// request to its completion, not from its RowDescription.
func TestTrackerDuration(t *testing.T) {
	var got []audit.Query
	tr := newTracker(0, false, func(q audit.Query) { got = append(got, q) })
	p := tr.push('Q', nil)
	tr.fill(p, []byte("SELECT pg_sleep(0.05)\x00"), 22, nil)
	tr.server('T', nil)
	time.Sleep(50 * time.Millisecond)
	tr.server('D', nil)
	tr.server('C', []byte("SELECT 1\x00"))
	tr.server('Z', []byte("I"))
	if len(got) != 1 || got[0].Duration < 50*time.Millisecond || got[0].Rows != 1 {
		t.Fatalf("records = %+v", got)
	}
}

func TestSplitStatements(t *testing.T) {
	tests := []struct {
		in     string
		scsOff bool
		want   []string
	}{
		{"SELECT 1", false, []string{"SELECT 1"}},
		{"SELECT 1; SELECT 2;", false, []string{"SELECT 1", "SELECT 2"}},
		{"SELECT ';'; SELECT \"a;b\"", false, []string{"SELECT ';'", "SELECT \"a;b\""}},
		{"SELECT E'\\';'; SELECT 'it''s;'", false, []string{"SELECT E'\\';'", "SELECT 'it''s;'"}},
		{"DO $$ BEGIN PERFORM 1; END $$; SELECT $1", false, []string{"DO $$ BEGIN PERFORM 1; END $$", "SELECT $1"}},
		{"SELECT $fn$ ; $fn$", false, []string{"SELECT $fn$ ; $fn$"}},
		{"/* a; /* nested; */ b; */ SELECT 1; -- x;\n", false, []string{"/* a; /* nested; */ b; */ SELECT 1"}},
		{" ; ;-- only a comment", false, nil},
		{"SELECT 'unterminated;", false, []string{"SELECT 'unterminated;"}},
		// standard_conforming_strings off: backslash escapes in plain and N'' strings, not in B'' or X''.
		{`SELECT 'a\'; DROP TABLE t; --'; SELECT 2`, false, []string{`SELECT 'a\'`, "DROP TABLE t"}},
		{`SELECT 'a\'; DROP TABLE t; --'; SELECT 2`, true, []string{`SELECT 'a\'; DROP TABLE t; --'`, "SELECT 2"}},
		{`SELECT N'a\'; x'; SELECT 2`, true, []string{`SELECT N'a\'; x'`, "SELECT 2"}},
		{`SELECT X'0\'; SELECT 2`, true, []string{`SELECT X'0\'`, "SELECT 2"}},
		{`SELECT U&'d\0061t'; SELECT 2`, false, []string{`SELECT U&'d\0061t'`, "SELECT 2"}},
		// A quote inside a word (identifiers run on through '$') opens a plain string.
		{`SELECT date'2025-01-01'; SELECT 2`, false, []string{`SELECT date'2025-01-01'`, "SELECT 2"}},
		{"SELECT xe'\\'; SELECT 2; --'", false, []string{"SELECT xe'\\'", "SELECT 2"}},
		{"SELECT a$e'\\'; SELECT 2; --'", false, []string{"SELECT a$e'\\'", "SELECT 2"}},
		{"SELECT x$$a$ ; SELECT 2 $a$", false, []string{"SELECT x$$a$", "SELECT 2 $a$"}},
		// A string continued after a newline keeps the E'' escapes of its first part.
		{"SELECT E'a'\n'\\'; DROP TABLE t; --'; SELECT 2", false, []string{"SELECT E'a'\n'\\'; DROP TABLE t; --'", "SELECT 2"}},
		{"SELECT E'a' -- c\n  '\\'; x'; SELECT 2", false, []string{"SELECT E'a' -- c\n  '\\'; x'", "SELECT 2"}},
		{"SELECT E'a' '\\'; SELECT 2", false, []string{"SELECT E'a' '\\'", "SELECT 2"}},
		// -- comments end at \r too.
		{"SELECT 1 --x\r; SELECT 2", false, []string{"SELECT 1 --x", "SELECT 2"}},
	}
	for _, tc := range tests {
		if got := splitStatements(tc.in, !tc.scsOff); strings.Join(got, "|") != strings.Join(tc.want, "|") || len(got) != len(tc.want) {
			t.Errorf("splitStatements(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// checkHeadTail checks the record of a text longer than limit: its head and
// its tail around the elision marker, at most limit bytes together, with the
// whole text's length and SHA-256.
func checkHeadTail(t *testing.T, q audit.Query, text string, limit int) {
	t.Helper()
	sum := sha256.Sum256([]byte(text))
	if q.SQLLength != int64(len(text)) || q.SQLSHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("long sql recorded with length %d, sha %s; want %d, %x", q.SQLLength, q.SQLSHA256, len(text), sum)
	}
	i := strings.Index(q.SQL, "\n…[")
	j := strings.Index(q.SQL, " bytes not recorded]…\n")
	if i < 0 || j < i {
		t.Fatalf("long sql recorded without its elision marker: %.200q", q.SQL)
	}
	head, tail := q.SQL[:i], q.SQL[j+len(" bytes not recorded]…\n"):]
	omitted, err := strconv.Atoi(q.SQL[i+len("\n…[") : j])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(text, head) || !strings.HasSuffix(text, tail) || len(head)+len(tail) > limit ||
		len(head) < limit/2-4 || len(tail) < limit/2-4 || len(head)+omitted+len(tail) != len(text) {
		t.Fatalf("long sql recorded as head %d bytes, tail %d bytes, %d omitted, of %d", len(head), len(tail), omitted, len(text))
	}
}

// TestTrackerLongText checks that a text above the keep limit keeps its head
// and its tail, so padding cannot hide where a statement ends.
func TestTrackerLongText(t *testing.T) {
	padded := "SELECT 1 /*" + strings.Repeat("padding ", 20000) + "*/; DROP TABLE accounts"
	short := padded[:1500] + "; DROP TABLE x"
	multibyte := strings.Repeat("é", 5000) + "ü"
	done := encodeB(t, &pgproto3.CommandComplete{CommandTag: []byte("DROP TABLE")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	tests := []struct {
		name   string
		limit  int
		client []byte
		server []byte
		text   string
	}{
		{"query streamed past the kept bytes", 0, encode(t, &pgproto3.Query{String: padded}), done, padded},
		{"parse streamed past the kept bytes", 0,
			encode(t, &pgproto3.Parse{Name: "s", Query: padded}, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			append(encodeB(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}), done...), padded},
		{"query kept whole but above the limit", 1000, encode(t, &pgproto3.Query{String: short}), done, short},
		{"multibyte text", 1001, encode(t, &pgproto3.Query{String: multibyte}), done, multibyte},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []audit.Query
			tr := newTracker(tc.limit, false, func(q audit.Query) { got = append(got, q) })
			var term atomic.Bool
			var n atomic.Int64
			if err := clientToServer(fixedBuffers(bufio.NewReader(bytes.NewReader(tc.client)), bufio.NewWriter(io.Discard)), 1<<30, &term, tr, &n); err != nil {
				t.Fatal(err)
			}
			if err := serverToClient(fixedBuffers(bufio.NewReader(bytes.NewReader(tc.server)), bufio.NewWriter(io.Discard)), tr, &n); err != nil {
				t.Fatal(err)
			}
			tr.finish()
			if len(got) != 1 {
				t.Fatalf("%d records, want 1", len(got))
			}
			limit := tc.limit
			if limit == 0 {
				limit = DefaultMaxAuditSQL
			}
			checkHeadTail(t, got[0], tc.text, limit)
			if !utf8.ValidString(got[0].SQL) {
				t.Fatal("record is not valid UTF-8")
			}
		})
	}
}

func TestLeadingVerb(t *testing.T) {
	tests := []struct{ sql, want string }{
		{"SELECT 1", "SELECT"},
		{"  select\n1", "SELECT"},
		{"(SELECT 1) UNION (SELECT 2)", "SELECT"},
		{"/* a /* nested */ comment */ DELETE FROM t", "DELETE"},
		{"-- line\r\nupdate t set a = 1", "UPDATE"},
		{"VALUES (1)", "SELECT"},
		{"TABLE t", "SELECT"},
		{"insert into t values (1)", "INSERT"},
		{"MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", "MERGE"},
		{"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", ""}, // WITH can carry any command
		{"CREATE TABLE t2 AS SELECT 1", ""},                           // its tag is SELECT
		{"EXPLAIN ANALYZE DELETE FROM t", ""},
		{"SELECTx 1", ""},
		{"/* unterminated", ""},
		{"-- only a comment", ""},
		{"", ""},
	}
	for _, tc := range tests {
		if got := leadingVerb(tc.sql); got != tc.want {
			t.Errorf("leadingVerb(%q) = %q, want %q", tc.sql, got, tc.want)
		}
	}
}
