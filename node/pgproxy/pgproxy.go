// Package pgproxy is the node's PostgreSQL proxy: it takes one client
// connection that arrived through the WireGuard tunnel for one resource (an
// Azure Database for PostgreSQL server), logs in to that server over verified
// TLS with the resource's role and a managed identity access token as the
// password, and then relays the session, recording every SQL text to the
// audit log.
//
// The client never authenticates to the proxy: the tunnel peer already
// identifies the user, so the client's user name and password are ignored and
// the client is never asked for a password (it receives AuthenticationOk,
// PostgreSQL protocol §55.2.1). The access token never leaves the node.
//
// Each session gets the node's own random BackendKeyData; a CancelRequest
// that later arrives at the node with it is forwarded over TLS to the server
// with the server's own key (protocol §55.2.8), but only when the tunnel peer
// that sends it is the session's own user and is still granted the resource;
// any other is refused and recorded as a connection with outcome "denied".
// A session the node ends by policy (its context cancelled with a *Refusal:
// grant revoked, user suspended or deleted, resource deleted) gets that
// FATAL at once; the server connection is closed, the statement it runs is
// cancelled the same way, and its backend is terminated (pg_terminate_backend
// over a login of the node's own; a statement can catch a cancel, not that),
// so nothing it sent commits afterwards. Refusals are FATAL
// ErrorResponses with a SQLSTATE: the server's own when it refused the login
// (e.g. 28000, 28P01), 08001 when it could not be reached or TLS failed,
// 28000 when no access token could be had, 3D000 for a database outside a
// restricted resource, 0A000 for replication connections, 54000 for a client
// message above Config.MaxMessageSize, 58030 (io_error) when the audit log
// cannot record the connection.
//
// The client's hop is not TLS: the WireGuard tunnel already encrypts it and
// the proxy has no certificate to offer, so SSLRequest is answered 'N'.
// sslmode disable, allow and prefer work; sslmode=require (and verify-*)
// fail at once in the client with libpq's "server does not support SSL, but
// SSL was required". A TLS ClientHello as the first bytes
// (sslnegotiation=direct) is refused with a log line.
//
// Audit: the relay frames both directions and a tracker (track.go) pairs
// each request with its response, so the query log gets one record per
// executed statement with its start, duration, command tag row count and
// SQLSTATE; relayed bytes are never changed. Records are handed to the
// session's QueryRecorder (node/audit's Recorder), which fails closed: a session whose connection
// record cannot be written is refused before the upstream login (FATAL
// 58030); a session over its own allowance of unwritten records waits (its
// relay from the server stops until the writer catches up), so a flooding
// session slows only itself; a session one of whose records could not be
// written after retries is ended with FATAL 58030. Records are never dropped
// for want of queue space.
package pgproxy

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/resource"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Defaults for Config.
const (
	DefaultMaxMessageSize = 1 << 30          // bytes of one client message body (PostgreSQL's own limit is 1 GiB - 1)
	DefaultLoginTimeout   = 15 * time.Second // from accepting the client to ReadyForQuery
	// MaxStartupPacket is the largest startup packet body accepted, in bytes:
	// MAX_STARTUP_PACKET_LENGTH of PostgreSQL's src/include/libpq/pqcomm.h.
	MaxStartupPacket = 10000
)

// TokenSource hands out Microsoft Entra ID access tokens for the Azure
// Database for PostgreSQL scope (https://ossrdbms-aad.database.windows.net/.default)
// for a managed identity. clientID "" means the system-assigned identity.
type TokenSource interface {
	Token(ctx context.Context, clientID string) (token string, expiresOn time.Time, err error)
}

// TokenInvalidator is implemented by a TokenSource that caches tokens: Invalidate drops the cached
// token of clientID if it is token, which the server refused as expired, so that the next Token
// fetches a new one.
type TokenInvalidator interface {
	Invalidate(clientID, token string)
}

