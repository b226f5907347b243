package pgproxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// relayBufferSize is the buffer of each direction, in bytes. Messages larger
// than it are streamed through, never held whole.
const relayBufferSize = 64 << 10

// errTooLarge is a client message above Config.MaxMessageSize.
type errTooLarge struct {
	typ       byte
	size, max int64
}

func (e *errTooLarge) Error() string {
	return fmt.Sprintf("client message %q of %d bytes exceeds the proxy's limit of %d bytes", e.typ, e.size, e.max)
}

// errBadLength is a client message whose length field is below 4.
type errBadLength struct {
	typ    byte
	length int32
}

func (e *errBadLength) Error() string {
	return fmt.Sprintf("invalid message length %d in client message %q", e.length, e.typ)
}

// relayStats are a session's byte counts, written by the relay goroutines.
type relayStats struct {
	fromClient, fromServer atomic.Int64
}

// errServerProtocol is a server message the relay cannot frame; the rest of
// the server's stream is then copied unparsed.
type errServerProtocol struct{ length int32 }

func (e *errServerProtocol) Error() string {
	return fmt.Sprintf("invalid message length %d from the server", e.length)
}

// relay copies the session both ways until one side ends, and returns why it
// ended abnormally ("" for a client that sent Terminate or closed). Both
// directions are framed (type byte, int32 length; protocol §55.7) and the
// frames handed to tr; every byte is forwarded unchanged. Client to server it
// enforces the size limit.
func (p *Proxy) relay(ctx context.Context, client, server net.Conn, tr *tracker, stats *relayStats, resource string) string {
	c2s := make(chan error, 1)
	s2c := make(chan error, 1)
	var terminated atomic.Bool // the client sent Terminate
	go func() {
		defer recoverRelay(c2s, "relay client to server")
		b := p.buffers.buffers(client, server)
		err := clientToServer(b, int64(p.cfg.MaxMessageSize), &terminated, tr, &stats.fromClient)
		b.release()
		c2s <- err
	}()
	go func() {
		defer recoverRelay(s2c, "relay server to client")
		defer tr.serverEnded() // before recoverRelay: the client side must not wait for answers that will not come
		b := p.buffers.buffers(server, &heldWriter{w: client, tr: tr})
		err := serverToClient(b, tr, &stats.fromServer)
		b.release()
		s2c <- err
	}()
	// On shutdown close the server side first, so the client can still be
	// told why before its side is closed. A client that does not read what is
	// still being written to it (its TCP window full) gets hangUpWait before
	// that write fails, and one that stops sending gets as long to finish its
	// message: otherwise the session, its goroutines and its record would wait
	// for it forever.
	stop := context.AfterFunc(ctx, func() {
		server.Close()
		client.SetWriteDeadline(time.Now().Add(hangUpWait))
		// A client stalled in the middle of a request holds the server side too when the server
		// answered early (a hostile server): it waits for the request to be whole.
		client.SetReadDeadline(time.Now().Add(hangUpWait))
	})
	defer stop()

	select {
	case err := <-c2s:
		if sp, ok := err.(*sessionPanic); ok {
			relayPanicked(sp, client, server, s2c, p.logger)
		}
		server.Close()
		s2cErr := <-s2c
		rethrowPanic(s2cErr)
		var tl *errTooLarge
		var bl *errBadLength
		var cw *errClientWrite
		switch {
		case ctx.Err() != nil && errors.As(s2cErr, &cw):
			// The client stopped reading: nothing more can be said to it (a message may be
			// half-written).
			return endNotice(ctx).Message
		case errors.As(err, &tl):
			writeError(client, "54000", "message too large: "+tl.Error(), "Send smaller messages (split the statement or the COPY data), or ask the administrator to raise the node's message size limit.")
			lingerClose(client)
			return tl.Error()
		case errors.As(err, &bl):
			writeError(client, "08P01", "protocol violation: "+bl.Error(), "")
			return bl.Error()
		case ctx.Err() != nil:
			n := endNotice(ctx)
			writeError(client, n.Code, n.Message, n.Hint)
			return n.Message
		case err == nil:
			return ""
		default:
			return "client connection: " + err.Error()
		}
	case err := <-s2c:
		if sp, ok := err.(*sessionPanic); ok {
			relayPanicked(sp, client, server, c2s, p.logger)
		}
		var cw *errClientWrite
		var held *errHeld
		// Answers held back because their records could not be made durable: the client is
		// still there, and is told why the session ends (FATAL 58030, ctx's cause).
		clientGone := errors.As(err, &cw) && !errors.As(err, &held)
		switch {
		case clientGone:
			// Nothing more can be said to a client that is gone or stopped reading (a message may
			// be half-written).
		case ctx.Err() != nil:
			n := endNotice(ctx)
			writeError(client, n.Code, n.Message, n.Hint)
		case terminated.Load():
		case errors.Is(err, errMidMessage):
			// Nothing can be said in the middle of a message.
		case tr.fatalSeen().code == "":
			// The server went away without a FATAL of its own: say so.
			why := "the server closed the connection"
			if err != nil {
				why = err.Error()
			}
			writeError(client, "08006", fmt.Sprintf("connection to the server of resource %s lost: %s", resource, why), "Reconnect; if it persists, check the server's health.")
		}
		if policyEnd(ctx) != nil && !clientGone {
			// Ended by the node: give the client a moment to read the FATAL and hang up before the
			// connection goes (and, for a suspended user, the WireGuard peer with it).
			rethrowPanic(awaitHangUp(client, c2s))
		} else {
			client.Close()
			rethrowPanic(<-c2s)
		}
		switch {
		case ctx.Err() != nil:
			return endNotice(ctx).Message
		case terminated.Load():
			return ""
		case clientGone:
			return "client connection: " + err.Error()
		case err == nil:
			if f := tr.fatalSeen(); f.code != "" {
				return "server ended the session: " + f.message
			}
			return "server closed the connection"
		default:
			return "relay server to client: " + err.Error()
		}
	}
}

