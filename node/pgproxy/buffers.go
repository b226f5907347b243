package pgproxy

import (
	"bufio"
	"io"
	"sync"
)

// bufferPool lends the relay its 64 KiB buffers. An idle session holds none: a direction takes
// a reader and a writer when a message starts arriving and gives them back once it has flushed
// everything and would wait for the next one, so memory follows the sessions moving data, not the
// sessions open. A buffer is only ever read through its bufio wrapper, which shows no byte it did
// not get from its current source, so nothing of one session can reach another.
type bufferPool struct {
	readers, writers sync.Pool
}

func newBufferPool() *bufferPool {
	bp := &bufferPool{}
	bp.readers.New = func() any { return bufio.NewReaderSize(nil, relayBufferSize) }
	bp.writers.New = func() any { return bufio.NewWriterSize(nil, relayBufferSize) }
	return bp
}

// relayBuffers are one direction's buffers: src read through r, dst written through w. With a
// pool, r and w are nil while the direction is idle (see idle and readFull).
type relayBuffers struct {
	src  io.Reader
	dst  io.Writer
	r    *bufio.Reader
	w    *bufio.Writer
	pool *bufferPool
}

// fixedBuffers are buffers held for the whole relay (tests and benchmarks).
func fixedBuffers(r *bufio.Reader, w *bufio.Writer) *relayBuffers {
	return &relayBuffers{r: r, w: w}
}

// pooledBuffers are buffers taken from bp only while src has data to move.
func (bp *bufferPool) buffers(src io.Reader, dst io.Writer) *relayBuffers {
	b := &relayBuffers{src: src, dst: dst, pool: bp}
	b.acquire()
	return b
}

func (b *relayBuffers) acquire() {
	if b.r == nil {
		b.r = b.pool.readers.Get().(*bufio.Reader)
		b.r.Reset(b.src)
	}
	if b.w == nil {
		b.w = b.pool.writers.Get().(*bufio.Writer)
		b.w.Reset(b.dst)
	}
}

// idle gives pooled buffers back; call it only when r has nothing buffered and w has been
// flushed, before waiting for the next message.
func (b *relayBuffers) idle() {
	if b.pool == nil || b.r == nil || b.r.Buffered() > 0 || b.w.Buffered() > 0 {
		return
	}
	b.release()
}

// release gives pooled buffers back, dropping anything they still hold (the relay has ended).
func (b *relayBuffers) release() {
	if b.pool == nil {
		return
	}
	if b.r != nil {
		b.r.Reset(nil)
		b.pool.readers.Put(b.r)
		b.r = nil
	}
	if b.w != nil {
		b.w.Reset(nil)
		b.pool.writers.Put(b.w)
		b.w = nil
	}
}

// readFull reads len(p) bytes: straight from src while idle (waiting for the next message holds
// no buffer), then it takes the buffers back, whatever the read returned.
func (b *relayBuffers) readFull(p []byte) (int, error) {
	if b.r != nil {
		return io.ReadFull(b.r, p)
	}
	n, err := io.ReadFull(b.src, p)
	b.acquire()
	return n, err
}
