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
	if raceEnabled {
		t.Skip("allocation counts are not those of a normal build under the race detector")
	}
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
		// Today: the SQL text, the record and its strings (the request's pending entry is
		// recycled, and waiting for it takes no channel).
		{"pgbench -S round trip", query, answer, 5},
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
			var records, holds atomic.Int64
			// As pgbench -S does, the client sends a query once it has the answer to the one
			// before, and the server answers once it has the query: each read returns one round
			// trip's messages, after the other half has written the previous one. Every message
			// then meets an idle direction, which gives its pooled buffers back and takes them
			// again, and one request at a time is pending.
			upR, downR := bytes.NewReader(up), bytes.NewReader(down)
			toServer, toClient := make(chan struct{}, 1), make(chan struct{}, 1)
			upC := &lockstep{r: upR, max: len(up) / n, turn: toClient, first: true}
			downC := &lockstep{r: downR, max: len(down) / n, turn: toServer}
			upW, downW := &signal{to: toServer}, &signal{to: toClient}
			if tt.server == nil {
				upC.turn = nil // nothing answers a CopyData
			}
			bp := newBufferPool()
			trs := make([]*tracker, 0, 200)
			for range cap(trs) {
				tr := newTracker(0, false, func(audit.Query) { records.Add(1) })
				tr.hold = func() error { holds.Add(1); return nil } // as the session's: answers wait for their records
				trs = append(trs, tr)
			}
			var terminated atomic.Bool
			var c1, c2 atomic.Int64
			run := 0
			s2c := make(chan error)
			allocs := testing.AllocsPerRun(50, func() {
				tr := trs[run%len(trs)] // made outside the measurement
				run++
				upR.Reset(up)
				downR.Reset(down)
				upC.first, upC.left, downC.left = true, 0, 0
				for _, ch := range []chan struct{}{toServer, toClient} { // the last turn of the run before
					select {
					case <-ch:
					default:
					}
				}
				b1, b2 := bp.buffers(upC, upW), bp.buffers(downC, &heldWriter{w: downW, tr: tr})
				go func() {
					err := serverToClient(b2, tr, &c2)
					b2.release()
					s2c <- err
				}()
				if err := clientToServer(b1, 1<<30, &terminated, tr, &c1); err != nil {
					t.Fatal(err)
				}
				b1.release()
				if err := <-s2c; err != nil {
					t.Fatal(err)
				}
			})
			if tt.server != nil && (records.Load() == 0 || holds.Load() == 0) {
				t.Fatal("no query was recorded or held: the test does not drive the audit path")
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

// lockstep hands r out in turns of max bytes: before each turn but the first it waits for turn
// (the other side's turn is over); at the end of r it returns io.EOF at once.
type lockstep struct {
	r     *bytes.Reader
	max   int
	turn  chan struct{}
	first bool
	left  int // of this turn
}

func (c *lockstep) Read(p []byte) (int, error) {
	if c.r.Len() == 0 {
		return 0, io.EOF // the other side has nothing more to wait for
	}
	if c.left == 0 {
		if c.turn != nil && !c.first {
			<-c.turn
		}
		c.first = false
		c.left = c.max
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= n
	return n, err
}

// signal discards what is written to it and tells the other side it is its turn.
type signal struct{ to chan struct{} }

func (s *signal) Write(p []byte) (int, error) {
	select {
	case s.to <- struct{}{}:
	default:
	}
	return len(p), nil
}

func mustEncode(t *testing.T, dst []byte, m interface{ Encode([]byte) ([]byte, error) }) []byte {
	t.Helper()
	out, err := m.Encode(dst)
	if err != nil {
		t.Fatalf("encode %T: %v", m, err)
	}
	return out
}