// Target is the server a connection is for, as configured in the catalog.
type Target struct {
	Resource         string // resource name (for logs and audit)
	Host             string // the server's host name as configured; also the TLS ServerName
	Port             int    // TCP port, 1-65535 (Azure: 5432)
	Database         string // the resource's database
	Username         string // role, already formatted (Single Server "role@server" is the caller's job)
	RestrictDatabase bool   // refuse clients that ask for a database other than Database
	ClientID         string // managed identity client ID ("" = system-assigned)
	// TLSRequired is the resource's tls_required. The login is verify-full
	// either way: the access token is never sent without TLS whose
	// certificate verified for Host. A server that answers the SSLRequest
	// with 'N' gets no login (FATAL 08001 saying why), whatever this says.
	TLSRequired bool
	// AllowedHosts are the servers that may receive the access token (the
	// node config's allowed_server_hosts); a Host not on it gets no
	// connection at all (FATAL 08001). nil = serverhost.Default(), the
	// Azure Database for PostgreSQL domains.
	AllowedHosts *serverhost.List
	// RedactParams records only the number of a statement's Bind parameters,
	// not their values.
	RedactParams bool
	RootCAs      *x509.CertPool // CAs that verify the server certificate; nil = the system pool
	// Dial opens the TCP connection to "host:port" (the configured Host, not
	// resolved first); nil = net.Dialer. Tests and host overrides use it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Credentials, when set, gives the login's username (already formatted) and
	// client ID at login time, replacing Username and ClientID: the resource
	// reads them from its secret store. It runs after the StartupMessage, under
	// the login's deadline; an error refuses the client with its FATAL (a
	// *Refusal's code, message and hint; else 08001).
	Credentials func(ctx context.Context) (username, clientID string, err error)
	// UsernameLabel, when set, stands for the username in logs, audit records
	// and every message to the client, which never see the username itself (a
	// value read from a secret store), e.g. "secret se-1234/pg-user".
	UsernameLabel string
	// ClientIDLabel, when set, stands for ClientID in messages to the client (a
	// client ID read from a secret store).
	ClientIDLabel string
}

// label is what logs, audit records and messages show for the username.
func (t Target) label() string {
	if t.UsernameLabel != "" {
		return t.UsernameLabel
	}
	return t.Username
}

// scrub replaces the username in a text with its label when the username is secret, and hides the
// role a server names as the one it expected (a value the secret should hold).
func (t Target) scrub(s string) string {
	if t.UsernameLabel == "" || t.Username == "" {
		return s
	}
	return resource.HideServerNamedRoles(strings.ReplaceAll(s, t.Username, t.UsernameLabel))
}

// scrubbed is an error whose text had the secret username replaced; it unwraps to the original for
// errors.As (the expired-token retry), whose text is never printed.
type scrubbed struct {
	msg  string
	orig error
}

func (e *scrubbed) Error() string { return e.msg }
func (e *scrubbed) Unwrap() error { return e.orig }

// Session says who a connection belongs to.
type Session struct {
	User       string // the Ferry user identified by the tunnel peer
	ClientAddr string // the client's tunnel address, "ip:port"
	// Denied, when set, refuses the session after its StartupMessage: the client gets this FATAL
	// ErrorResponse and the connection is recorded with its Outcome, "denied" when that is empty.
	// No upstream login happens.
	Denied *Refusal
}

// Refusal is a FATAL ErrorResponse the node sends instead of a session, and also, used as the cause
// of the session's context (context.WithCancelCause), the message that ends a running session.
type Refusal struct {
	Code    string // SQLSTATE, e.g. 28000
	Message string
	Hint    string
	// Outcome, when set, is the audit outcome of a running session this Refusal ends
	// (audit.OutcomeRevoked, ...), or of a session it refuses (Session.Denied); otherwise a running
	// session keeps the outcome it had, and a refused one is "denied".
	Outcome string
}

func (r *Refusal) Error() string { return r.Message }

// policyEnd returns the Refusal that ended ctx, or nil when ctx has not ended or ended for another
// reason (node shutdown).
func policyEnd(ctx context.Context) *Refusal {
	var r *Refusal
	if ctx.Err() != nil && errors.As(context.Cause(ctx), &r) {
		return r
	}
	return nil
}

// endNotice is what a client is told when ctx ends its running session: the Refusal that caused it,
// or that the node is shutting down.
func endNotice(ctx context.Context) *Refusal {
	var r *Refusal
	if errors.As(context.Cause(ctx), &r) {
		return r
	}
	return &Refusal{Code: "57P01", Message: "terminating connection: the Ferry node is shutting down", Hint: "Reconnect in a moment."}
}

