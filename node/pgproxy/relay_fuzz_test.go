package pgproxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
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
// (as in a session). growClient and growServer stretch one message of each stream (see stretch),
// so that inputs of a few bytes reach messages larger than the relay's buffer and than what it
// keeps for the audit (bindKeep, smallKeep, the SQL limit), and above the size limit. Neither may panic or hang; each must pass on exactly a prefix of what it read
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
		f.Add(seed[0], seed[1], uint32(0), uint32(0))
	}
	// Each tracked client message type with a body above what is kept of it (the crash of
	// issue 13), and long server messages.
	bind := wire(&pgproto3.Bind{PreparedStatement: "s1", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{[]byte("xy")}}, &pgproto3.Sync{})
	f.Add(bind, extRows, uint32(bindKeep+1000)<<8, uint32(0))
	f.Add(wire(&pgproto3.FunctionCall{Function: 1, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{[]byte("ab")}}, &pgproto3.Sync{}), extRows, uint32(smallKeep+1)<<8, uint32(0))
	f.Add(wire(&pgproto3.Parse{Name: "s", Query: "SELECT 1", ParameterOIDs: []uint32{25}}, &pgproto3.Sync{}), extRows, uint32(4000)<<8, uint32(0))
	f.Add(wire(&pgproto3.Query{String: "SELECT 1\x00x"}), rows, uint32(70000)<<8, uint32(3)<<8|5)
	f.Add(copyIn, copyResp, uint32(200000)<<8|1, uint32(5000)<<8|1)
	f.Add(query, rows, uint32(maxRelayFuzzMsg+1)<<8, uint32(0))
	f.Fuzz(func(t *testing.T, fromClient, fromServer []byte, growClient, growServer uint32) {
		fromClient, fromServer = stretch(fromClient, growClient), stretch(fromServer, growServer)
		const maxMsg = maxRelayFuzzMsg
		var recorded []audit.Query
		tr := newTracker(64, false, func(q audit.Query) { recorded = append(recorded, q) })
		var toServer, toClient bytes.Buffer
		var n1, n2 atomic.Int64
		var terminated atomic.Bool
		w1 := bufio.NewWriter(&toServer)
		err := clientToServer(fixedBuffers(bufio.NewReaderSize(bytes.NewReader(fromClient), 512), w1), maxMsg, &terminated, tr, &n1)
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
		err = serverToClient(fixedBuffers(bufio.NewReaderSize(bytes.NewReader(fromServer), 512), w2), tr, &n2)
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
		if err := serverToClient(fixedBuffers(bufio.NewReader(bytes.NewReader(msg)), w), tr, &n); err != nil {
			t.Fatalf("%d-byte message: %v", size, err)
		}
		w.Flush()
		if !bytes.Equal(out.Bytes(), msg) {
			t.Fatalf("%d-byte message: relayed %d of %d bytes, or changed them", size, out.Len(), len(msg))
		}
	}
}

// maxRelayFuzzMsg is FuzzRelay's client message size limit: above bindKeep and the relay buffer, so
// that messages longer than both still pass, and below what stretch can make.
const maxRelayFuzzMsg = 1 << 18

// stretch grows one message of a framed stream b (type byte, int32 length, body): the low 8 bits of
// grow pick the message (its index in the stream), the next 19 bits say by how many bytes its body
// grows (0 leaves b as it is). The new bytes repeat the body's second-to-last byte and go in
// before its last one, so a NUL-terminated text stays terminated; the length field is updated,
// nothing else. A stream whose framing ends before that message is returned as it is.
func stretch(b []byte, grow uint32) []byte {
	index, n := int(grow&0xff), int(grow>>8)&(1<<19-1)
	if n == 0 {
		return b
	}
	for at := 0; at+5 <= len(b); index-- {
		length := int(int32(binary.BigEndian.Uint32(b[at+1:])))
		if length < 4 || at+1+length > len(b) {
			return b
		}
		end := at + 1 + length
		if index > 0 {
			at = end
			continue
		}
		fill := byte('x')
		ins := end
		if length > 4 {
			ins = end - 1
		}
		if length > 5 {
			fill = b[end-2]
		}
		out := make([]byte, 0, len(b)+n)
		out = append(out, b[:ins]...)
		out = append(out, bytes.Repeat([]byte{fill}, n)...)
		out = append(out, b[ins:]...)
		binary.BigEndian.PutUint32(out[at+1:], uint32(length+n))
		return out
	}
	return b
}
