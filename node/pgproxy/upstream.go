package pgproxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func (t Target) addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

func (t Target) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	if t.Dial != nil {
		return t.Dial
	}
	return UpstreamDialer().DialContext
}

// UpstreamDialer is the dialer for connections to servers: TCP keepalive after 30 s idle, then
// every 10 s, reset after 3 unanswered probes, so an idle session is never idle long enough on the
// wire for Azure's load balancers to drop it (they drop idle TCP flows after 4 minutes by default)
// and a server that vanished is noticed within a minute.
func UpstreamDialer() *net.Dialer {
	return &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3}}
}

// tlsConfig verifies the server certificate against RootCAs for the host name
// Host (sslmode=verify-full).
func (t Target) tlsConfig() *tls.Config {
	return &tls.Config{ServerName: t.Host, RootCAs: t.RootCAs, MinVersion: tls.VersionTLS12}
}

func (t Target) identity() string {
	if t.ClientIDLabel != "" && t.ClientID != "" {
		return "the node's user-assigned managed identity whose client ID is " + t.ClientIDLabel
	}
	if t.ClientID == "" {
		return "the node's system-assigned managed identity"
	}
	return "the node's user-assigned managed identity with client ID " + t.ClientID
}

// upstream is a logged-in server connection handed over by pgconn.
type upstream struct {
	hc      *pgconn.HijackedConn
	notices []*pgconn.Notice // NoticeResponses the server sent during login
}

// connectUpstream logs in to t as t.Username on database with token as the
// password (the server asks for it with AuthenticationCleartextPassword) and
// hijacks the connection once it is idle.
func connectUpstream(ctx context.Context, t Target, database, token string, params map[string]string) (*upstream, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	// Always verify-full, whatever t.TLSRequired says: pgconn sends the
	// password (the token) only inside the TLS session, and a server that
	// answers the SSLRequest with 'N' fails the login (no plaintext retry).
	up, err := connectOnce(ctx, t, database, token, params, t.tlsConfig())
	if err != nil {
		oe := classifyConnectError(ctx, t, err)
		if t.UsernameLabel != "" {
			// The server's messages and pgconn's name the role, a secret here.
			resp := *oe.resp
			resp.Message, resp.Detail, resp.Hint = t.scrub(resp.Message), t.scrub(resp.Detail), t.scrub(resp.Hint)
			oe = &outcomeError{outcome: oe.outcome, resp: &resp, err: &scrubbed{msg: t.scrub(oe.Error()), orig: err}}
		}
		return nil, oe
	}
	return up, nil
}

// allowList is t.AllowedHosts, or the Azure defaults when unset.
func (t Target) allowList() *serverhost.List {
	if t.AllowedHosts != nil {
		return t.AllowedHosts
	}
	return serverhost.Default()
}

// check refuses a Target the node must not log in to: an invalid port, or a Host off the allow-list.
// login calls it before a token is even requested, connectUpstream again before dialling.
func (t Target) check() error {
	if t.Port < 1 || t.Port > 65535 {
		return fatal(audit.OutcomeFailed, "08001", fmt.Sprintf("resource %s has an invalid port %d", t.Resource, t.Port), "", "Fix the resource's port in the node's catalog.", nil)
	}
	return t.checkHost()
}

// checkHost refuses a Host that is not on the node's allow-list, before anything is dialled: the
// catalog should never hold one (the control API refuses it), this is the last line.
func (t Target) checkHost() error {
	err := t.allowList().Check(t.Host)
	if err == nil {
		return nil
	}
	return fatal(audit.OutcomeFailed, "08001",
		fmt.Sprintf("resource %s: the node does not log in to %s: %v", t.Resource, t.addr(), err), "",
		fmt.Sprintf("Ask the node's operator to add the server to %s in the node config, or fix the resource's hostname.", serverhost.ConfigKey), err)
}

func connectOnce(ctx context.Context, t Target, database, token string, params map[string]string, tlsCfg *tls.Config) (*upstream, error) {
	// ParseConfig is the only supported way to make a Config; every field it
	// may have taken from PG* environment variables is overwritten below.
	cfg, err := pgconn.ParseConfig("")
	if err != nil {
		return nil, fmt.Errorf("build upstream connection config: %w", err)
	}
	cfg.Host = t.Host
	cfg.Port = uint16(t.Port)
	cfg.Database = database
	cfg.User = t.Username
	cfg.Password = token
	cfg.TLSConfig = tlsCfg
	cfg.Fallbacks = nil
	cfg.SSLNegotiation = "postgres"
	cfg.MinProtocolVersion, cfg.MaxProtocolVersion = "3.0", "3.0"
	cfg.ConnectTimeout = 0 // ctx carries the login deadline
	cfg.DialFunc = pgconn.DialFunc(t.dialer())
	// Dial gets the configured host name, not its addresses: Dial overrides
	// map names, and net.Dialer resolves and tries every address itself.
	cfg.LookupFunc = func(ctx context.Context, host string) ([]string, error) { return []string{host}, nil }
	cfg.ValidateConnect, cfg.AfterConnect, cfg.AfterNetConnect = nil, nil, nil
	cfg.KerberosSrvName, cfg.KerberosSpn = "", ""
	cfg.RuntimeParams = params
	up := &upstream{}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { up.notices = append(up.notices, n) }

	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(context.Background())
		return nil, fmt.Errorf("synchronize upstream connection: %w", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(context.Background())
		return nil, fmt.Errorf("take over upstream connection: %w", err)
	}
	up.hc = hc
	return up, nil
}