// Config configures a Proxy.
type Config struct {
	Tokens         TokenSource
	Audit          AuditLog      // nil = no audit records (logs only)
	NodeID         string        // this node's ID, written into every connection record
	Logger         *slog.Logger  // nil = slog.Default()
	MaxMessageSize int           // largest client message body in bytes; 0 = DefaultMaxMessageSize
	LoginTimeout   time.Duration // 0 = DefaultLoginTimeout
	// MaxAuditSQL is the longest SQL text recorded per statement, in bytes;
	// longer texts are relayed whole and recorded cut, with their length and
	// SHA-256. 0 = DefaultMaxAuditSQL.
	MaxAuditSQL int
	// OnPanic, when set, is called once for each session that a panic ended, after the session was
	// ended alone (recover.go); the node counts them in ferry_node_session_panics_total.
	OnPanic func()
	// TestHook is for tests only and nil in production. When set, Serve relays the session through
	// TestHook(conn) once the upstream login succeeded, so a test can make one session's goroutines
	// panic (a connection whose Read or Write panics, or a TestHook that panics itself) and check
	// that only that session ends.
	TestHook func(net.Conn) net.Conn
}

// Proxy serves client connections. It is safe for concurrent use.
type Proxy struct {
	cfg    Config
	logger *slog.Logger

	mu      sync.Mutex
	cancels map[cancelKey]cancelEntry // node BackendKeyData -> upstream BackendKeyData

	buffers *bufferPool // the relay's, lent to sessions while they move data
}

// cancelKey is the BackendKeyData the proxy gave a client.
type cancelKey struct {
	pid    uint32
	secret [4]byte
}

// cancelEntry is where a CancelRequest for a session is forwarded, and whose session it is.
type cancelEntry struct {
	target Target
	user   string // the Ferry user owning the session: only that user's CancelRequests are forwarded
	pid    uint32
	secret []byte
}

// New returns a Proxy.
func New(cfg Config) *Proxy {
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.LoginTimeout <= 0 {
		cfg.LoginTimeout = DefaultLoginTimeout
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	return &Proxy{cfg: cfg, logger: logger, cancels: make(map[cancelKey]cancelEntry), buffers: newBufferPool()}
}

// registerCancel gives a session of user a fresh random BackendKeyData and
// remembers the upstream one for it. The returned func forgets it.
func (p *Proxy) registerCancel(t Target, user string, upstreamPID uint32, upstreamSecret []byte) (*pgproto3.BackendKeyData, func(), error) {
	var b [8]byte
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, nil, fmt.Errorf("generate BackendKeyData: %w", err)
		}
		k := cancelKey{pid: binary.BigEndian.Uint32(b[:4]) & 0x7fffffff}
		copy(k.secret[:], b[4:])
		if k.pid == 0 {
			continue
		}
		if _, taken := p.cancels[k]; taken {
			continue
		}
		p.cancels[k] = cancelEntry{target: t, user: user, pid: upstreamPID, secret: append([]byte(nil), upstreamSecret...)}
		forget := func() {
			p.mu.Lock()
			delete(p.cancels, k)
			p.mu.Unlock()
		}
		return &pgproto3.BackendKeyData{ProcessID: k.pid, SecretKey: k.secret[:]}, forget, nil
	}
}

func (p *Proxy) lookupCancel(pid uint32, secret []byte) (cancelEntry, bool) {
	if len(secret) != 4 {
		return cancelEntry{}, false
	}
	k := cancelKey{pid: pid}
	copy(k.secret[:], secret)
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.cancels[k]
	return e, ok
}

// outcomeError is a reason a connection was refused or ended, with what the
// client is told.
type outcomeError struct {
	outcome string // audit.OutcomeDenied or audit.OutcomeFailed
	resp    *pgproto3.ErrorResponse
	err     error // for logs
}

func (e *outcomeError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return e.resp.Message
}

func (e *outcomeError) Unwrap() error { return e.err }

// fatal builds an outcomeError with a FATAL ErrorResponse.
func fatal(outcome, code, message, detail, hint string, err error) *outcomeError {
	return &outcomeError{outcome: outcome, err: err, resp: &pgproto3.ErrorResponse{
		Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: message, Detail: detail, Hint: hint,
	}}
}

// asOutcome converts any error to an outcomeError (08P01 protocol violation
// by default).
func asOutcome(err error) *outcomeError {
	var oe *outcomeError
	if errors.As(err, &oe) {
		return oe
	}
	return fatal(audit.OutcomeFailed, "08P01", err.Error(), "", "", err)
}