// heldWriter is what the server side of the relay writes the client's bytes through, under its
// buffer: once the tracker has made records, no byte goes to the client until tr.hold says they
// are durable. The records of a statement are made when the server's message that completes it
// (CommandComplete, ErrorResponse, ReadyForQuery for a Query of several statements, ...) has been
// put in the buffer, and reach the client no sooner than the buffer is written out: when the
// server has nothing more buffered (after ReadyForQuery, in a round trip) or when the buffer is
// full (a long result). So a client never sees a statement's completion, nor the ReadyForQuery
// after it, before its record would survive a crash of the node; every statement answered in one
// buffer waits for one group commit; and rows streaming before a statement completes are not
// held at all. Holding blocks only this direction (the buffer stays at its fixed size: the
// server waits, as for a slow client), and the wait ends when the audit writer, which waits on
// no session, commits or fails.
type heldWriter struct {
	w  io.Writer
	tr *tracker
}

func (h *heldWriter) Write(b []byte) (int, error) {
	if h.tr.held && h.tr.hold != nil {
		if err := h.tr.hold(); err != nil {
			return 0, &errHeld{err}
		}
		h.tr.held = false
	}
	return h.w.Write(b)
}

// errHeld is the client's bytes held back for good: the records of the statements they answer
// are not durable and will not be (the audit log failed, or the session ended while waiting).
type errHeld struct{ err error }

func (e *errHeld) Error() string {
	return "answers held back: their audit records are not durable: " + e.err.Error()
}
func (e *errHeld) Unwrap() error { return e.err }

// errClientWrite is a failed write to the client.
type errClientWrite struct{ err error }

func (e *errClientWrite) Error() string { return "write to client: " + e.err.Error() }
func (e *errClientWrite) Unwrap() error { return e.err }

// errMidMessage marks a server stream that ended inside a message.
var errMidMessage = errors.New("server connection ended in the middle of a message")

// serverToClient relays server messages from r to w until r ends, handing
// each to tr. It flushes w whenever r has nothing more buffered, so
// notifications and notices on an idle session go out at once. It returns
// nil when the server closed between messages.
func serverToClient(b *relayBuffers, tr *tracker, n *atomic.Int64) error {
	var hdr [5]byte
	kept := make([]byte, 0, smallKeep) // the most kept of one message (CommandComplete, ErrorResponse, ReadyForQuery, ParameterStatus)
	cw := &countingWriter{b: b, n: n}
	for {
		if b.r.Buffered() == 0 {
			if err := b.w.Flush(); err != nil {
				return &errClientWrite{err}
			}
			b.idle()
		}
		if _, err := b.readFull(hdr[:1]); err != nil {
			b.w.Flush()
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if _, err := io.ReadFull(b.r, hdr[1:]); err != nil {
			cw.Write(hdr[:1])
			b.w.Flush()
			return fmt.Errorf("%w: %v", errMidMessage, err)
		}
		typ := hdr[0]
		length := int32(binary.BigEndian.Uint32(hdr[1:]))
		if _, err := cw.Write(hdr[:]); err != nil {
			return &errClientWrite{err}
		}
		if length < 4 {
			// Not PostgreSQL framing: pass the rest through untouched.
			if _, err := io.Copy(cw, b.r); err != nil {
				return err
			}
			b.w.Flush()
			return &errServerProtocol{length: length}
		}
		body := int64(length) - 4
		var keep int64
		switch typ {
		case 'C', 'E', 'Z', 'S':
			keep = min(body, smallKeep)
		}
		if keep > 0 {
			kept = kept[:keep]
			if got, err := io.ReadFull(b.r, kept); err != nil {
				cw.Write(kept[:got]) // what did arrive, not the rest of the buffer
				b.w.Flush()
				return fmt.Errorf("%w: %v", errMidMessage, err)
			}
			if _, err := cw.Write(kept); err != nil {
				return &errClientWrite{err}
			}
		}
		if err := copyN(cw, b.r, body-keep, nil); err != nil {
			var we *writeErr
			if errors.As(err, &we) {
				return &errClientWrite{we.err}
			}
			b.w.Flush()
			return fmt.Errorf("%w: %v", errMidMessage, err)
		}
		tr.server(typ, kept[:keep])
	}
}

// countingWriter counts what it passes to b.w.
type countingWriter struct {
	b *relayBuffers
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.b.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// lingerClose half-closes client and discards what it still sends for a
// moment, so that the ErrorResponse just written reaches it instead of being
// lost to a TCP reset caused by unread data.
func lingerClose(client net.Conn) {
	if cw, ok := client.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	client.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, io.LimitReader(client, 64<<20))
}

// awaitHangUp half-closes client and waits, at most hangUpWait, for the client side of the relay
// (c2s) to end: the client closing after reading what was written last, or sending more. Then it
// closes client.
func awaitHangUp(client net.Conn, c2s <-chan error) error {
	if cw, ok := client.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	client.SetReadDeadline(time.Now().Add(hangUpWait))
	err := <-c2s
	client.Close()
	return err
}

// hangUpWait bounds awaitHangUp.
const hangUpWait = 2 * time.Second

// writeError sends a FATAL ErrorResponse, best effort.
func writeError(conn net.Conn, code, message, hint string) {
	buf, err := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: message, Hint: hint}).Encode(nil)
	if err == nil {
		conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		conn.Write(buf)
	}
}