// classifyConnectError turns a login failure into what the client is told:
// the server's own ErrorResponse (SQLSTATE kept, e.g. 28000 or 28P01) when
// it refused, 08001 when it could not be reached or TLS failed.
func classifyConnectError(ctx context.Context, t Target, err error) *outcomeError {
	var oe *outcomeError
	if errors.As(err, &oe) {
		return oe
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		outcome := audit.OutcomeFailed
		hint := pgErr.Hint
		if strings.HasPrefix(pgErr.Code, "28") {
			outcome = audit.OutcomeDenied
			if hint == "" {
				hint = fmt.Sprintf("Ferry logs in as role %q with an access token of %s. Check that the role exists on the server and is mapped to that managed identity, and that Microsoft Entra authentication is enabled.", t.label(), t.identity())
			}
		}
		resp := &pgproto3.ErrorResponse{
			Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: pgErr.Code,
			Message: fmt.Sprintf("server %s of resource %s refused the login: %s", t.addr(), t.Resource, pgErr.Message),
			Detail:  pgErr.Detail, Hint: hint,
		}
		return &outcomeError{outcome: outcome, resp: resp, err: err}
	}
	why := err.Error()
	if strings.Contains(why, "server refused TLS connection") {
		// The server answered the SSLRequest with 'N'.
		msg := "the server does not offer TLS, and the node sends the managed-identity access token only over TLS verified for the host name, whatever the resource's tls_required says"
		return fatal(audit.OutcomeFailed, "08001",
			fmt.Sprintf("could not connect to server %s of resource %s: %s", t.addr(), t.Resource, msg), "",
			"Azure Database for PostgreSQL always offers TLS: check that the resource's host and port are the Azure server's.", err)
	}
	if ctx.Err() != nil {
		why = "timed out: " + why
	}
	return fatal(audit.OutcomeFailed, "08001",
		fmt.Sprintf("could not connect to server %s of resource %s: %s", t.addr(), t.Resource, why), "",
		"Check the resource's host and port, that the node can reach the server, and that the server's TLS certificate is valid for the host name (verify-full).", err)
}

// forwardCancel sends a CancelRequest for e's upstream session to its server
// over a new connection, TLS first as the login did (protocol §55.2.8). The
// server does not answer; it closes the connection.
func forwardCancel(ctx context.Context, e cancelEntry) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t := e.target
	// The session's login passed this check; the cancel is held to it too (defence in depth).
	if err := t.check(); err != nil {
		return fmt.Errorf("forward CancelRequest: %w", err)
	}
	raw, err := t.dialer()(ctx, "tcp", t.addr())
	if err != nil {
		return fmt.Errorf("forward CancelRequest: dial %s: %w", t.addr(), err)
	}
	defer raw.Close()
	deadline, _ := ctx.Deadline()
	raw.SetDeadline(deadline)
	var conn net.Conn = raw
	var ssl [8]byte
	binary.BigEndian.PutUint32(ssl[0:], 8)
	binary.BigEndian.PutUint32(ssl[4:], codeSSLRequest)
	if _, err := raw.Write(ssl[:]); err != nil {
		return fmt.Errorf("forward CancelRequest: send SSLRequest: %w", err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(raw, answer[:]); err != nil {
		return fmt.Errorf("forward CancelRequest: read SSLRequest answer: %w", err)
	}
	if answer[0] != 'S' {
		// Every session logged in over verified TLS; a server that now refuses it is not that server.
		return fmt.Errorf("forward CancelRequest: server %s refused TLS", t.addr())
	}
	tc := tls.Client(raw, t.tlsConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("forward CancelRequest: TLS handshake with %s: %w", t.addr(), err)
	}
	conn = tc
	msg, err := (&pgproto3.CancelRequest{ProcessID: e.pid, SecretKey: e.secret}).Encode(nil)
	if err != nil {
		return fmt.Errorf("forward CancelRequest: %w", err)
	}
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("forward CancelRequest: send: %w", err)
	}
	// Wait for the server to close, so the cancel has been read.
	io.Copy(io.Discard, conn)
	return nil
}
