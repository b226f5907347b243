package pgproxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgserver"
)

// testHost is the server's host name: it only exists in its certificate and
// in the Dial override that maps it to loopback.
const testHost = "mypg.postgres.database.azure.com"

// testPG is a real PostgreSQL server with ssl=on and a certificate for testHost.
type testPG struct {
	port    int
	sockDir string
	roots   *x509.CertPool // the test CA
	token   string         // the password of role mi_user: a long fake access token
}

// dial maps testHost to the server on loopback, as a host override would.
func (pg *testPG) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if host != testHost {
		return nil, fmt.Errorf("test dial: unexpected host %q (want the configured host name, unresolved)", host)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
}

// target is the resource pointing at pg.
func (pg *testPG) target() Target {
	return Target{
		Resource: "pg-test", Host: testHost, Port: pg.port, Database: "appdb", Username: "mi_user",
		TLSRequired: true, RootCAs: pg.roots, Dial: pg.dial,
	}
}

// psqlAdmin runs SQL as the superuser over the Unix socket.
func (pg *testPG) psqlAdmin(tb testing.TB, sql string) string {
	tb.Helper()
	out, err := exec.Command("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", pg.sockDir, "-p", strconv.Itoa(pg.port), "-U", "postgres", "-d", "postgres", "-c", sql).CombinedOutput()
	if err != nil {
		tb.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return string(out)
}

// fakeToken looks like an Entra ID access token (a JWT of about 1,200 characters).
func fakeToken() string {
	var b strings.Builder
	b.WriteString("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.")
	for b.Len() < 1180 {
		b.WriteString("eyJhdWQiOiJodHRwczovL29zc3JkYm1zLWFhZC5kYXRhYmFzZS53aW5kb3dzLm5ldCJ9")
	}
	b.WriteString(".c2lnbmF0dXJl")
	return b.String()
}

// startPostgres starts a PostgreSQL server (internal/pgserver) on a free loopback port with
// ssl=on, pg_hba "hostssl all all 127.0.0.1/32 password" (and "reject" for database rejectdb),
// databases appdb, otherdb and rejectdb, and role mi_user whose password is a fake token. It is
// stopped by tb.Cleanup.
func startPostgres(tb testing.TB) *testPG {
	tb.Helper()
	ctx := context.Background()
	dir, err := pgserver.MakeTempDir("ferry-pgproxy-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	srv, err := pgserver.New(pgserver.Config{
		Dir: dir, Superuser: "postgres", Port: freePort(tb), ListenAddresses: "127.0.0.1", MaxConnections: 40,
		Settings: []string{"ssl=on", "ssl_cert_file=server.crt", "ssl_key_file=server.key"},
	})
	if errors.Is(err, pgserver.ErrNoBinaries) {
		tb.Skipf("PostgreSQL tests skipped: %v", err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	if err := srv.Init(ctx); err != nil {
		tb.Fatal(err)
	}
	roots, certPEM, keyPEM := makeServerCert(tb, testHost)
	hba := "local all all trust\n" +
		"hostssl rejectdb all 127.0.0.1/32 reject\n" +
		"hostssl all all 127.0.0.1/32 password\n"
	for name, content := range map[string][]byte{"pg_hba.conf": []byte(hba), "server.crt": certPEM, "server.key": keyPEM} {
		if err := srv.WriteDataFile(name, content); err != nil {
			tb.Fatal(err)
		}
	}
	if err := srv.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			tb.Errorf("stop PostgreSQL: %v", err)
		}
	})
	pg := &testPG{port: srv.Port(), sockDir: srv.SocketDir(), roots: roots, token: fakeToken()}
	pg.psqlAdmin(tb, "CREATE ROLE mi_user LOGIN PASSWORD '"+pg.token+"'")
	pg.psqlAdmin(tb, "CREATE DATABASE appdb OWNER mi_user")
	pg.psqlAdmin(tb, "CREATE DATABASE otherdb OWNER mi_user")
	pg.psqlAdmin(tb, "CREATE DATABASE rejectdb OWNER mi_user")
	return pg
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// makeServerCert makes a test CA and a server certificate for host signed by it.
func makeServerCert(tb testing.TB, host string) (*x509.CertPool, []byte, []byte) {
	tb.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Ferry test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	var certPEM, keyPEM bytes.Buffer
	pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	pem.Encode(&keyPEM, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	return pool, certPEM.Bytes(), keyPEM.Bytes()
}
