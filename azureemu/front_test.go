package azureemu

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// connectFront logs in to the front as user with password over verify-full
// TLS, dialing Addr() for the hostname like a client whose DNS resolves it.
func connectFront(t *testing.T, e *Emulator, user, database, password, extra string) (*pgconn.PgConn, error) {
	t.Helper()
	cs := "host=" + e.Hostname() + " port=5432 sslmode=verify-full sslrootcert=" + e.CACertFile() + " connect_timeout=10 " + extra
	cfg, err := pgconn.ParseConfig(cs)
	if err != nil {
		t.Fatalf("parse config: %v", err)
	}
	cfg.User, cfg.Database, cfg.Password = user, database, password
	// The hostname resolves to the front, and only there: no DNS query leaves the machine.
	cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
	cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", e.Addr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(ctx, cfg)
}

func currentUser(t *testing.T, c *pgconn.PgConn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Exec(ctx, "SELECT current_user || ' ' || current_database()").ReadAll()
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	return string(res[0].Rows[0][0])
}

func assertRefused(t *testing.T, err error, wantMsg string) {
	t.Helper()
	assertFatal(t, err, "28000", wantMsg)
}

func assertFatal(t *testing.T, err error, wantCode, wantMsg string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("error %v, want a PostgreSQL ErrorResponse", err)
	}
	if pgErr.Severity != "FATAL" || pgErr.Code != wantCode {
		t.Fatalf("got %s %s %q, want FATAL %s", pgErr.Severity, pgErr.Code, pgErr.Message, wantCode)
	}
	if !strings.Contains(pgErr.Message, wantMsg) {
		t.Fatalf("message %q, want it to contain %q", pgErr.Message, wantMsg)
	}
}

func TestFrontLogin(t *testing.T) {
	t.Parallel()
	unmapped := newIdentity("not-a-principal")
	e := startTestEmulator(t, Config{Users: []Identity{unmapped}})
	ctx := context.Background()
	sys := e.System()
	if err := e.CreatePrincipal(ctx, "ferry-vm", sys.ObjectID); err != nil {
		t.Fatal(err)
	}
	if err := e.CreateDatabase(ctx, "appdb", "ferry-vm"); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	valid, err := e.IssueToken(sys, Resource, now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	mustIssue := func(id Identity, aud string, nbf, exp time.Time) string {
		tok, err := e.IssueToken(id, aud, nbf, exp)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// A token signed by a different key, otherwise identical in shape.
	other, err := newEmulator(Config{TenantID: e.TenantID(), System: sys})
	if err != nil {
		t.Fatal(err)
	}
	forged, err := other.IssueToken(sys, Resource, now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		user     string
		database string
		password string
		extra    string
		wantUser string // "role database" on success
		wantMsg  string // refusal message contains
	}{
		{"system identity token", "ferry-vm", "appdb", valid, "", "ferry-vm appdb", ""},
		{"direct TLS negotiation", "ferry-vm", "appdb", valid, "sslnegotiation=direct", "ferry-vm appdb", ""},
		{"trailing slash audience", "ferry-vm", "appdb", mustIssue(sys, Resource+"/", now.Add(-time.Minute), now.Add(time.Hour)), "", "ferry-vm appdb", ""},
		{"expired token", "ferry-vm", "appdb", mustIssue(sys, Resource, now.Add(-2*time.Hour), now.Add(-time.Hour)), "", "", "expired"},
		{"token not yet valid", "ferry-vm", "appdb", mustIssue(sys, Resource, now.Add(time.Hour), now.Add(2*time.Hour)), "", "", "not yet valid"},
		{"wrong audience", "ferry-vm", "appdb", mustIssue(sys, "https://management.azure.com", now.Add(-time.Minute), now.Add(time.Hour)), "", "", "valid audience claim"},
		{"bad signature", "ferry-vm", "appdb", forged, "", "", "signature"},
		{"not a JWT", "ferry-vm", "appdb", "hunter2", "", "", "password authentication failed"},
		{"principal not mapped", "ferry-vm", "appdb", mustIssue(unmapped, Resource, now.Add(-time.Minute), now.Add(time.Hour)), "", "", "not mapped"},
		{"user does not match the token's principal", "postgres", "appdb", valid, "", "", "not valid for role"},
		{"Single Server user name on Flexible Server", "ferry-vm@mypg", "appdb", valid, "", "", "not valid for role"},
		{"plaintext", "ferry-vm", "appdb", valid, "sslmode=disable", "", "SSL connection is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := connectFront(t, e, tc.user, tc.database, tc.password, tc.extra)
			if tc.wantMsg != "" {
				if err == nil {
					c.Close(ctx)
					t.Fatal("login succeeded, want refusal")
				}
				assertRefused(t, err, tc.wantMsg)
				return
			}
			if err != nil {
				t.Fatalf("login: %v", err)
			}
			defer c.Close(ctx)
			if got := currentUser(t, c); got != tc.wantUser {
				t.Fatalf("current_user, current_database = %q, want %q", got, tc.wantUser)
			}
			if c.PID() == 0 || c.ParameterStatus("server_version") == "" {
				t.Fatalf("no BackendKeyData/ParameterStatus relayed: pid %d", c.PID())
			}
		})
	}

	t.Run("psql with verify-full", func(t *testing.T) {
		psql, err := exec.LookPath("psql")
		if err != nil {
			t.Skip("psql not installed")
		}
		_, port, _ := net.SplitHostPort(e.Addr())
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, psql, "-XAtw", "-c", "SELECT current_user",
			"host="+e.Hostname()+" hostaddr=127.0.0.1 port="+port+" user=ferry-vm dbname=appdb sslmode=verify-full sslrootcert="+e.CACertFile())
		cmd.Env = append(os.Environ(), "PGPASSWORD="+valid, "PGCONNECT_TIMEOUT=10")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("psql: %v: %s", err, out)
		}
		if strings.TrimSpace(string(out)) != "ferry-vm" {
			t.Fatalf("psql printed %q", out)
		}
	})

	t.Run("default database is the role; the server's error is relayed", func(t *testing.T) {
		c, err := connectFront(t, e, "ferry-vm", "", valid, "")
		if err == nil {
			c.Close(ctx)
			t.Fatal("login to a missing database succeeded")
		}
		assertFatal(t, err, "3D000", `database "ferry-vm" does not exist`)
	})

	t.Run("negotiation and bad input", func(t *testing.T) { testNegotiationAndBadInput(t, e) })

	t.Run("certificate names the hostname", func(t *testing.T) {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(e.CACertPEM())
		// Wrong name must fail verify-full.
		_, err := rawTLS(t, e, &tls.Config{RootCAs: pool, ServerName: "other.postgres.database.azure.com"})
		if err == nil {
			t.Fatal("TLS verified for a name the certificate does not carry")
		}
		c, err := rawTLS(t, e, &tls.Config{RootCAs: pool, ServerName: e.Hostname()})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	})
}