// writeErr is a failed write to the far side inside copyN.
type writeErr struct{ err error }

func (e *writeErr) Error() string { return e.err.Error() }
func (e *writeErr) Unwrap() error { return e.err }

// clientToServer relays framed messages from r to w until r ends, handing the
// requests that get a response to tr. It flushes w whenever r has nothing
// more buffered, so latency is that of the slower side. It returns nil when
// the client closed after Terminate or between messages.
func clientToServer(b *relayBuffers, max int64, terminated *atomic.Bool, tr *tracker, n *atomic.Int64) error {
	var hdr [5]byte
	var kept []byte
	cw := &countingWriter{b: b, n: n}
	flush := func() { b.w.Flush() } // what is buffered reaches the server before push waits for its answers
	for {
		if b.r.Buffered() == 0 {
			if err := b.w.Flush(); err != nil {
				return fmt.Errorf("write to server: %w", err)
			}
			b.idle()
		}
		_, err := b.readFull(hdr[:1])
		if err == nil {
			if _, err = io.ReadFull(b.r, hdr[1:]); err == io.EOF {
				err = io.ErrUnexpectedEOF // a header cut short, as reading all five at once says
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				b.w.Flush()
				return nil
			}
			return err
		}
		typ := hdr[0]
		length := int32(binary.BigEndian.Uint32(hdr[1:]))
		if length < 4 {
			return &errBadLength{typ: typ, length: length}
		}
		body := int64(length) - 4
		if body > max {
			return &errTooLarge{typ: typ, size: body, max: max}
		}
		if typ == 'X' {
			terminated.Store(true)
		}
		var p *pending
		if tracked(typ) {
			// Queued before a byte of it is written, so its response cannot come first.
			p = tr.push(typ, flush)
		}
		if _, err := cw.Write(hdr[:]); err != nil {
			tr.abandon(p)
			return fmt.Errorf("write to server: %w", err)
		}
		if p == nil {
			if err := copyN(cw, b.r, body, nil); err != nil {
				return err
			}
			continue
		}
		keep := tr.keepOf(typ, body)
		if int64(cap(kept)) < keep {
			kept = make([]byte, keep)
		}
		kept = kept[:keep]
		if _, err := io.ReadFull(b.r, kept); err != nil {
			tr.abandon(p)
			return fmt.Errorf("read client message: %w", err)
		}
		if _, err := cw.Write(kept); err != nil {
			tr.abandon(p)
			return fmt.Errorf("write to server: %w", err)
		}
		var tail *sqlTail
		var tee io.Writer // stays nil without a tail: a nil *sqlTail in an io.Writer is not a nil io.Writer
		if keep < body {
			if tail = tailFor(typ, kept); tail != nil {
				tee = tail
			}
		}
		if err := copyN(cw, b.r, body-keep, tee); err != nil {
			tr.abandon(p)
			return err
		}
		tr.fill(p, kept, body, tail)
	}
}

// copyN moves n bytes from r to w, showing them to tee (if not nil) too; small
// bodies go through r's buffer without allocating. A failed write is a *writeErr.
func copyN(w io.Writer, r *bufio.Reader, n int64, tee io.Writer) error {
	for n > 0 {
		chunk := int(min(n, int64(r.Size())))
		b, err := r.Peek(chunk)
		if len(b) > 0 {
			if _, werr := w.Write(b); werr != nil {
				return &writeErr{fmt.Errorf("write: %w", werr)}
			}
			if tee != nil {
				tee.Write(b)
			}
			r.Discard(len(b))
			n -= int64(len(b))
		}
		if err != nil && n > 0 {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read message: %w", err)
		}
	}
	return nil
}
