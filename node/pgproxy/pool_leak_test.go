package pgproxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/jackc/pgx/v5/pgproto3"
)

// teeConn records every byte the proxy sends to a client.
type teeConn struct {
	net.Conn
	mu  sync.Mutex
	got bytes.Buffer
}

func (c *teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.got.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

// chunkedWrite writes b in pieces of random sizes (1 byte to 100 KiB) with an occasional pause,
// so the proxy's reads come back short at every point of a message and its directions go idle
// (giving their pooled buffers back) in the middle of a pipeline.
func chunkedWrite(w io.Writer, rng *rand.Rand, b []byte) error {
	for len(b) > 0 {
		var n int
		switch rng.IntN(4) {
		case 0:
			n = 1 + rng.IntN(8)
		case 1:
			n = 1 + rng.IntN(2<<10)
		default:
			n = 1 + rng.IntN(100<<10)
		}
		n = min(n, len(b))
		if _, err := w.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
		if rng.IntN(8) == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// TestPooledBuffersStayInTheirSession runs sessions at once through the real relay, each sending
// its own marker in messages of varied sizes (a few bytes to several times the relay's 64 KiB
// buffer), pipelined, written in random pieces, with errors mid-pipeline. No byte of one session
// may reach another's client, server or audit records (the relay's buffers and the tracker's
// request entries are recycled between and within sessions), each session gets back exactly what
// it sent, and every statement is recorded exactly once with its own text and tag.
func TestPooledBuffersStayInTheirSession(t *testing.T) {
	pg := startPostgres(t)
	tp := startProxy(t, Config{Tokens: &testTokens{token: pg.token}}, pg.target())

	const sessions = 4
	const rounds = 6
	sizes := []int{3, 200, 1000, 1 << 10, 5000, 64<<10 - 7, 64 << 10, 150 << 10}
	markers := make([]string, sessions)
	for i := range markers {
		markers[i] = fmt.Sprintf("<mk%c%c%c>", 'A'+i, 'Q'+i, 'f'+i)
	}
	payload := func(s, n int) string { return markerPayload(markers[s], n) }

	type result struct {
		stream []byte
		err    error
	}
	results := make([]result, sessions)
	var wg sync.WaitGroup
	for s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream, err := runMarkerSession(tp, s, rounds, sizes, markers[s])
			results[s] = result{stream, err}
		}()
	}
	wg.Wait()
	for s, r := range results {
		if r.err != nil {
			t.Fatalf("session %d: %v", s, r.err)
		}
		for o, m := range markers {
			if o != s && bytes.Contains(r.stream, []byte(m)) {
				t.Errorf("session %d's client got session %d's marker %q", s, o, m)
			}
		}
	}
	tp.waitIdle(t)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := tp.audit.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	conns, err := tp.audit.Connections(ctx, audit.ConnectionFilter{})
	if err != nil || len(conns) != sessions {
		t.Fatalf("audit connections = %d, %v; want %d", len(conns), err, sessions)
	}
	for _, c := range conns {
		qs, err := tp.audit.Queries(ctx, audit.QueryFilter{ConnectionID: c.ID})
		if err != nil {
			t.Fatal(err)
		}
		own := -1
		for s, m := range markers {
			for _, q := range qs {
				if strings.Contains(q.SQL, m) || strings.Contains(q.Params, m) {
					if own >= 0 && own != s {
						t.Errorf("connection %d: records hold markers of sessions %d and %d: %+v", c.ID, own, s, q)
					}
					own = s
				}
			}
		}
		if own < 0 {
			t.Fatalf("connection %d: no record holds a marker", c.ID)
		}
		// Per round and size: the Query, a failing Query, a Query of two statements, the extended
		// SELECT, the extended failure.
		want := map[string]int{}
		for range rounds {
			for _, n := range sizes {
				p := payload(own, n)
				want[recordKey(audit.Query{Protocol: "simple", SQL: "SELECT '" + p + "'", Command: "SELECT", Rows: 1})]++
				want[recordKey(audit.Query{Protocol: "simple", SQL: fmt.Sprintf("%s%d-%s", divisionSQL, n, markers[own]), SQLState: "22012"})]++
				want[recordKey(audit.Query{Protocol: "simple", SQL: "SELECT '" + p[:min(n, 40)] + "'", Command: "SELECT", Rows: 1})]++
				want[recordKey(audit.Query{Protocol: "simple", SQL: fmt.Sprintf("SELECT %d", n), Command: "SELECT", Rows: 1})]++
				want[recordKey(audit.Query{Protocol: "extended", SQL: "SELECT $1::text", Params: "$1='" + p, Command: "SELECT", Rows: 1})]++
				want[recordKey(audit.Query{Protocol: "extended", SQL: fmt.Sprintf("%s%d-%s", divisionSQL, n, markers[own]), SQLState: "22012"})]++
			}
		}
		got := map[string]int{}
		for _, q := range qs {
			got[recordKey(q)]++
		}
		for k, n := range want {
			if got[k] != n {
				t.Errorf("connection %d (session %d): %d records %q, want %d", c.ID, own, got[k], k, n)
			}
		}
		for k, n := range got {
			if want[k] == 0 {
				t.Errorf("connection %d (session %d): %d unexpected records %q", c.ID, own, n, k)
			}
		}
	}
}

// recordKey is what TestPooledBuffersStayInTheirSession compares of a record: its texts cut to
// their first 80 bytes (the audit limit cuts the SQL, the parameter display cuts values).
func recordKey(q audit.Query) string {
	rows := ""
	if q.SQLState == "" {
		rows = fmt.Sprint(q.Rows)
	}
	params := strings.TrimSuffix(q.Params, "'")
	return fmt.Sprintf("%s|%s|%s|%s|%s|%s", q.Protocol, q.SQL[:min(80, len(q.SQL))], params[:min(80, len(params))], q.Command, rows, q.SQLState)
}

// divisionSQL fails when executed (not when planned: random() is not folded).
const divisionSQL = "SELECT 1/(random()*0)::int -- "

// markerPayload is n bytes of marker repeated.
func markerPayload(marker string, n int) string {
	return strings.Repeat(marker, n/len(marker)+1)[:n]
}

// runMarkerSession logs in, sends rounds of pipelined requests carrying session s's marker, checks
// each answer is what it sent, and returns every byte the proxy sent it.
func runMarkerSession(tp *testProxy, s, rounds int, sizes []int, marker string) ([]byte, error) {
	nc, err := net.DialTimeout("tcp", tp.addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(90 * time.Second))
	tc := &teeConn{Conn: nc}
	fe := pgproto3.NewFrontend(tc, nc)
	rng := rand.New(rand.NewPCG(uint64(s), 20))
	send := func(msgs ...pgproto3.FrontendMessage) error {
		var buf []byte
		for _, m := range msgs {
			var err error
			if buf, err = m.Encode(buf); err != nil {
				return err
			}
		}
		return chunkedWrite(nc, rng, buf)
	}
	// rows reads through one ReadyForQuery, returning the DataRow values and SQLSTATEs.
	rows := func() (vals, codes []string, err error) {
		for {
			msg, err := fe.Receive()
			if err != nil {
				return nil, nil, err
			}
			switch m := msg.(type) {
			case *pgproto3.DataRow:
				vals = append(vals, string(m.Values[0]))
			case *pgproto3.ErrorResponse:
				codes = append(codes, m.Code)
			case *pgproto3.ReadyForQuery:
				return vals, codes, nil
			}
		}
	}
	if err := send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "whoever", "database": "appdb"}}); err != nil {
		return nil, err
	}
	if _, _, err := rows(); err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	for r := range rounds {
		// One round is one pipeline: per size a Query, an extended SELECT and an extended
		// statement that fails, each with its Sync, all written before any answer is read.
		var msgs []pgproto3.FrontendMessage
		for _, n := range sizes {
			msgs = append(msgs,
				&pgproto3.Query{String: "SELECT '" + markerPayload(marker, n) + "'"},
				&pgproto3.Query{String: fmt.Sprintf("%s%d-%s", divisionSQL, n, marker)},
				&pgproto3.Query{String: fmt.Sprintf("SELECT '%s'; SELECT %d", markerPayload(marker, min(n, 40)), n)},
				&pgproto3.Parse{Query: "SELECT $1::text"},
				&pgproto3.Bind{Parameters: [][]byte{[]byte(markerPayload(marker, n))}},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
				&pgproto3.Parse{Query: fmt.Sprintf("%s%d-%s", divisionSQL, n, marker)},
				&pgproto3.Bind{},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			)
		}
		errc := make(chan error, 1)
		go func() { errc <- send(msgs...) }()
		for _, n := range sizes {
			want := markerPayload(marker, n)
			vals, codes, err := rows()
			if err != nil || len(vals) != 1 || vals[0] != want || len(codes) != 0 {
				return nil, fmt.Errorf("round %d size %d query: %d rows, errors %v, %v", r, n, len(vals), codes, err)
			}
			if _, codes, err = rows(); err != nil || len(codes) != 1 || codes[0] != "22012" {
				return nil, fmt.Errorf("round %d size %d failing query: errors %v, %v", r, n, codes, err)
			}
			vals, codes, err = rows()
			if err != nil || len(vals) != 2 || vals[0] != want[:min(n, 40)] || vals[1] != fmt.Sprint(n) || len(codes) != 0 {
				return nil, fmt.Errorf("round %d size %d two statements: %d rows, errors %v, %v", r, n, len(vals), codes, err)
			}
			for _, what := range []string{"extended"} {
				vals, codes, err := rows()
				if err != nil {
					return nil, fmt.Errorf("round %d size %d %s: %w", r, n, what, err)
				}
				if len(codes) != 0 || len(vals) != 1 || vals[0] != want {
					return nil, fmt.Errorf("round %d size %d %s: got %d rows (equal to what was sent: %v), errors %v", r, n, what, len(vals), len(vals) == 1 && vals[0] == want, codes)
				}
			}
			_, codes, err = rows()
			if err != nil {
				return nil, fmt.Errorf("round %d size %d division: %w", r, n, err)
			}
			if len(codes) != 1 || codes[0] != "22012" {
				return nil, fmt.Errorf("round %d size %d division: errors %v, want [22012]", r, n, codes)
			}
		}
		if err := <-errc; err != nil {
			return nil, err
		}
	}
	if err := send(&pgproto3.Terminate{}); err != nil {
		return nil, err
	}
	io.Copy(io.Discard, tc)
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return bytes.Clone(tc.got.Bytes()), nil
}

