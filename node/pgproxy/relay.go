package pgproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

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

// relay copies the session both ways until one side ends, and returns why it
// ended abnormally ("" for a client that sent Terminate or closed). Client to
// server it frames each message (type byte, int32 length; protocol §55.7) to
// enforce the size limit and hands the SQL of Query and Parse messages to
// record. Server to client it copies bytes.
func (p *Proxy) relay(ctx context.Context, client, server net.Conn, record func(sql, protocol string)) string {
	c2s := make(chan error, 1)
	s2c := make(chan error, 1)
	var terminated atomic.Bool // the client sent Terminate
	go func() {
		c2s <- clientToServer(bufio.NewReaderSize(client, relayBufferSize), bufio.NewWriterSize(server, relayBufferSize), int64(p.cfg.MaxMessageSize), &terminated, record)
	}()
	go func() {
		_, err := io.Copy(client, server)
		s2c <- err
	}()
	// On shutdown close the server side first, so the client can still be
	// told why before its side is closed.
	stop := context.AfterFunc(ctx, func() { server.Close() })
	defer stop()

	select {
	case err := <-c2s:
		server.Close()
		<-s2c
		var tl *errTooLarge
		var bl *errBadLength
		switch {
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
		if ctx.Err() != nil {
			n := endNotice(ctx)
			writeError(client, n.Code, n.Message, n.Hint)
		}
		client.Close()
		<-c2s
		switch {
		case ctx.Err() != nil:
			return endNotice(ctx).Message
		case terminated.Load():
			return ""
		case err == nil:
			return "server closed the connection"
		default:
			return "relay server to client: " + err.Error()
		}
	}
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

// writeError sends a FATAL ErrorResponse, best effort.
func writeError(conn net.Conn, code, message, hint string) {
	buf, err := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: message, Hint: hint}).Encode(nil)
	if err == nil {
		conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		conn.Write(buf)
	}
}

// clientToServer relays framed messages from r to w until r ends. It flushes
// w whenever r has nothing more buffered, so latency is that of the slower
// side. It returns nil when the client closed after Terminate or between
// messages.
func clientToServer(r *bufio.Reader, w *bufio.Writer, max int64, terminated *atomic.Bool, record func(sql, protocol string)) error {
	var hdr [5]byte
	var sqlBuf []byte
	for {
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return fmt.Errorf("write to server: %w", err)
			}
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				w.Flush()
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
		if _, err := w.Write(hdr[:]); err != nil {
			return fmt.Errorf("write to server: %w", err)
		}
		if typ == 'X' {
			terminated.Store(true)
		}
		if typ == 'Q' || typ == 'P' {
			// Keep the first MaxAuditSQL bytes for the audit log.
			keep := min(body, MaxAuditSQL)
			if int64(cap(sqlBuf)) < keep {
				sqlBuf = make([]byte, keep)
			}
			kept := sqlBuf[:keep]
			if _, err := io.ReadFull(r, kept); err != nil {
				return fmt.Errorf("read client message: %w", err)
			}
			if _, err := w.Write(kept); err != nil {
				return fmt.Errorf("write to server: %w", err)
			}
			if err := copyN(w, r, body-keep); err != nil {
				return err
			}
			if sql, ok := sqlText(typ, kept, body); ok {
				protocol := "simple"
				if typ == 'P' {
					protocol = "extended"
				}
				record(sql, protocol)
			}
			continue
		}
		if err := copyN(w, r, body); err != nil {
			return err
		}
	}
}

// copyN moves n bytes from r to w; small bodies go through r's buffer without
// allocating.
func copyN(w *bufio.Writer, r *bufio.Reader, n int64) error {
	for n > 0 {
		chunk := int(min(n, int64(r.Size())))
		b, err := r.Peek(chunk)
		if len(b) > 0 {
			if _, werr := w.Write(b); werr != nil {
				return fmt.Errorf("write to server: %w", werr)
			}
			r.Discard(len(b))
			n -= int64(len(b))
		}
		if err != nil && n > 0 {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read client message: %w", err)
		}
	}
	return nil
}

// sqlText extracts the SQL of a Query ("query\0") or Parse
// ("name\0query\0types...") body of which kept is the first part of total bytes.
func sqlText(typ byte, kept []byte, total int64) (string, bool) {
	if typ == 'P' {
		i := bytes.IndexByte(kept, 0)
		if i < 0 {
			return "", false
		}
		kept = kept[i+1:]
	}
	truncated := int64(len(kept)) < total && typ == 'Q'
	if i := bytes.IndexByte(kept, 0); i >= 0 {
		kept = kept[:i]
		truncated = false
	} else if typ == 'P' {
		truncated = true
	}
	s := string(kept)
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if truncated {
		s += fmt.Sprintf(" …[truncated: message of %d bytes]", total)
	}
	if s == "" {
		return "", false
	}
	return s, true
}