func TestFrontSingleServer(t *testing.T) {
	t.Parallel()
	e := startTestEmulator(t, Config{SingleServer: true, ServerName: "legacy"})
	ctx := context.Background()
	sys := e.System()
	if err := e.CreatePrincipal(ctx, "app", sys.ObjectID); err != nil {
		t.Fatal(err)
	}
	if e.Hostname() != "legacy.postgres.database.azure.com" {
		t.Fatalf("hostname %q", e.Hostname())
	}
	tok, err := e.IssueToken(sys, Resource, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		user, wantMsg string
	}{
		{"app@legacy", ""},
		{"app", "username@servername"},
		{"app@other", "not valid for role"},
	}
	for _, tc := range tests {
		t.Run(tc.user, func(t *testing.T) {
			c, err := connectFront(t, e, tc.user, "postgres", tok, "")
			if tc.wantMsg != "" {
				if err == nil {
					c.Close(ctx)
					t.Fatal("login succeeded, want refusal")
				}
				assertRefused(t, err, tc.wantMsg)
				return
			}
			if err != nil {
				t.Fatalf("login: %v", err)
			}
			defer c.Close(ctx)
			if got := currentUser(t, c); got != "app postgres" {
				t.Fatalf("got %q", got)
			}
		})
	}
}

// rawTLS dials the front, sends SSLRequest and completes a TLS handshake.
func rawTLS(t *testing.T, e *Emulator, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", e.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	var s [1]byte
	if _, err := io.ReadFull(c, s[:]); err != nil || s[0] != 'S' {
		t.Fatalf("SSLRequest answer %q, %v", s, err)
	}
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// testNegotiationAndBadInput drives the front with raw bytes: GSSENCRequest
// then SSLRequest, CancelRequest, garbage and oversized packets. The front must
// answer or close, never hang or crash, and keep serving.
func testNegotiationAndBadInput(t *testing.T, e *Emulator) {
	pkt := func(code uint32, body []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
		b = binary.BigEndian.AppendUint32(b, code)
		return append(b, body...)
	}
	tests := []struct {
		name string
		send []byte
		want string // bytes the front answers with, as a prefix; "" = just closes
	}{
		{"GSSENCRequest then SSLRequest", append(pkt(gssEncRequestCode, nil), pkt(sslRequestCode, nil)...), "NS"},
		{"CancelRequest", pkt(cancelRequestCode, make([]byte, 8)), ""},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "E"},
		{"oversized startup packet", binary.BigEndian.AppendUint32(nil, 1<<30), "E"},
		{"negative length", []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, "E"},
		{"unknown protocol version", pkt(2<<16, nil), "E"},
		{"data after SSLRequest", append(pkt(sslRequestCode, nil), "injected"...), ""},
		{"truncated packet", []byte{0, 0, 0, 20, 0, 3}, "E"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", e.Addr(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			if tc.name == "truncated packet" {
				_ = c.(*net.TCPConn).CloseWrite()
			}
			if tc.want == "NS" {
				// The front now waits for a TLS ClientHello: read just the answers.
				got := make([]byte, 2)
				if _, err := io.ReadFull(c, got); err != nil || string(got) != "NS" {
					t.Fatalf("answers %q (%v), want N then S", got, err)
				}
				return
			}
			got, err := io.ReadAll(bufio.NewReader(c))
			if err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
				t.Fatalf("read: %v", err)
			}
			if !strings.HasPrefix(string(got), tc.want) || (tc.want == "" && len(got) != 0) {
				t.Fatalf("front answered %q, want prefix %q", got, tc.want)
			}
		})
	}
	// Still serving.
	if _, err := rawTLS(t, e, &tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatalf("front stopped serving after bad input: %v", err)
	}
}
