package pgproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestPipelineFloodOfClientThatDoesNotRead: a client that pipelines requests without reading a
// response (Sync, the smallest, 5 bytes each) cannot make the node hold more than a bounded amount of
// memory for them: once enough of its requests are unanswered, the proxy stops reading more of them
// (as PostgreSQL does when its answers are not read), instead of queuing a record for each of the
// millions that the kernel's buffers between proxy and server can hold.
func TestPipelineFloodOfClientThatDoesNotRead(t *testing.T) {
	pg := startPostgres(t)
	sp := startSessionProxy(t, pg.target(), &testTokens{token: pg.token})
	port := sp.listen(t, Session{User: "alice"})

	c := loginRaw(t, port, 256<<10) // a receive buffer of several MSS (64 KiB on loopback), so the window reopens when the client reads
	nc := c.nc

	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	var syncs []byte
	for range 64 << 10 {
		syncs, _ = (&pgproto3.Sync{}).Encode(syncs)
	}
	var sent int64
	// Send until the proxy stops reading (a write blocked for a second), or 16 MiB of Syncs.
	for sent < 16<<20 {
		nc.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := nc.Write(syncs)
		sent += int64(n)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	grown := int64(heap()) - int64(before)
	t.Logf("sent %d Syncs; the node's heap grew by %d KiB", sent/5, grown>>10)
	if grown > 16<<20 {
		t.Fatalf("the node holds %d MiB more for %d unanswered Syncs; want a bounded amount (at most 16 MiB)", grown>>20, sent/5)
	}

	// Once the client reads, every Sync is answered, and the session goes on; so does a pipeline of
	// more requests than the limit whose answers the server holds back until its Sync.
	nc.SetDeadline(time.Now().Add(300 * time.Second))             // generous: a loaded CI machine runs the server slowly
	const pipelineLen = maxPendingRequests + maxPendingRequests/4 // more than the limit
	wrote := make(chan error, 1)
	go func() {
		var buf []byte
		if sent%5 != 0 {
			buf = append(buf, syncs[sent%5:5]...) // the rest of a Sync cut by the write deadline
		}
		buf, _ = (&pgproto3.Parse{Name: "s", Query: "select 1"}).Encode(buf)
		for range pipelineLen {
			buf, _ = (&pgproto3.Bind{PreparedStatement: "s"}).Encode(buf)
			buf, _ = (&pgproto3.Execute{}).Encode(buf)
		}
		buf, _ = (&pgproto3.Sync{}).Encode(buf)
		_, err := nc.Write(buf)
		wrote <- err
	}()
	// The Syncs' answers, ReadyForQuery (6 bytes each), read in bulk.
	if _, err := io.CopyN(io.Discard, nc, (sent+4)/5*6); err != nil {
		t.Fatalf("reading the answers to the Syncs: %v", err)
	}
	var ready, complete int64
	for ready < 1 {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("after %d statements of the pipeline: %v", complete, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			ready++
		case *pgproto3.CommandComplete:
			complete++
		case *pgproto3.ErrorResponse:
			t.Fatalf("error: %s %s", m.Code, m.Message)
		}
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if complete != pipelineLen {
		t.Fatalf("%d statements completed, want %d", complete, pipelineLen)
	}
}

// TestCopyEndFloodOutsideCopy: CopyDone and CopyFail outside a COPY are read and ignored by the
// server (protocol §55.2.6), so they get no answer; a stream of them, at line rate, must not queue
// a record per message on the node until some later answer comes. Every byte still reaches the
// server.
func TestCopyEndFloodOutsideCopy(t *testing.T) {
	const n = 100_000
	for _, tc := range []struct {
		name string
		msgs []pgproto3.FrontendMessage
	}{
		{"CopyDone", []pgproto3.FrontendMessage{&pgproto3.CopyDone{}}},
		{"CopyFail", []pgproto3.FrontendMessage{&pgproto3.CopyFail{Message: "x"}}},
		{"CopyData between", []pgproto3.FrontendMessage{&pgproto3.CopyData{Data: []byte("a")}, &pgproto3.CopyDone{}, &pgproto3.Flush{}, &pgproto3.CopyFail{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			one := encode(t, tc.msgs...)
			in := bytes.Repeat(one, n)
			var out bytes.Buffer
			var term atomic.Bool
			var sent atomic.Int64
			w := bufio.NewWriterSize(&out, relayBufferSize)
			tr := newTracker(0, false, func(audit.Query) {})
			if err := clientToServer(fixedBuffers(bufio.NewReaderSize(bytes.NewReader(in), relayBufferSize), w), 1<<30, &term, tr, &sent); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			if !bytes.Equal(out.Bytes(), in) {
				t.Fatalf("relayed %d bytes differ from the %d sent", out.Len(), len(in))
			}
			tr.mu.Lock()
			queued := len(tr.queue)
			tr.mu.Unlock()
			if queued > 1 {
				t.Fatalf("%d requests queued after %d messages with unanswered COPY end markers; want at most 1", queued, n*len(tc.msgs))
			}
		})
	}
}

// loginRaw logs in to the proxy on port with a raw frontend whose socket has a receive buffer of
// rcvbuf bytes, and waits for ReadyForQuery. The connection is closed at cleanup, before the
// proxy's own cleanup waits for its sessions.
func loginRaw(t *testing.T, port, rcvbuf int) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.(*net.TCPConn).SetReadBuffer(rcvbuf)
	c := &rawClient{t: t, nc: nc, fe: pgproto3.NewFrontend(nc, nc)}
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "whoever", "database": "appdb"}})
	c.until(1)
	nc.SetDeadline(time.Time{})
	return c
}

