package health_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/internal/pgtrap"
	"github.com/ferryhq/ferry/node/health"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/resource"
)

// staticTokens hands out one token and counts the requests.
type staticTokens struct {
	token string
	calls atomic.Int32
}

func (s *staticTokens) Token(context.Context, string) (string, time.Time, error) {
	s.calls.Add(1)
	return s.token, time.Now().Add(time.Hour), nil
}

const trapToken = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJodHRwczovL29zc3JkYm1zLWFhZC5kYXRhYmFzZS53aW5kb3dzLm5ldCJ9.c2lnbmF0dXJl-health"

// noDNS is a resolver whose queries go to a closed loopback port: nothing leaves the machine.
func noDNS(t *testing.T) *net.Resolver {
	addr := closedPort(t)
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

// TestCheckNeverSendsTokenInClear: a health check of a resource whose server refuses TLS and asks
// for the password in clear fails at the TLS step with the reason, and the token never reaches that
// server, whether the resource requires TLS or not.
func TestCheckNeverSendsTokenInClear(t *testing.T) {
	for _, tlsRequired := range []bool{true, false} {
		t.Run("tls_required="+strconv.FormatBool(tlsRequired), func(t *testing.T) {
			trap := pgtrap.Start(t)
			const host = "trap.postgres.database.azure.com"
			tokens := &staticTokens{token: trapToken}
			c := health.NewChecker(health.Config{Tokens: tokens, HostOverrides: map[string]string{host: trap.Addr()}, Resolver: noDNS(t), StepTimeout: 5 * time.Second})
			r := resource.New("trap")
			r.Hostname, r.Database, r.Username, r.TLSRequired = host, "postgres", "mi_user", tlsRequired
			h := c.Check(context.Background(), r, nil)
			if h.State != api.HealthUnhealthy || h.FailedStep != api.StepTLS || !strings.Contains(h.Error, "refused TLS") || !strings.Contains(h.Error, "tls_required") {
				t.Fatalf("want unhealthy at %s saying why, got %s at %q: %s", api.StepTLS, h.State, h.FailedStep, h.Error)
			}
			if !strings.Contains(h.Hint, "never logs in without verified TLS") {
				t.Errorf("hint %q", h.Hint)
			}
			got := trap.Received()
			if len(got) == 0 {
				t.Fatal("the trap received nothing: the test did not reach it")
			}
			if bytes.Contains(got, []byte(trapToken)) {
				t.Fatal("the access token reached a server without TLS")
			}
		})
	}
}

// TestCheckRefusesHostsOffTheAllowList: the check of a resource whose hostname is not on the node's
// allow-list fails at its first step, naming the config key, before any lookup, connection or token
// request; an IP literal is refused unless listed.
func TestCheckRefusesHostsOffTheAllowList(t *testing.T) {
	trap := pgtrap.Start(t)
	listedIP, err := serverhost.Parse([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		host    string
		allowed *serverhost.List
		step    string
	}{
		{"attacker's name", "attacker.example", nil, api.StepResolve},
		{"suffix without a label boundary", "evilpostgres.database.azure.com", nil, api.StepResolve},
		{"Azure suffix inside another domain", "mypg.postgres.database.azure.com.attacker.example", nil, api.StepResolve},
		{"IP literal", "127.0.0.1", nil, api.StepResolve},
		{"IP literal that is listed", "127.0.0.1", listedIP, api.StepTLS},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := trap.Conns()
			tokens := &staticTokens{token: trapToken}
			overrides := map[string]string{tc.host: trap.Addr()}
			c := health.NewChecker(health.Config{Tokens: tokens, HostOverrides: overrides, AllowedHosts: tc.allowed, Resolver: noDNS(t), StepTimeout: 5 * time.Second})
			r := resource.New("r")
			r.Hostname, r.Port, r.Database, r.Username = tc.host, trap.Port(), "postgres", "mi_user"
			h := c.Check(context.Background(), r, nil)
			if h.State != api.HealthUnhealthy || h.FailedStep != tc.step {
				t.Fatalf("want unhealthy at %s, got %s at %q: %s", tc.step, h.State, h.FailedStep, h.Error)
			}
			if tc.step != api.StepResolve {
				return
			}
			if !strings.Contains(h.Error, serverhost.ConfigKey) || !strings.Contains(h.Hint, serverhost.ConfigKey) {
				t.Errorf("error %q / hint %q do not name %s", h.Error, h.Hint, serverhost.ConfigKey)
			}
			if n := trap.Conns() - before; n != 0 || tokens.calls.Load() != 0 {
				t.Errorf("%d connections and %d token requests for a host off the list", n, tokens.calls.Load())
			}
		})
	}
}

// TestCheckTokenOnlyOverVerifiedTLS: a health check of a server that accepts TLS with a certificate
// that does not verify for the hostname against the node's CAs fails at its tls step, before any
// token is requested, and the token never reaches that server. The control case shows the trap
// catches the token when the certificate verifies.
func TestCheckTokenOnlyOverVerifiedTLS(t *testing.T) {
	const host = "trap.postgres.database.azure.com"
	trusted, other := pgtrap.NewCA(t), pgtrap.NewCA(t)
	tests := []struct {
		name string
		cert tls.Certificate
		sent bool
	}{
		{"certificate for another allowed name", trusted.Issue(t, "other.postgres.database.azure.com"), false},
		{"self-signed for the name", pgtrap.SelfSigned(t, host), false},
		{"valid for the name from a CA the node does not trust", other.Issue(t, host), false},
		{"certificate for the address dialled", trusted.Issue(t, "127.0.0.1"), false},
		{"control: verified certificate", trusted.Issue(t, host), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			trap := pgtrap.StartTLS(t, tc.cert)
			tokens := &staticTokens{token: trapToken}
			c := health.NewChecker(health.Config{Tokens: tokens, RootCAs: trusted.Pool, HostOverrides: map[string]string{host: trap.Addr()}, Resolver: noDNS(t), StepTimeout: 5 * time.Second})
			r := resource.New("trap")
			r.Hostname, r.Database, r.Username = host, "postgres", "mi_user"
			h := c.Check(context.Background(), r, nil)
			if got := bytes.Contains(trap.Received(), []byte(trapToken)); got != tc.sent {
				t.Fatalf("token sent = %v, want %v (check: %s at %q: %s)", got, tc.sent, h.State, h.FailedStep, h.Error)
			}
			if tc.sent {
				return
			}
			if h.State != api.HealthUnhealthy || h.FailedStep != api.StepTLS || !strings.Contains(h.Error, "certificate") {
				t.Errorf("want unhealthy at %s naming the certificate, got %s at %q: %s", api.StepTLS, h.State, h.FailedStep, h.Error)
			}
			if n := tokens.calls.Load(); n != 0 || trap.Handshakes() != 0 {
				t.Errorf("%d token requests, %d completed handshakes with a certificate that does not verify", n, trap.Handshakes())
			}
		})
	}
}
