package pgproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtrap"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestTokenNeverInClear points a resource at a server that refuses TLS and asks for the password in
// clear (what an admin who controls the hostname's server would do): the login fails with FATAL
// 08001 saying why, and the access token never reaches that server, whether the resource requires
// TLS or not.
func TestTokenNeverInClear(t *testing.T) {
	token := fakeToken()
	for _, tlsRequired := range []bool{true, false} {
		t.Run(map[bool]string{true: "tls_required", false: "tls_required=false"}[tlsRequired], func(t *testing.T) {
			trap := pgtrap.Start(t)
			target := Target{
				Resource: "trap", Host: testHost, Port: trap.Port(), Database: "appdb", Username: "mi_user",
				TLSRequired: tlsRequired, Dial: trap.Dial,
			}
			tp := startProxy(t, Config{Tokens: &testTokens{token: token}, LoginTimeout: 10 * time.Second}, target)
			pgErr := proxyLoginError(t, tp)
			if pgErr.Code != "08001" || !strings.Contains(pgErr.Message, "does not offer TLS") || !strings.Contains(pgErr.Message, "tls_required") {
				t.Fatalf("error = %s %q, want 08001 saying the server offers no TLS", pgErr.Code, pgErr.Message)
			}
			tp.waitIdle(t)
			got := trap.Received()
			if len(got) == 0 {
				t.Fatal("the trap received nothing: the test did not reach it")
			}
			if bytes.Contains(got, []byte(token)) || bytes.Contains(got, []byte(token[:40])) {
				t.Fatalf("the access token reached a server without TLS (%d bytes received)", len(got))
			}
			conns, err := tp.audit.Connections(context.Background(), audit.ConnectionFilter{})
			if err != nil || len(conns) != 1 || conns[0].Outcome != audit.OutcomeFailed || !strings.Contains(conns[0].Error, "does not offer TLS") {
				t.Fatalf("audit = %+v, %v", conns, err)
			}
		})
	}
}

// TestLoginRefusesHostsOffTheAllowList: a Target whose host is not on the node's allow-list gets no
// connection at all (defence in depth: the control API refuses such a resource already), and an IP
// literal is refused unless listed.
func TestLoginRefusesHostsOffTheAllowList(t *testing.T) {
	token := fakeToken()
	listedIP, err := serverhost.Parse([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		host    string
		allowed *serverhost.List
		dialed  bool // the trap is reached (and then refuses TLS)
	}{
		{"attacker's name, default list", "attacker.example", nil, false},
		{"suffix without a label boundary", "evilpostgres.database.azure.com", nil, false},
		{"Azure suffix inside another domain", "mypg.postgres.database.azure.com.attacker.example", nil, false},
		{"IP literal, default list", "127.0.0.1", nil, false},
		{"Azure name, list without it", testHost, listedIP, false},
		{"IP literal that is listed", "127.0.0.1", listedIP, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			trap := pgtrap.Start(t)
			target := Target{
				Resource: "r", Host: tc.host, Port: trap.Port(), Database: "appdb", Username: "mi_user",
				TLSRequired: true, AllowedHosts: tc.allowed, Dial: trap.Dial,
			}
			tp := startProxy(t, Config{Tokens: &testTokens{token: token}, LoginTimeout: 10 * time.Second}, target)
			pgErr := proxyLoginError(t, tp)
			tp.waitIdle(t)
			if tc.dialed {
				if pgErr.Code != "08001" || !strings.Contains(pgErr.Message, "does not offer TLS") || trap.Conns() == 0 {
					t.Fatalf("error = %s %q, %d connections, want the listed IP dialled and refused for lack of TLS", pgErr.Code, pgErr.Message, trap.Conns())
				}
				return
			}
			if pgErr.Code != "08001" || !strings.Contains(pgErr.Message, serverhost.ConfigKey) || !strings.Contains(pgErr.Hint, serverhost.ConfigKey) {
				t.Fatalf("error = %s %q (hint %q), want 08001 naming %s", pgErr.Code, pgErr.Message, pgErr.Hint, serverhost.ConfigKey)
			}
			if n := trap.Conns(); n != 0 {
				t.Fatalf("the server of a host off the allow-list got %d connections", n)
			}
		})
	}
}

