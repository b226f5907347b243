package azureemu

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Request codes of the untyped startup packets (PostgreSQL protocol §55.7,
// "Message Formats": SSLRequest, GSSENCRequest, CancelRequest).
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	cancelRequestCode = 80877102
)

const (
	// maxStartupPacket is MAX_STARTUP_PACKET_LENGTH of the PostgreSQL source.
	maxStartupPacket = 10000
	// maxPasswordBody bounds the PasswordMessage body: Entra ID tokens are
	// 1-4 KB, more with many group claims.
	maxPasswordBody = 64 << 10
	// handshakeTimeout bounds everything from accept to the join with the
	// real server (TLS, StartupMessage, PasswordMessage).
	handshakeTimeout = 15 * time.Second
	// dialTimeout bounds the dial of the real server's unix socket.
	dialTimeout = 5 * time.Second
)

// front is the TLS PostgreSQL listener that stands in for
// <server>.postgres.database.azure.com.
type front struct {
	e      *Emulator
	ln     net.Listener
	tlsCfg *tls.Config

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func startFront(e *Emulator) (*front, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(e.cfg.ListenIP, "0"))
	if err != nil {
		return nil, fmt.Errorf("listen for PostgreSQL front: %w", err)
	}
	f := &front{
		e:  e,
		ln: ln,
		tlsCfg: &tls.Config{
			Certificates: []tls.Certificate{e.ca.server},
			MinVersion:   tls.VersionTLS12, // Azure Database for PostgreSQL requires TLS 1.2+
			NextProtos:   []string{"postgresql"},
		},
		conns: make(map[net.Conn]struct{}),
	}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *front) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			f.e.log.Warn("PostgreSQL front accept failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !f.track(c) {
			_ = c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.untrack(c)
			defer c.Close()
			f.handle(c)
		}()
	}
}

// track registers c so close can end it; false once the front is closed.
func (f *front) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *front) untrack(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
}

func (f *front) close() {
	_ = f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		_ = c.Close()
	}
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		f.e.log.Warn("PostgreSQL front: connections still open after close")
	}
}

// handle runs one client connection: negotiation, TLS, StartupMessage,
// cleartext password (the access token), validation, then the join with the
// real server.
func (f *front) handle(raw net.Conn) {
	log := f.e.log.With("peer", raw.RemoteAddr().String())
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReaderSize(raw, 4096)

	tlsConn, err := f.negotiate(raw, br)
	if err != nil {
		log.Debug("PostgreSQL front: connection ended before TLS", "err", err)
		return
	}
	defer tlsConn.Close()
	tr := bufio.NewReaderSize(tlsConn, 16<<10)

	msg, err := readStartupPacket(tr)
	if err != nil {
		log.Debug("PostgreSQL front: bad startup packet", "err", err)
		_ = sendFatal(tlsConn, "08P01", "invalid startup packet layout", err.Error(), "")
		return
	}
	if cr, ok := msg.(*pgproto3.CancelRequest); ok {
		f.forwardCancel(cr, log)
		return
	}
	startup, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		_ = sendFatal(tlsConn, "08P01", fmt.Sprintf("unexpected %T inside TLS; expected StartupMessage", msg), "", "")
		return
	}
	user := startup.Parameters["user"]
	if user == "" {
		_ = sendFatal(tlsConn, "28000", "no PostgreSQL user name specified in startup packet", "", "")
		return
	}
	log = log.With("user", user, "database", startup.Parameters["database"])

	if err := writeMsg(tlsConn, &pgproto3.AuthenticationCleartextPassword{}); err != nil {
		return
	}
	password, err := readPasswordMessage(tr)
	if err != nil {
		log.Debug("PostgreSQL front: no PasswordMessage", "err", err)
		_ = sendFatal(tlsConn, "08P01", "expected password response", err.Error(), "")
		return
	}

	role, refusal := f.authenticate(user, password)
	if refusal != nil {
		log.Info("PostgreSQL front: login refused", "reason", refusal.Message)
		_ = writeMsg(tlsConn, refusal)
		return
	}

	server, err := net.DialTimeout("unix", f.e.pg.SocketPath(), dialTimeout)
	if err != nil {
		log.Warn("PostgreSQL front: dial real server failed", "err", err)
		_ = sendFatal(tlsConn, "08006", "could not connect to the database server", err.Error(), "")
		return
	}
	if !f.track(server) {
		_ = server.Close()
		return
	}
	defer f.untrack(server)
	defer server.Close()

	params := make(map[string]string, len(startup.Parameters))
	for k, v := range startup.Parameters {
		params[k] = v
	}
	params["user"] = role
	if params["database"] == "" || params["database"] == user {
		// libpq defaults the database to the user name; follow the role.
		params["database"] = role
	}
	_ = server.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := writeMsg(server, &pgproto3.StartupMessage{ProtocolVersion: startup.ProtocolVersion, Parameters: params}); err != nil {
		_ = sendFatal(tlsConn, "08006", "could not send startup packet to the database server", err.Error(), "")
		return
	}
	_ = server.SetDeadline(time.Time{})
	_ = raw.SetDeadline(time.Time{})
	log.Info("PostgreSQL front: login accepted", "role", role)
	relay(tlsConn, tr, server)
}

