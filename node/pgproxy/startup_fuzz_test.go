package pgproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// bytesConn is a net.Conn that reads a fixed input and keeps what is written.
type bytesConn struct {
	r       *bytes.Reader
	written bytes.Buffer
}

func (c *bytesConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *bytesConn) Write(p []byte) (int, error)      { return c.written.Write(p) }
func (c *bytesConn) Close() error                     { return nil }
func (c *bytesConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *bytesConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzReadStartup feeds arbitrary bytes to the startup-phase reader. It must
// never panic or read past the packet it returns, must answer at most one
// SSLRequest and one GSSENCRequest (each with 'N' only), and must fail only
// with errClientGone or an ErrorResponse to send.
func FuzzReadStartup(f *testing.F) {
	startup := func(params ...string) []byte {
		m := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{}}
		for i := 0; i+1 < len(params); i += 2 {
			m.Parameters[params[i]] = params[i+1]
		}
		b, _ := m.Encode(nil)
		return b
	}
	ssl := be32(8, codeSSLRequest)
	gss := be32(8, codeGSSENCRequest)
	cancel := append(be32(16, codeCancelRequest, 1234), 1, 2, 3, 4)
	for _, seed := range [][]byte{
		startup("user", "alice", "database", "app"),
		append(ssl, startup("user", "alice")...),
		append(append(gss, ssl...), startup("user", "a", "application_name", "psql")...),
		append(ssl, ssl...),
		append(ssl, cancel...),
		cancel,
		append(startup("user", "a"), 'Q', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0),
		append(be32(30, 3<<16|2, 0), []byte("_pq_.x\x00y\x00user\x00u\x00\x00")...),
		{0x16, 0x03, 0x01, 0x02, 0x00, 0x01},
		be32(10009, 196608),
		be32(4),
		be32(8, 2<<16),
		be32(0xffffffff),
		{0, 0, 0},
		{},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c := &bytesConn{r: bytes.NewReader(in)}
		st, err := readStartup(c)
		consumed := len(in) - c.r.Len()
		for _, b := range c.written.Bytes() {
			if b != 'N' {
				t.Fatalf("wrote %q, want only 'N' answers", c.written.Bytes())
			}
		}
		if c.written.Len() > 2 {
			t.Fatalf("answered %d negotiation requests, want at most 2", c.written.Len())
		}
		if err != nil {
			var oe *outcomeError
			if !errors.Is(err, errClientGone) && !errors.As(err, &oe) {
				t.Fatalf("error of an unexpected kind: %T %v", err, err)
			}
			if oe != nil {
				if _, encErr := oe.resp.Encode(nil); encErr != nil {
					t.Fatalf("refusal cannot be encoded: %v", encErr)
				}
			}
			return
		}
		if (st.msg == nil) == (st.cancel == nil) {
			t.Fatalf("startup = %+v: want exactly one of StartupMessage and CancelRequest", st)
		}
		// The packets read are exactly the negotiation requests and the final packet.
		last := consumed - 8*c.written.Len()
		if last < 8 || last > MaxStartupPacket+4 {
			t.Fatalf("consumed %d bytes with %d answers", consumed, c.written.Len())
		}
		if rest, _ := io.ReadAll(c.r); len(rest) != len(in)-consumed {
			t.Fatal("bytes after the startup packet were lost")
		}
	})
}
