package pgproxy

import (
	"bufio"
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/node/audit"
)

// wire concatenates the wire form of protocol messages.
func wire(msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	var b []byte
	for _, m := range msgs {
		b, _ = m.Encode(b)
	}
	return b
}

// FuzzRelay feeds arbitrary bytes to the relay's two parsers: client bytes through
// clientToServer, then server bytes through serverToClient, with one query tracker between them
// (as in a session). Neither may panic or hang; each must pass on exactly a prefix of what it read
// (the relay never changes bytes), all of it when it returns no error; a client message above the
// size limit must stop the relay before any byte of it is sent; every recorded SQL text must be
// valid UTF-8.
func FuzzRelay(f *testing.F) {
	query := wire(&pgproto3.Query{String: "SELECT 1; SELECT 'two'"}, &pgproto3.Terminate{})
	extended := wire(&pgproto3.Parse{Name: "s1", Query: "SELECT $1::int"}, &pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1",
		ParameterFormatCodes: []int16{0}, Parameters: [][]byte{[]byte("42")}}, &pgproto3.Describe{ObjectType: 'P', Name: "p"},
		&pgproto3.Execute{Portal: "p", MaxRows: 1}, &pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{})
	rows := wire(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("x"), DataTypeOID: 23, DataTypeSize: 4, Format: 0}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("1")}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.DataRow{Values: [][]byte{[]byte("two")}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	extRows := wire(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.RowDescription{}, &pgproto3.DataRow{Values: [][]byte{[]byte("42")}},
		&pgproto3.PortalSuspended{}, &pgproto3.CloseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	fatalErr := wire(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"})
	copyIn := wire(&pgproto3.Query{String: "COPY t FROM STDIN"}, &pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyDone{})
	copyResp := wire(&pgproto3.CopyInResponse{OverallFormat: 0}, &pgproto3.CommandComplete{CommandTag: []byte("COPY 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	for _, seed := range [][2][]byte{
		{query, rows},
		{extended, extRows},
		{query, fatalErr},
		{copyIn, copyResp},
		{wire(&pgproto3.Query{String: "SELECT '\xff\xfe'"}), rows},
		{{'Q', 0, 0, 0, 3}, {'Z', 0, 0, 0, 2}},
		{{'Q', 0x7f, 0xff, 0xff, 0xff, 'S'}, {'D', 0x7f, 0xff, 0xff, 0xff}},
		{{'Q', 0, 0, 0, 9, 'S', 'E'}, {'C', 0, 0}},
		{{}, {}},
	} {
		f.Add(seed[0], seed[1])
	}
	const maxMsg = 1 << 16
	f.Fuzz(func(t *testing.T, fromClient, fromServer []byte) {
		var recorded []audit.Query
		tr := newTracker(64, false, func(q audit.Query) { recorded = append(recorded, q) })
		var toServer, toClient bytes.Buffer
		var n1, n2 atomic.Int64
		var terminated atomic.Bool
		w1 := bufio.NewWriter(&toServer)
		err := clientToServer(bufio.NewReaderSize(bytes.NewReader(fromClient), 512), w1, maxMsg, &terminated, tr, &n1)
		w1.Flush()
		if !bytes.HasPrefix(fromClient, toServer.Bytes()) {
			t.Fatalf("client side: sent bytes that are not a prefix of the input")
		}
		if err == nil && toServer.Len() != len(fromClient) {
			t.Fatalf("client side: no error but %d of %d bytes passed on", toServer.Len(), len(fromClient))
		}
		var tl *errTooLarge
		if errors.As(err, &tl) && (tl.size <= maxMsg || toServer.Len()+5 > len(fromClient)) {
			t.Fatalf("client side: %v after passing on %d of %d bytes", err, toServer.Len(), len(fromClient))
		}
		if n1.Load() != int64(toServer.Len()) {
			t.Fatalf("client side: counted %d bytes, sent %d", n1.Load(), toServer.Len())
		}
		w2 := bufio.NewWriter(&toClient)
		err = serverToClient(bufio.NewReaderSize(bytes.NewReader(fromServer), 512), w2, tr, &n2)
		w2.Flush()
		if !bytes.HasPrefix(fromServer, toClient.Bytes()) {
			t.Fatalf("server side: sent bytes that are not a prefix of the input")
		}
		if err == nil && toClient.Len() != len(fromServer) {
			t.Fatalf("server side: no error but %d of %d bytes passed on", toClient.Len(), len(fromServer))
		}
		tr.finish()
		for _, q := range recorded {
			if !utf8.ValidString(q.SQL) {
				t.Fatalf("recorded SQL is not valid UTF-8: %q", q.SQL)
			}
		}
	})
}

// TestServerLongErrorResponse is the crash FuzzRelay found: the relay keeps up to smallKeep bytes
// of a CommandComplete, ErrorResponse or ReadyForQuery for the query log, and a server message of
// those types longer than its first buffer (1 KiB) panicked the node. A real server sends one for
// RAISE EXCEPTION with a long text.
func TestServerLongErrorResponse(t *testing.T) {
	for _, size := range []int{1000, 1100, smallKeep, 3 * smallKeep} {
		msg := wire(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "P0001", Message: string(bytes.Repeat([]byte("x"), size))},
			&pgproto3.ReadyForQuery{TxStatus: 'I'})
		tr := newTracker(64, false, func(audit.Query) {})
		var out bytes.Buffer
		var n atomic.Int64
		w := bufio.NewWriter(&out)
		if err := serverToClient(bufio.NewReader(bytes.NewReader(msg)), w, tr, &n); err != nil {
			t.Fatalf("%d-byte message: %v", size, err)
		}
		w.Flush()
		if !bytes.Equal(out.Bytes(), msg) {
			t.Fatalf("%d-byte message: relayed %d of %d bytes, or changed them", size, out.Len(), len(msg))
		}
	}
}
