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
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgBin is where the PostgreSQL 15 server binaries are installed (Debian).
const pgBin = "/usr/lib/postgresql/15/bin"

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

// pgCredential is who runs initdb and postgres: PostgreSQL refuses to run as
// root, so under root it is the "postgres" user if present, else "nobody".
func pgCredential(tb testing.TB) *syscall.Credential {
	if os.Geteuid() != 0 {
		return nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	tb.Skip("running as root and neither a postgres nor a nobody user exists to run PostgreSQL")
	return nil
}

func chownAll(tb testing.TB, dir string, cred *syscall.Credential) {
	tb.Helper()
	if cred == nil {
		return
	}
	err := filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(cred.Uid), int(cred.Gid))
	})
	if err != nil {
		tb.Fatalf("chown %s: %v", dir, err)
	}
}

// startPostgres starts a PostgreSQL 15 server on a free loopback port with
// ssl=on, pg_hba "hostssl all all 127.0.0.1/32 password" (and "reject" for
// database rejectdb), databases appdb and rejectdb, and role mi_user whose
// password is a fake token. It is stopped by tb.Cleanup.
func startPostgres(tb testing.TB) *testPG {
	tb.Helper()
	if _, err := os.Stat(filepath.Join(pgBin, "postgres")); err != nil {
		tb.Skipf("PostgreSQL 15 server binaries not installed in %s: %v", pgBin, err)
	}
	cred := pgCredential(tb)
	dir, err := os.MkdirTemp("", "ferry-pgproxy-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	sock := filepath.Join(dir, "sock")
	if err := os.Mkdir(sock, 0o700); err != nil {
		tb.Fatal(err)
	}
	chownAll(tb, dir, cred)

	run := func(name string, args ...string) {
		cmd := exec.Command(filepath.Join(pgBin, name), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Fatalf("%s: %v\n%s", name, err, out)
		}
	}
	run("initdb", "-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=reject", "--no-sync", "-E", "UTF8", "--locale=C")

	roots, certPEM, keyPEM := makeServerCert(tb, testHost)
	hba := "local all all trust\n" +
		"hostssl rejectdb all 127.0.0.1/32 reject\n" +
		"hostssl all all 127.0.0.1/32 password\n"
	for name, content := range map[string][]byte{"pg_hba.conf": []byte(hba), "server.crt": certPEM, "server.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(data, name), content, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	chownAll(tb, dir, cred)

	port := freePort(tb)
	logFile := filepath.Join(dir, "postgres.log")
	logf, err := os.Create(logFile)
	if err != nil {
		tb.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(pgBin, "postgres"), "-D", data, "-p", strconv.Itoa(port), "-k", sock,
		"-c", "listen_addresses=127.0.0.1", "-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=40",
		"-c", "shared_buffers=16MB", "-c", "dynamic_shared_memory_type=mmap")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start postgres: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	tb.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})

	pg := &testPG{port: port, sockDir: sock, roots: roots, token: fakeToken()}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := exec.Command(filepath.Join(pgBin, "pg_isready"), "-q", "-h", sock, "-p", strconv.Itoa(port), "-U", "postgres").Run()
		if err == nil {
			break
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(logFile)
			tb.Fatalf("postgres exited at start:\n%s", out)
		default:
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logFile)
			tb.Fatalf("postgres not ready after 30s:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
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