// TestPipelineAfterErrorLongerThanLimit: after an error in an extended-protocol pipeline the server
// discards every request up to the next Sync and answers none of them; a pipeline of more requests
// than the proxy keeps unanswered after such an error still reaches its Sync (the proxy must not wait
// for answers that come only after it), as pgx sends a large batch, reading while it writes.
func TestPipelineAfterErrorLongerThanLimit(t *testing.T) {
	pg := startPostgres(t)
	sp := startSessionProxy(t, pg.target(), &testTokens{token: pg.token})
	c := loginRaw(t, sp.listen(t, Session{User: "alice"}), 1<<20)
	c.nc.SetDeadline(time.Now().Add(60 * time.Second))
	wrote := make(chan error, 1)
	go func() {
		var buf []byte
		buf, _ = (&pgproto3.Parse{Name: "bad", Query: "selec 1"}).Encode(buf)
		for range 2 * maxPendingRequests {
			buf, _ = (&pgproto3.Bind{PreparedStatement: "bad"}).Encode(buf)
			buf, _ = (&pgproto3.Execute{}).Encode(buf)
		}
		buf, _ = (&pgproto3.Sync{}).Encode(buf)
		buf, _ = (&pgproto3.Query{String: "select 1"}).Encode(buf)
		_, err := c.nc.Write(buf)
		wrote <- err
	}()
	codes, tags := c.until(2)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if len(codes) != 1 || codes[0] != "42601" || len(tags) != 1 || tags[0] != "SELECT 1" {
		t.Fatalf("errors %v, command tags %v; want one 42601 for the pipeline, then SELECT 1", codes, tags)
	}
}

// TestDiscardedRequestsAfterError: after an error in an extended-protocol pipeline the server reads
// and discards, unanswered, every request up to the next Sync; a stream of them (no Sync) must not
// queue a record per message on the node. Every byte still reaches the server, and the Sync that ends
// the discarding is queued and answered as before.
func TestDiscardedRequestsAfterError(t *testing.T) {
	const n = 100_000
	var out bytes.Buffer
	var term atomic.Bool
	var sent atomic.Int64
	w := bufio.NewWriterSize(&out, relayBufferSize)
	tr := newTracker(0, false, func(audit.Query) {})
	relay := func(in []byte) {
		t.Helper()
		if err := clientToServer(fixedBuffers(bufio.NewReaderSize(bytes.NewReader(in), relayBufferSize), w), 1<<30, &term, tr, &sent); err != nil {
			t.Fatal(err)
		}
	}
	queued := func() int {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.queue)
	}
	relay(encode(t, &pgproto3.Parse{Name: "bad", Query: "selec 1"}))
	errMsg := encodeB(t, &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42601", Message: "syntax error"})
	tr.server('E', errMsg[5:])
	relay(bytes.Repeat(encode(t, &pgproto3.Bind{PreparedStatement: "bad"}, &pgproto3.Execute{}, &pgproto3.Describe{ObjectType: 'S', Name: "bad"}), n))
	if q := queued(); q > 0 {
		t.Fatalf("%d requests queued for %d requests the server discards; want none", q, 3*n)
	}
	relay(encode(t, &pgproto3.Sync{}, &pgproto3.Query{String: "select 1"}))
	if q := queued(); q != 2 {
		t.Fatalf("%d requests queued after the Sync and a Query; want 2", q)
	}
	tr.server('Z', []byte{'I'})
	if q := queued(); q != 1 || tr.skip {
		t.Fatalf("after the Sync's ReadyForQuery: %d requests queued, skipping %v; want the Query, not skipping", q, tr.skip)
	}
	w.Flush()
	if got := sent.Load(); got != int64(out.Len()) {
		t.Fatalf("relayed %d bytes, counted %d", out.Len(), got)
	}
}

// TestSyncsInsideCopy: a COPY FROM STDIN reads and ignores the Syncs the client sends inside it
// (protocol §55.2.6), answering none and reading on; a stream of them must not queue a record per
// Sync on the node. The COPY still ends and is recorded as before.
func TestSyncsInsideCopy(t *testing.T) {
	const n = 100_000
	var out bytes.Buffer
	var term atomic.Bool
	var sent atomic.Int64
	var recs []audit.Query
	w := bufio.NewWriterSize(&out, relayBufferSize)
	tr := newTracker(0, false, func(q audit.Query) { recs = append(recs, q) })
	relay := func(in []byte) {
		t.Helper()
		if err := clientToServer(fixedBuffers(bufio.NewReaderSize(bytes.NewReader(in), relayBufferSize), w), 1<<30, &term, tr, &sent); err != nil {
			t.Fatal(err)
		}
	}
	queued := func() int {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.queue)
	}
	relay(encode(t, &pgproto3.Query{String: "copy t from stdin"}))
	tr.server('G', encodeB(t, &pgproto3.CopyInResponse{})[5:])
	relay(bytes.Repeat(encode(t, &pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.Sync{}, &pgproto3.Flush{}), n))
	if q := queued(); q > 1 {
		t.Fatalf("%d requests queued for %d Syncs the COPY ignores; want only the COPY's Query", q, n)
	}
	relay(encode(t, &pgproto3.CopyDone{}, &pgproto3.Sync{}))
	if q := queued(); q != 3 {
		t.Fatalf("%d requests queued after CopyDone and a Sync; want 3 (the Query, the end of the COPY, the Sync)", q)
	}
	tr.server('C', append([]byte("COPY 100000"), 0))
	tr.server('Z', []byte{'I'})
	tr.server('Z', []byte{'I'})
	if q := queued(); q != 0 {
		t.Fatalf("%d requests queued after the answers; want none", q)
	}
	if len(recs) != 1 || recs[0].Command != "COPY" || recs[0].Rows != n {
		t.Fatalf("records %+v; want the COPY of %d rows", recs, n)
	}
}