// proxyLoginError connects through tp and returns the FATAL error the proxy answered.
func proxyLoginError(t *testing.T, tp *testProxy) *pgconn.PgError {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb"))
	if err == nil {
		c.Close(ctx)
		t.Fatal("the login succeeded")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Severity != "FATAL" {
		t.Fatalf("connect error = %v, want a FATAL ErrorResponse", err)
	}
	return pgErr
}

// TestNoTokenRequestedForHostsOffTheAllowList: for a host off the allow-list the node does not even
// ask its token source for a token (IMDS is not called, nothing is cached), on the first login as on
// the retry after a "token expired" refusal.
func TestNoTokenRequestedForHostsOffTheAllowList(t *testing.T) {
	for _, host := range []string{"attacker.example", "127.0.0.1", "evilpostgres.database.azure.com"} {
		t.Run(host, func(t *testing.T) {
			trap := pgtrap.Start(t)
			tokens := &testTokens{token: fakeToken()}
			target := Target{
				Resource: "r", Host: host, Port: trap.Port(), Database: "appdb", Username: "mi_user",
				TLSRequired: true, Dial: trap.Dial,
			}
			tp := startProxy(t, Config{Tokens: tokens, LoginTimeout: 10 * time.Second}, target)
			pgErr := proxyLoginError(t, tp)
			tp.waitIdle(t)
			if pgErr.Code != "08001" || !strings.Contains(pgErr.Message, serverhost.ConfigKey) {
				t.Fatalf("error = %s %q, want 08001 naming %s", pgErr.Code, pgErr.Message, serverhost.ConfigKey)
			}
			if n := tokens.calls.Load(); n != 0 {
				t.Fatalf("the token source was asked %d times for a token for %s, a host off the allow-list", n, host)
			}
			if n := trap.Conns(); n != 0 {
				t.Fatalf("the server got %d connections", n)
			}
		})
	}
}

// TestTokenOnlyOverVerifiedTLS points a resource at a server that answers the SSLRequest with 'S'
// and then offers a certificate that does not verify for the resource's hostname against the node's
// CAs (for another allowed name, self-signed, from a CA the node does not trust, a wildcard one
// level too high): the TLS handshake fails, the login gets FATAL 08001, and the token never reaches
// the server. The control case, a certificate that verifies, shows the trap does catch the token.
func TestTokenOnlyOverVerifiedTLS(t *testing.T) {
	trusted, other := pgtrap.NewCA(t), pgtrap.NewCA(t)
	tests := []struct {
		name string
		host string // the resource's hostname; testHost when empty
		cert tls.Certificate
		sent bool
	}{
		{"certificate for another allowed name", "", trusted.Issue(t, "other.postgres.database.azure.com"), false},
		{"wildcard one label too high", "", trusted.Issue(t, "*.database.azure.com"), false},
		{"self-signed for the name", "", pgtrap.SelfSigned(t, testHost), false},
		{"valid for the name from a CA the node does not trust", "", other.Issue(t, testHost), false},
		{"certificate for the loopback IP the name is dialled at", "", trusted.Issue(t, "127.0.0.1"), false},
		{"control: verified certificate", "", trusted.Issue(t, testHost), true},
		{"control: upper case and a trailing dot", "MyPG.Postgres.Database.Azure.COM.", trusted.Issue(t, testHost), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			token := fakeToken()
			trap := pgtrap.StartTLS(t, tc.cert)
			host := tc.host
			if host == "" {
				host = testHost
			}
			target := Target{
				Resource: "r", Host: host, Port: trap.Port(), Database: "appdb", Username: "mi_user",
				TLSRequired: true, RootCAs: trusted.Pool, Dial: trap.Dial,
			}
			tp := startProxy(t, Config{Tokens: &testTokens{token: token}, LoginTimeout: 10 * time.Second}, target)
			pgErr := proxyLoginError(t, tp)
			tp.waitIdle(t)
			if trap.Conns() == 0 {
				t.Fatal("the trap got no connection: the test did not reach it")
			}
			got := bytes.Contains(trap.Received(), []byte(token))
			if got != tc.sent {
				t.Fatalf("token sent = %v, want %v (%d handshakes completed; login error %s %q)", got, tc.sent, trap.Handshakes(), pgErr.Code, pgErr.Message)
			}
			if tc.sent {
				return
			}
			if n := trap.Handshakes(); n != 0 {
				t.Errorf("the node completed %d TLS handshakes with a certificate that does not verify", n)
			}
			if pgErr.Code != "08001" || !strings.Contains(pgErr.Message, "certificate") {
				t.Errorf("error = %s %q, want 08001 naming the certificate", pgErr.Code, pgErr.Message)
			}
		})
	}
}

// TestForwardCancelOnlyToVerifiedAllowedHosts: a CancelRequest is forwarded only to a host on the
// allow-list, over TLS verified for it, as the login was: a cancel entry for a host off the list gets
// no connection, and a server with a certificate that does not verify does not get the cancel key.
func TestForwardCancelOnlyToVerifiedAllowedHosts(t *testing.T) {
	trusted := pgtrap.NewCA(t)
	secret := []byte{0xde, 0xad, 0xbe, 0xef}
	t.Run("host off the list", func(t *testing.T) {
		trap := pgtrap.Start(t)
		e := cancelEntry{target: Target{Resource: "r", Host: "attacker.example", Port: trap.Port(), Dial: trap.Dial}, pid: 42, secret: secret}
		err := forwardCancel(context.Background(), e)
		if err == nil || !strings.Contains(err.Error(), serverhost.ConfigKey) {
			t.Fatalf("forwardCancel = %v, want a refusal naming %s", err, serverhost.ConfigKey)
		}
		if n := trap.Conns(); n != 0 {
			t.Fatalf("the server of a host off the list got %d connections", n)
		}
	})
	t.Run("certificate for another name", func(t *testing.T) {
		trap := pgtrap.StartTLS(t, trusted.Issue(t, "other.postgres.database.azure.com"))
		e := cancelEntry{target: Target{Resource: "r", Host: testHost, Port: trap.Port(), RootCAs: trusted.Pool, Dial: trap.Dial}, pid: 42, secret: secret}
		err := forwardCancel(context.Background(), e)
		if err == nil || !strings.Contains(err.Error(), "TLS handshake") {
			t.Fatalf("forwardCancel = %v, want a TLS handshake failure", err)
		}
		if trap.Handshakes() != 0 || bytes.Contains(trap.Received(), secret) {
			t.Fatal("the cancel key reached a server whose certificate does not verify")
		}
	})
}