// negotiate handles what may precede TLS: SSLRequest (answer 'S', then TLS),
// GSSENCRequest (answer 'N', read on), a direct TLS ClientHello (PostgreSQL
// 17 sslnegotiation=direct), CancelRequest (closed), and a plaintext
// StartupMessage (refused: Azure requires TLS).
func (f *front) negotiate(raw net.Conn, br *bufio.Reader) (*tls.Conn, error) {
	for range 3 {
		first, err := br.Peek(1)
		if err != nil {
			return nil, err
		}
		if first[0] == 0x16 { // TLS handshake record: direct TLS
			return f.handshake(raw, br)
		}
		msg, err := readStartupPacket(br)
		if err != nil {
			_ = sendFatal(raw, "08P01", "invalid startup packet layout", err.Error(), "")
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest:
			if br.Buffered() > 0 {
				// Bytes sent before our answer could be injected into the TLS
				// session's plaintext (CVE-2021-23214): refuse, as PostgreSQL does.
				return nil, errors.New("received unencrypted data after SSLRequest")
			}
			if _, err := raw.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			return f.handshake(raw, br)
		case *pgproto3.GSSEncRequest:
			if _, err := raw.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case *pgproto3.CancelRequest:
			f.forwardCancel(m, f.e.log)
			return nil, errors.New("CancelRequest forwarded")
		case *pgproto3.StartupMessage:
			_ = sendFatal(raw, "28000", "SSL connection is required. Please specify SSL options and retry.", "", "")
			return nil, fmt.Errorf("plaintext StartupMessage from user %q refused", m.Parameters["user"])
		}
	}
	return nil, errors.New("too many negotiation requests")
}

func (f *front) handshake(raw net.Conn, br *bufio.Reader) (*tls.Conn, error) {
	c := tls.Server(&bufConn{Conn: raw, r: br}, f.tlsCfg)
	if err := c.Handshake(); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return c, nil
}

// authenticate validates the access token sent as the password and maps its
// principal to a role. It returns the role, or the FATAL ErrorResponse to send.
func (f *front) authenticate(user, token string) (string, *pgproto3.ErrorResponse) {
	e := f.e
	claims, err := e.validateToken(token, time.Now())
	if err == nil && e.isRevoked(token) {
		err = errTokenExpired
	}
	switch {
	case errors.Is(err, errTokenAudience):
		return "", fatal("28000", `The access token does not have a valid audience claim. Please acquire a new token for the resource "`+Resource+`".`, "", "")
	case errors.Is(err, errTokenExpired):
		return "", fatal("28000", "The access token has expired. Acquire a new token and retry.", "", "")
	case errors.Is(err, errTokenNotYet):
		return "", fatal("28000", "The access token is not yet valid (nbf is in the future). Check the clock and retry.", "", "")
	case errors.Is(err, errTokenSignature):
		return "", fatal("28000", "The access token signature is invalid. Acquire a new token from Microsoft Entra ID and retry.", "", "")
	case errors.Is(err, errTokenIssuer):
		return "", fatal("28000", "The access token was issued by a tenant other than the server's Microsoft Entra ID tenant.", "", "")
	case err != nil:
		return "", fatal("28000", fmt.Sprintf("password authentication failed for user %q", user),
			"The password is not a Microsoft Entra ID access token: "+err.Error(), "")
	}
	role, ok := e.roleFor(claims.OID)
	if !ok {
		return "", fatal("28000",
			fmt.Sprintf("Microsoft Entra ID principal with object ID %q (app ID %q) is not mapped to a role on this server.", claims.OID, claims.AppID),
			"", "An administrator creates the role with pgaadauth_create_principal.")
	}
	want := role
	if e.cfg.SingleServer {
		want = role + "@" + e.cfg.ServerName
		if !strings.Contains(user, "@") {
			return "", fatal("28000",
				fmt.Sprintf("The user name %q is not in the format username@servername required by Azure Database for PostgreSQL Single Server.", user),
				"", fmt.Sprintf("Connect as %q.", want))
		}
	}
	if user != want {
		return "", fatal("28000",
			fmt.Sprintf("The access token is not valid for role %q: its principal (object ID %q) is mapped to role %q.", user, claims.OID, role),
			"", fmt.Sprintf("Connect as %q.", want))
	}
	return role, nil
}

