package pgproxy

import (
	"bytes"
	"io"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/node/audit"
)

// TestRelayAllocsPerMessage is the relay's allocation budget: heap allocations per round trip of
// pgbench -S (a simple Query, answered by RowDescription, DataRow, CommandComplete and
// ReadyForQuery) through both halves of the relay, the query record included, and per 8 KiB
// CopyData message, which carries no record. It counts allocations, not time, so a change that
// adds an allocation to the per-message path fails here rather than in a benchmark nobody runs.
func TestRelayAllocsPerMessage(t *testing.T) {
	const n = 512 // messages per run: the per-call setup (a few allocations) is spread over them
	query := &pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"}
	answer := []pgproto3.BackendMessage{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("0")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	}
	tests := []struct {
		name   string
		client pgproto3.FrontendMessage
		server []pgproto3.BackendMessage
		budget int // allocations per message, both halves together
	}{
		// Today: the request's pending entry and its ready channel, the SQL text, the
		// record and its strings.
		{"pgbench -S round trip", query, answer, 7},
		{"CopyData=8192", &pgproto3.CopyData{Data: bytes.Repeat([]byte("x"), 8192)}, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var up, down []byte
			for range n {
				up = mustEncode(t, up, tt.client)
				for _, m := range tt.server {
					down = mustEncode(t, down, m)
				}
			}
			var records atomic.Int64
			// Each read returns one round trip at most, as a client waiting for its answer sends
			// it: every message then meets an idle direction, which gives its pooled buffers back
			// and takes them again.
			upR, downR := bytes.NewReader(up), bytes.NewReader(down)
			upC, downC := &chunked{r: upR, max: len(up) / n}, &chunked{r: downR, max: len(down) / n}
			bp := newBufferPool()
			trs := make([]*tracker, 0, 200)
			for range cap(trs) {
				trs = append(trs, newTracker(0, false, func(audit.Query) { records.Add(1) }))
			}
			var terminated atomic.Bool
			var c1, c2 atomic.Int64
			run := 0
			allocs := testing.AllocsPerRun(50, func() {
				tr := trs[run%len(trs)] // made outside the measurement
				run++
				upR.Reset(up)
				downR.Reset(down)
				b1, b2 := bp.buffers(upC, io.Discard), bp.buffers(downC, io.Discard)
				if err := clientToServer(b1, 1<<30, &terminated, tr, &c1); err != nil {
					t.Fatal(err)
				}
				if err := serverToClient(b2, tr, &c2); err != nil {
					t.Fatal(err)
				}
				b1.release()
				b2.release()
			})
			if tt.server != nil && records.Load() == 0 {
				t.Fatal("no query was recorded: the test does not drive the audit path")
			}
			per := allocs / n
			t.Logf("%.2f allocations per message (%.0f per run of %d)", per, allocs, n)
			// The slack is the per-call setup spread over n messages, far below one per message.
			if per > float64(tt.budget)+0.1 {
				t.Errorf("%.2f allocations per message, budget %d: the relay's per-message path allocates more than it did", per, tt.budget)
			}
		})
	}
}

// chunked returns at most max bytes of r per read.
type chunked struct {
	r   io.Reader
	max int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(p) > c.max {
		p = p[:c.max]
	}
	return c.r.Read(p)
}

func mustEncode(t *testing.T, dst []byte, m interface{ Encode([]byte) ([]byte, error) }) []byte {
	t.Helper()
	out, err := m.Encode(dst)
	if err != nil {
		t.Fatalf("encode %T: %v", m, err)
	}
	return out
}
