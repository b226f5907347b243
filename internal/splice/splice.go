// Package splice joins two connections, copying both ways, for the client's loopback listeners
// and virtual network: an idle pair holds one goroutine and no large buffer.
package splice

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// smallBuffer is what a direction reads into while it has nothing in flight: its own (it escapes to
// the heap, as the reader and writer are interfaces), large enough for a PostgreSQL request or an
// answer of a few rows. A read that fills it
// means more is coming, and the direction takes a bigBuffer from the pool until reads come back
// short again.
const (
	smallBuffer = 1 << 10
	bigBuffer   = 32 << 10 // io.Copy's
)

// Pool lends the large buffers; one Pool serves any number of splices.
type Pool struct {
	bufs sync.Pool
}

// NewPool returns a Pool.
func NewPool() *Pool {
	p := &Pool{}
	p.bufs.New = func() any { b := make([]byte, bigBuffer); return &b }
	return p
}

// Splice copies a to b and b to a until both directions have ended, passing each end of stream
// on as a half-close (CloseWrite, or Close for a connection without it); once one direction has
// ended, the other gets linger to finish. Ending ctx ends both at once. It runs one direction on
// the calling goroutine and returns once both have stopped; it closes a and b only to stop them
// (ctx ended or linger passed), so the caller still closes them.
func (p *Pool) Splice(ctx context.Context, a, b net.Conn, linger time.Duration) {
	closeBoth := func() { a.Close(); b.Close() }
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()
	var ended atomic.Int32
	var timer atomic.Pointer[time.Timer]
	finish := func() {
		if ended.Add(1) == 1 {
			timer.Store(time.AfterFunc(linger, closeBoth))
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.copy(b, a)
		closeWrite(b)
		finish()
	}()
	p.copy(a, b)
	closeWrite(a)
	finish()
	<-done // bounded: linger closes both
	if t := timer.Load(); t != nil {
		t.Stop()
	}
}

// copy moves src to dst until src ends or a write fails, as io.Copy does.
func (p *Pool) copy(dst, src net.Conn) {
	var small [smallBuffer]byte
	for {
		n, err := src.Read(small[:])
		if n > 0 {
			if _, werr := dst.Write(small[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
		if n < len(small) {
			continue
		}
		if !p.bulk(dst, src) {
			return
		}
	}
}

// bulk copies with a pooled buffer while reads come back longer than the small buffer; it
// reports whether the copy goes on.
func (p *Pool) bulk(dst, src net.Conn) bool {
	bp := p.bufs.Get().(*[]byte)
	defer p.bufs.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return false
			}
		}
		if err != nil {
			return false
		}
		if n <= smallBuffer {
			return true
		}
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
