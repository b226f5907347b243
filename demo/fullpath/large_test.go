package fullpath_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/node/audit"
)

func md5hex(b []byte) string {
	s := md5.Sum(b)
	return hex.EncodeToString(s[:])
}

func sha256hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// bigText is n bytes of text that does not compress to a repeat of one byte.
func bigText(n int, seed string) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%s-%d;", seed, i)
	}
	return b.String()[:n]
}

// wantLong checks the record of a long statement: its text starts like sql and is cut, and its
// length and SHA-256 are those of the whole of sql.
func (e *env) wantLong(t *testing.T, marker, command string, rows int64, sql string) audit.Query {
	t.Helper()
	q := e.want(t, marker, command, rows, "")
	if q.SQLLength != int64(len(sql)) || q.SQLSHA256 != sha256hex(sql) || len(q.SQL) >= len(sql) || !strings.HasPrefix(sql, q.SQL[:32]) {
		t.Fatalf("record of the %d-byte statement %q: %d bytes logged (%.40q), length %d, sha %s; want length %d, sha %s",
			len(sql), marker, len(q.SQL), q.SQL, q.SQLLength, q.SQLSHA256, len(sql), sha256hex(sql))
	}
	return q
}

// testLargeMessages sends client messages of several MB (Query, Parse, Bind, FunctionCall,
// CopyData) through the whole path, in simple, extended and pipelined use, and checks what comes
// back (length and md5) and the query log. A Bind larger than what the relay keeps for the audit
// used to panic the node and end every session.
func testLargeMessages(t *testing.T, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgconn.Connect(ctx, e.conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	// A session open before, during and after, that must keep working.
	bystander, err := pgconn.Connect(ctx, e.conn)
	if err != nil {
		t.Fatal(err)
	}
	defer bystander.Close(context.Background())
	checkBystander := func(t *testing.T) {
		t.Helper()
		res := bystander.ExecParams(ctx, "SELECT 'bystander'", nil, nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "bystander" {
			t.Fatalf("another session: %v %q", res.Err, res.Rows)
		}
	}
	checkBystander(t)
	defer checkBystander(t) // and after each subtest below

	t.Run("simple query of 3 MB", func(t *testing.T) {
		text := bigText(3<<20, "simple")
		sql := "SELECT /*fp_big_simple*/ length(x), md5(x), x FROM (SELECT '" + text + "'::text AS x) s"
		res, err := c.Exec(ctx, sql).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		row := res[0].Rows[0]
		if string(row[0]) != strconv.Itoa(len(text)) || string(row[1]) != md5hex([]byte(text)) || len(row[2]) != len(text) || md5hex(row[2]) != md5hex([]byte(text)) {
			t.Fatalf("got length %s md5 %s and %d bytes back; want %d, %s", row[0], row[1], len(row[2]), len(text), md5hex([]byte(text)))
		}
		e.wantLong(t, "fp_big_simple", "SELECT", 1, sql)
	})

	checkBystander(t)
	t.Run("extended: 3 MB Parse and 4 MB Bind", func(t *testing.T) {
		text := bigText(3<<20, "parse")
		param := []byte(bigText(4<<20, "bind"))
		sql := "SELECT /*fp_big_ext*/ length($1::bytea), md5($1::bytea), $1::bytea, length('" + text + "')"
		res := c.ExecParams(ctx, sql, [][]byte{param}, nil, []int16{1}, []int16{0, 0, 1, 0}).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		row := res.Rows[0]
		if string(row[0]) != strconv.Itoa(len(param)) || string(row[1]) != md5hex(param) || !bytes.Equal(row[2], param) || string(row[3]) != strconv.Itoa(len(text)) {
			t.Fatalf("got %s %s, %d bytes, %s; want %d %s, the parameter, %d", row[0], row[1], len(row[2]), row[3], len(param), md5hex(param), len(text))
		}
		q := e.wantLong(t, "fp_big_ext", "SELECT", 1, sql)
		if q.Protocol != "extended" || q.Params == "" {
			t.Fatalf("record = %+v; want protocol extended with its parameters", q)
		}
	})

	checkBystander(t)
	t.Run("pipelined extended batch of 2-4 MB Binds", func(t *testing.T) {
		b := &pgconn.Batch{}
		var params [][]byte
		for i, size := range []int{2 << 20, 3 << 20, 4 << 20} {
			p := []byte(bigText(size, fmt.Sprint("batch", i)))
			params = append(params, p)
			b.ExecParams(fmt.Sprintf("SELECT /*fp_big_batch_%d*/ length($1::bytea), md5($1::bytea)", i), [][]byte{p}, nil, []int16{1}, nil)
		}
		res, err := c.ExecBatch(ctx, b).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range params {
			if r := res[i]; r.Err != nil || string(r.Rows[0][0]) != strconv.Itoa(len(p)) || string(r.Rows[0][1]) != md5hex(p) {
				t.Fatalf("batch %d: %v %q; want %d %s", i, r.Err, r.Rows, len(p), md5hex(p))
			}
			e.want(t, fmt.Sprintf("fp_big_batch_%d", i), "SELECT", 1, "")
		}
	})

	checkBystander(t)
	t.Run("raw pipeline: Query, FunctionCall and CopyData of 3 MB", func(t *testing.T) {
		fe := rawSession(ctx, t, e.Resource.Address)
		rows := fe.query(t, "SELECT 'md5(bytea)'::regprocedure::oid, 'length(bytea)'::regprocedure::oid")
		md5OID, _ := strconv.ParseUint(rows[0][0], 10, 32)
		lengthOID, _ := strconv.ParseUint(rows[0][1], 10, 32)
		fe.query(t, "CREATE TABLE fp_big_copy (v text)")

		text := bigText(3<<20, "pipeline")
		arg := []byte(bigText(3<<20, "fastpath"))
		line1, line2 := bigText(3<<20, "copy-one"), bigText(3<<20, "copy-two")
		sql := "SELECT /*fp_big_pipe*/ md5('" + text + "')"
		copySQL := "COPY fp_big_copy FROM STDIN /*fp_big_copy_in*/"
		// One write of everything, without waiting for a response (COPY data included).
		fe.send(t, &pgproto3.Query{String: sql},
			&pgproto3.FunctionCall{Function: uint32(md5OID), ArgFormatCodes: []uint16{1}, Arguments: [][]byte{arg}, ResultFormatCode: 0},
			&pgproto3.FunctionCall{Function: uint32(lengthOID), ArgFormatCodes: []uint16{1}, Arguments: [][]byte{arg}, ResultFormatCode: 0},
			&pgproto3.Query{String: copySQL},
			&pgproto3.CopyData{Data: []byte(line1 + "\n")}, &pgproto3.CopyData{Data: []byte(line2 + "\n")}, &pgproto3.CopyDone{},
			&pgproto3.Query{String: "SELECT /*fp_big_after*/ length(v), md5(v) FROM fp_big_copy ORDER BY v"})
		got := fe.results(t, 5)
		want := [][]string{{md5hex([]byte(text))}, {md5hex(arg)}, {strconv.Itoa(len(arg))}, {"COPY 2"},
			{strconv.Itoa(len(line1)), md5hex([]byte(line1)), strconv.Itoa(len(line2)), md5hex([]byte(line2))}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("pipeline results = %.300v; want %.300v", got, want)
		}
		e.wantLong(t, "fp_big_pipe", "SELECT", 1, sql)
		e.want(t, "fp_big_copy_in", "COPY", 2, "")
		e.want(t, "fp_big_after", "SELECT", 2, "")
		var calls int
		for _, q := range e.queries(t) {
			if q.Protocol == "function" && q.SQLState == "" && q.Resource == demo.ResourceName {
				calls++
			}
		}
		if calls != 2 {
			t.Fatalf("%d function call records, want 2", calls)
		}
	})
}

// rawFrontend is a protocol-level client session through the tunnel.
type rawFrontend struct {
	conn net.Conn
	fe   *pgproto3.Frontend
}

// rawSession logs in to addr (the resource's loopback address) with a StartupMessage; the node
// answers AuthenticationOk without asking for a password.
func rawSession(ctx context.Context, t *testing.T, addr string) *rawFrontend {
	t.Helper()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(90 * time.Second))
	r := &rawFrontend{conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
	r.send(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": demo.Role, "database": demo.Database}})
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			t.Fatalf("login: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return r
		}
	}
}

// send writes msgs in one write from a goroutine of its own, so that a large pipeline cannot
// deadlock against the responses; a failed write fails the test when the responses are read.
func (r *rawFrontend) send(t *testing.T, msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			t.Fatal(err)
		}
	}
	go r.conn.Write(buf)
}