// relay copies bytes both ways until either side ends, then closes both.
// Leftover bytes the client sent after its PasswordMessage are in tr.
func relay(client net.Conn, tr *bufio.Reader, server net.Conn) {
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(server, tr)
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(client, server)
		done <- struct{}{}
	}()
	<-done
	_ = client.Close()
	_ = server.Close()
	<-done
}

// forwardCancel passes a CancelRequest to the real server, as Azure's own
// server takes one in plaintext or after SSLRequest (protocol §55.2.8). The
// key is the real server's: the front relays its BackendKeyData unchanged.
func (f *front) forwardCancel(cr *pgproto3.CancelRequest, log *slog.Logger) {
	c, err := net.DialTimeout("unix", f.e.pg.SocketPath(), dialTimeout)
	if err != nil {
		log.Warn("PostgreSQL front: CancelRequest not forwarded", "err", err)
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := writeMsg(c, cr); err != nil {
		log.Warn("PostgreSQL front: CancelRequest not forwarded", "err", err)
		return
	}
	_, _ = io.Copy(io.Discard, c) // the server closes once it has read the request
	log.Info("PostgreSQL front: CancelRequest forwarded", "pid", cr.ProcessID)
}

// readStartupPacket reads an untyped startup packet (Int32 length, Int32
// code or protocol version, body) of at most MAX_STARTUP_PACKET_LENGTH bytes.
func readStartupPacket(r io.Reader) (pgproto3.FrontendMessage, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[:]))) - 4
	if n < 4 || n > maxStartupPacket {
		return nil, fmt.Errorf("invalid length of startup packet: %d", n+4)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("read startup packet: %w", err)
	}
	var msg interface {
		pgproto3.FrontendMessage
		Decode([]byte) error
	}
	switch code := binary.BigEndian.Uint32(buf); code {
	case pgproto3.ProtocolVersion30, pgproto3.ProtocolVersion32:
		msg = &pgproto3.StartupMessage{}
	case sslRequestCode:
		msg = &pgproto3.SSLRequest{}
	case gssEncRequestCode:
		msg = &pgproto3.GSSEncRequest{}
	case cancelRequestCode:
		msg = &pgproto3.CancelRequest{}
	default:
		return nil, fmt.Errorf("unsupported frontend protocol %d.%d", code>>16, code&0xffff)
	}
	if err := msg.Decode(buf); err != nil {
		return nil, fmt.Errorf("decode startup packet: %w", err)
	}
	return msg, nil
}

// readPasswordMessage reads a PasswordMessage ('p') and returns the password.
func readPasswordMessage(r io.Reader) (string, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", err
	}
	if hdr[0] != 'p' {
		return "", fmt.Errorf("expected PasswordMessage ('p'), got message type %q", hdr[0])
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[1:]))) - 4
	if n < 1 || n > maxPasswordBody {
		return "", fmt.Errorf("invalid PasswordMessage length %d", n+4)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return "", fmt.Errorf("read PasswordMessage: %w", err)
	}
	var pm pgproto3.PasswordMessage
	if err := pm.Decode(body); err != nil {
		return "", fmt.Errorf("decode PasswordMessage: %w", err)
	}
	return pm.Password, nil
}

func fatal(code, msg, detail, hint string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg, Detail: detail, Hint: hint}
}

func sendFatal(w io.Writer, code, msg, detail, hint string) error {
	return writeMsg(w, fatal(code, msg, detail, hint))
}

func writeMsg(w io.Writer, m interface{ Encode([]byte) ([]byte, error) }) error {
	b, err := m.Encode(nil)
	if err != nil {
		return fmt.Errorf("encode %T: %w", m, err)
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write %T: %w", m, err)
	}
	return nil
}

// bufConn is a net.Conn whose reads drain a bufio.Reader first, so bytes
// peeked before the TLS handshake are not lost.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }
