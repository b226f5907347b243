// Package pgframe follows the framing of a PostgreSQL connection (protocol 3, PostgreSQL
// documentation §55.2 and §55.7) as its bytes pass through a relay that otherwise copies them
// blindly, so that the relay can tell whether the client stands between two server messages: only
// there may it write a message of its own (a FATAL ErrorResponse when the relay has to end the
// session) without corrupting the stream the client is reading.
//
// The tracker reads the client's untyped startup packets (SSLRequest, GSSENCRequest, the
// StartupMessage) to know how many one-byte answers ('N') come before the server's typed messages,
// then only the server's 5-byte message headers. Anything it cannot follow (an encryption request
// that was accepted, a CancelRequest, a length that cannot be) makes the stream opaque for good:
// then Boundary is false and the relay just closes.
package pgframe

import (
	"encoding/binary"
	"sync"
)

// Protocol codes of the untyped packets a client sends before its StartupMessage.
const (
	cancelRequestCode = 80877102
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	protocolMajor3    = 3 << 16
)

// maxStartup bounds a startup packet's length as the server does (10000 bytes; postmaster.c
// MAX_STARTUP_PACKET_LENGTH).
const maxStartup = 10000

// Tracker follows one connection. Its methods are safe for concurrent use: the two directions of a
// relay run on different goroutines.
type Tracker struct {
	mu sync.Mutex

	// Client to server: the startup phase only.
	cHdr    [8]byte
	cHave   int   // bytes of cHdr read
	cSkip   int64 // bytes of the current startup packet still to pass
	started bool  // the StartupMessage has been sent whole
	replies int   // one-byte answers owed to SSLRequest / GSSENCRequest packets

	// Server to client: typed messages.
	sHdr  [5]byte
	sHave int
	sSkip int64

	opaque bool
}

// Client notes bytes the client sent toward the server (before they are passed on).
func (t *Tracker) Client(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(p) > 0 && !t.opaque && !t.started {
		if t.cSkip > 0 {
			n := min(int64(len(p)), t.cSkip)
			t.cSkip -= n
			p = p[n:]
			if t.cSkip == 0 && t.cHave == -1 {
				t.started, t.cHave = true, 0
			}
			continue
		}
		n := copy(t.cHdr[t.cHave:], p)
		t.cHave += n
		p = p[n:]
		if t.cHave < len(t.cHdr) {
			return
		}
		length := int64(binary.BigEndian.Uint32(t.cHdr[:4]))
		code := binary.BigEndian.Uint32(t.cHdr[4:])
		t.cHave = 0
		switch {
		case length < 8 || length > maxStartup:
			t.opaque = true
		case (code == sslRequestCode || code == gssEncRequestCode) && length == 8:
			t.replies++
		case code>>16 == protocolMajor3>>16:
			t.cSkip = length - 8
			if t.cSkip == 0 {
				t.started = true
			} else {
				t.cHave = -1 // the StartupMessage's parameters follow
			}
		default: // CancelRequest or an unknown packet: the server closes, nothing to frame
			t.opaque = true
		}
	}
}

// Server notes bytes delivered to the client from the server.
func (t *Tracker) Server(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(p) > 0 && !t.opaque {
		if t.sSkip > 0 {
			n := min(int64(len(p)), t.sSkip)
			t.sSkip -= n
			p = p[n:]
			continue
		}
		if t.replies > 0 && t.sHave == 0 {
			// The one-byte answer to an encryption request: 'N' goes on in the clear, anything
			// else ('S', 'G': TLS or GSSAPI from here) cannot be followed.
			if p[0] != 'N' {
				t.opaque = true
				return
			}
			t.replies--
			p = p[1:]
			continue
		}
		if !t.started {
			t.opaque = true // a server that speaks before the StartupMessage: not PostgreSQL as known
			return
		}
		n := copy(t.sHdr[t.sHave:], p)
		t.sHave += n
		p = p[n:]
		if t.sHave < len(t.sHdr) {
			return
		}
		t.sHave = 0
		length := int64(binary.BigEndian.Uint32(t.sHdr[1:]))
		if length < 4 {
			t.opaque = true
			return
		}
		t.sSkip = length - 4
	}
}

// Boundary reports whether a server message may be written to the client now: the client has sent
// its StartupMessage, is owed no one-byte answer, and every server message it received is whole.
func (t *Tracker) Boundary() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.opaque && t.started && t.replies == 0 && t.sHave == 0 && t.sSkip == 0
}
