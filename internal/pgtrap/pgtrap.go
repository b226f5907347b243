// Package pgtrap is a fake PostgreSQL server for tests, as an attacker would run it to catch the
// node's managed-identity access token: it listens on loopback, answers every SSLRequest and
// GSSENCRequest with 'N' (no TLS), asks for the password in clear (AuthenticationCleartextPassword)
// and records every byte it receives. A test then asserts that the token never arrived.
package pgtrap

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Protocol codes (PostgreSQL protocol, "Message Formats").
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	protocol3         = 196608
)

// Trap is a running fake server.
type Trap struct {
	ln    net.Listener
	mu    sync.Mutex
	recv  bytes.Buffer
	conns int
	wg    sync.WaitGroup
}

// Start starts a Trap on 127.0.0.1 and stops it with t.Cleanup.
func Start(tb testing.TB) *Trap {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("pgtrap: listen: %v", err)
	}
	tr := &Trap{ln: ln}
	tr.wg.Add(1)
	go tr.accept()
	tb.Cleanup(func() {
		ln.Close()
		tr.wg.Wait()
	})
	return tr
}

// Addr is "127.0.0.1:PORT".
func (tr *Trap) Addr() string { return tr.ln.Addr().String() }

// Port is the listening port.
func (tr *Trap) Port() int { return tr.ln.Addr().(*net.TCPAddr).Port }

// Dial dials the trap whatever address it is asked for (a Target.Dial or host override).
func (tr *Trap) Dial(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, tr.Addr())
}

// Received returns every byte received so far, of every connection.
func (tr *Trap) Received() []byte {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return bytes.Clone(tr.recv.Bytes())
}

// Conns is the number of connections accepted so far.
func (tr *Trap) Conns() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.conns
}

func (tr *Trap) accept() {
	defer tr.wg.Done()
	for {
		c, err := tr.ln.Accept()
		if err != nil {
			return
		}
		tr.mu.Lock()
		tr.conns++
		tr.mu.Unlock()
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			defer c.Close()
			tr.serve(c)
		}()
	}
}

// recorder appends what is read to the trap's record.
type recorder struct {
	tr *Trap
	r  io.Reader
}

func (r recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.tr.mu.Lock()
	r.tr.recv.Write(p[:n])
	r.tr.mu.Unlock()
	return n, err
}

func (tr *Trap) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := recorder{tr: tr, r: c}
	// Untyped messages until the StartupMessage.
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[:4]))
		code := binary.BigEndian.Uint32(hdr[4:])
		if n < 8 || n > 10000 {
			return
		}
		if _, err := io.CopyN(io.Discard, r, int64(n-8)); err != nil {
			return
		}
		if code == codeSSLRequest || code == codeGSSENCRequest {
			if _, err := c.Write([]byte{'N'}); err != nil {
				return
			}
			continue
		}
		if code != protocol3 {
			return
		}
		break
	}
	// AuthenticationCleartextPassword: the client answers with a PasswordMessage in clear.
	if _, err := c.Write([]byte{'R', 0, 0, 0, 8, 0, 0, 0, 3}); err != nil {
		return
	}
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > 1<<20 {
		return
	}
	if _, err := io.CopyN(io.Discard, r, int64(n-4)); err != nil {
		return
	}
	// Refuse, so the client ends: a real attacker would not need more.
	msg := "SFATAL\x00C28P01\x00Mpassword authentication failed\x00\x00"
	resp := []byte{'E'}
	resp = binary.BigEndian.AppendUint32(resp, uint32(4+len(msg)))
	resp = append(resp, msg...)
	c.Write(resp)
}