// TestRecycledRequestsRecordEveryStatement runs many rounds of pipelined COPY (completed and
// failed), extended-protocol inserts, errors mid-pipeline and plain queries through one session,
// so the tracker's request entries are recycled many times over, then hangs up with requests the
// server has not answered. Every statement is recorded exactly once with its own text and tag,
// and the unanswered ones as UNANSWERED.
func TestRecycledRequestsRecordEveryStatement(t *testing.T) {
	pg := startPostgres(t)
	tp := startProxy(t, Config{Tokens: &testTokens{token: pg.token}}, pg.target())
	setup := dialRaw(t, tp)
	setup.send(&pgproto3.Query{String: "CREATE TABLE recycled (v text)"})
	if codes, _ := setup.until(1); len(codes) != 0 {
		t.Fatalf("create table: %v", codes)
	}
	setup.send(&pgproto3.Terminate{})
	tp.waitIdle(t)

	c := dialRaw(t, tp)
	const rounds = 30
	want := map[string]int{}
	for r := range rounds {
		c.send(
			&pgproto3.Query{String: fmt.Sprintf("COPY recycled FROM STDIN -- %d", r)},
			&pgproto3.CopyData{Data: []byte(fmt.Sprintf("copied %d\n", r))},
			&pgproto3.CopyDone{},
			&pgproto3.Parse{Query: fmt.Sprintf("INSERT INTO recycled VALUES ($1) -- %d", r)},
			&pgproto3.Bind{Parameters: [][]byte{[]byte(fmt.Sprintf("bound %d", r))}},
			&pgproto3.Execute{},
			&pgproto3.Parse{Query: fmt.Sprintf("SELECT 1/(random()*0)::int -- %d", r)},
			&pgproto3.Bind{},
			&pgproto3.Execute{},
			&pgproto3.Parse{Query: fmt.Sprintf("SELECT 'skipped' -- %d", r)}, // discarded after the error
			&pgproto3.Bind{},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
			&pgproto3.Query{String: fmt.Sprintf("COPY recycled FROM STDIN -- failed %d", r)},
			&pgproto3.CopyData{Data: []byte("never\n")},
			&pgproto3.CopyFail{Message: "given up"},
			&pgproto3.Query{String: fmt.Sprintf("SELECT %d", r)},
		)
		codes, tags := c.until(4)
		if strings.Join(codes, " ") != "22012 57014" || strings.Join(tags, " ") != "COPY 1 INSERT 0 1 SELECT 1" {
			t.Fatalf("round %d: errors %v, tags %v", r, codes, tags)
		}
		want[fmt.Sprintf("simple|COPY recycled FROM STDIN -- %d||COPY|1|", r)]++
		want[fmt.Sprintf("extended|INSERT INTO recycled VALUES ($1) -- %d|$1='bound %d|INSERT|1|", r, r)]++
		want[fmt.Sprintf("extended|SELECT 1/(random()*0)::int -- %d||||22012", r)]++
		want[fmt.Sprintf("simple|COPY recycled FROM STDIN -- failed %d||||57014", r)]++
		want[fmt.Sprintf("simple|SELECT %d||SELECT|1|", r)]++
	}
	// Requests the server has not answered when the client hangs up: the proxy then closes the
	// server connection, so they never are.
	c.send(
		&pgproto3.Query{String: "SELECT pg_sleep(30) -- pending query"},
		&pgproto3.Parse{Query: "SELECT 'pending extended'"},
		&pgproto3.Bind{},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	)
	c.nc.Close()
	want["simple|SELECT pg_sleep(30) -- pending query||"+Unanswered+"|-1|"]++
	want["extended|SELECT 'pending extended'||"+Unanswered+"|-1|"]++

	_, qs := lastSession(t, tp)
	got := map[string]int{}
	for _, q := range qs {
		got[recordKey(q)]++
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%d records %q, want %d", got[k], k, n)
		}
	}
	for k, n := range got {
		if want[k] == 0 {
			t.Errorf("%d unexpected records %q", n, k)
		}
	}
}
