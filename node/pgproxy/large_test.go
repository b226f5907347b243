package pgproxy

import (
	"bufio"
	"bytes"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/node/audit"
)

// TestClientMessagesLargerThanKept is the node-wide crash of issue 13: a tracked client message
// longer than what the relay keeps of it for the audit (a Bind with a multi-MB bytea parameter as
// pgx sends it, a large FunctionCall argument, a Parse with a long parameter type list, a Query
// with a NUL early in it) handed copyN a nil *sqlTail inside a non-nil io.Writer, and writing to
// it panicked the whole node. Each must pass through byte for byte.
func TestClientMessagesLargerThanKept(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), (3<<20)/16) // 3 MiB
	manyTypes := make([]uint32, 65535)
	for i := range manyTypes {
		manyTypes[i] = 25
	}
	tests := []struct {
		name string
		msgs []pgproto3.FrontendMessage
	}{
		{"bind with a 3 MiB parameter", []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT md5($1::bytea)"},
			&pgproto3.Bind{ParameterFormatCodes: []int16{1}, Parameters: [][]byte{big}}, &pgproto3.Execute{}, &pgproto3.Sync{}}},
		{"bind with a parameter just above the kept part", []pgproto3.FrontendMessage{
			&pgproto3.Bind{Parameters: [][]byte{bytes.Repeat([]byte("b"), bindKeep)}}, &pgproto3.Sync{}}},
		{"function call with a 3 MiB argument", []pgproto3.FrontendMessage{
			&pgproto3.FunctionCall{Function: 1, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{big}}, &pgproto3.Sync{}}},
		{"execute with a long portal name", []pgproto3.FrontendMessage{&pgproto3.Execute{Portal: strings.Repeat("p", 2*smallKeep)}, &pgproto3.Sync{}}},
		{"describe with a long name", []pgproto3.FrontendMessage{&pgproto3.Describe{ObjectType: 'S', Name: strings.Repeat("s", 2*smallKeep)}, &pgproto3.Sync{}}},
		{"close with a long name", []pgproto3.FrontendMessage{&pgproto3.Close{ObjectType: 'S', Name: strings.Repeat("s", 2*smallKeep)}, &pgproto3.Sync{}}},
		{"parse with 65535 parameter types", []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "s", Query: "SELECT 1", ParameterOIDs: manyTypes}, &pgproto3.Sync{}}},
		{"query with a NUL before its 3 MiB rest", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 1\x00" + string(big)}}},
		{"query of 3 MiB", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT '" + string(big) + "'"}}},
		{"parse of 3 MiB", []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT '" + string(big) + "'"}, &pgproto3.Sync{}}},
		{"copy data of 3 MiB", []pgproto3.FrontendMessage{&pgproto3.CopyData{Data: big}, &pgproto3.CopyDone{}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := encode(t, tc.msgs...)
			var out bytes.Buffer
			var term atomic.Bool
			var n atomic.Int64
			w := bufio.NewWriterSize(&out, relayBufferSize)
			tr := newTracker(0, false, func(audit.Query) {})
			if err := clientToServer(fixedBuffers(bufio.NewReaderSize(bytes.NewReader(in), relayBufferSize), w), DefaultMaxMessageSize, &term, tr, &n); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			if !bytes.Equal(out.Bytes(), in) || n.Load() != int64(len(in)) {
				t.Fatalf("relayed %d bytes (counted %d) differ from the %d sent", out.Len(), n.Load(), len(in))
			}
		})
	}
}