// query runs one simple Query and returns its rows as text.
func (r *rawFrontend) query(t *testing.T, sql string) [][]string {
	t.Helper()
	r.send(t, &pgproto3.Query{String: sql})
	var rows [][]string
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			var row []string
			for _, v := range m.Values {
				row = append(row, string(v))
			}
			rows = append(rows, row)
		case *pgproto3.ErrorResponse:
			t.Fatalf("%s: %s %s", sql, m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return rows
		}
	}
}

// results reads n responses ending in ReadyForQuery: each is the values of its DataRows, its
// FunctionCallResponse's result, or the tag of a COPY.
func (r *rawFrontend) results(t *testing.T, n int) [][]string {
	t.Helper()
	var out [][]string
	var cur []string
	for len(out) < n {
		msg, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("after %d responses: %v", len(out), err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			for _, v := range m.Values {
				cur = append(cur, string(v))
			}
		case *pgproto3.FunctionCallResponse:
			cur = append(cur, string(m.Result))
		case *pgproto3.CommandComplete:
			if tag := string(m.CommandTag); strings.HasPrefix(tag, "COPY") {
				cur = append(cur, tag)
			}
		case *pgproto3.ErrorResponse:
			t.Fatalf("response %d: %s %s", len(out), m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			out = append(out, cur)
			cur = nil
		}
	}
	return out
}
