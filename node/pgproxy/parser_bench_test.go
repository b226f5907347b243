package pgproxy

import (
	"bufio"
	"bytes"
	"io"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/node/audit"
)

// BenchmarkClientToServerParser compares the client-to-server half of the relay (framing, size
// check, noting each Query's SQL for the query log) with a plain buffered copy of the same bytes,
// in memory, so the difference is the parser's cost. The stream is pgbench -S's statement as
// simple Query messages, or 8 KiB CopyData messages (nothing to record). Bytes/s is of the stream.
func BenchmarkClientToServerParser(b *testing.B) {
	streams := []struct {
		name string
		msg  pgproto3.FrontendMessage
	}{
		{"Query", &pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"}},
		{"CopyData=8192", &pgproto3.CopyData{Data: bytes.Repeat([]byte("x"), 8192)}},
	}
	for _, s := range streams {
		var stream []byte
		for len(stream) < 1<<20 {
			stream, _ = s.msg.Encode(stream)
		}
		msgs := 0
		for rest := stream; len(rest) > 0; msgs++ {
			n := int(rest[1])<<24 | int(rest[2])<<16 | int(rest[3])<<8 | int(rest[4])
			rest = rest[1+n:]
		}
		b.Run(s.name+"/parser", func(b *testing.B) {
			var terminated atomic.Bool
			var n atomic.Int64
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			for range b.N {
				w := bufio.NewWriterSize(io.Discard, relayBufferSize)
				r := bufio.NewReaderSize(bytes.NewReader(stream), relayBufferSize)
				tr := newTracker(0, false, func(audit.Query) {})
				if err := clientToServer(fixedBuffers(r, w), 1<<30, &terminated, tr, &n); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*msgs), "ns/msg")
		})
		b.Run(s.name+"/plain-copy", func(b *testing.B) {
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			for range b.N {
				w := bufio.NewWriterSize(io.Discard, relayBufferSize)
				r := bufio.NewReaderSize(bytes.NewReader(stream), relayBufferSize)
				if _, err := io.Copy(w, r); err != nil {
					b.Fatal(err)
				}
				w.Flush()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*msgs), "ns/msg")
		})
	}
}
