// Package pgtrap is a fake PostgreSQL server for tests, as an attacker would run it to catch the
// node's managed-identity access token: it listens on loopback, answers every SSLRequest and
// GSSENCRequest with 'N' (no TLS), asks for the password in clear (AuthenticationCleartextPassword)
// and records every byte it receives. A test then asserts that the token never arrived.
//
// StartTLS starts one that answers the SSLRequest with 'S' and offers a certificate of the test's
// choosing (for another name, self-signed, from a CA the node does not trust), then asks for the
// password inside that TLS session and records what it decrypts.
package pgtrap

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"
)

// Protocol codes (PostgreSQL protocol, "Message Formats").
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	protocol3         = 196608
)

// Trap is a running fake server.
type Trap struct {
	ln         net.Listener
	tls        *tls.Config // nil: answer 'N' to SSLRequest
	mu         sync.Mutex
	recv       bytes.Buffer
	conns      int
	handshakes int // TLS handshakes the client completed
	wg         sync.WaitGroup
}

// Start starts a Trap on 127.0.0.1 and stops it with t.Cleanup.
func Start(tb testing.TB) *Trap {
	tb.Helper()
	return start(tb, nil)
}

// StartTLS starts a Trap that accepts TLS with cert and asks for the password inside it.
func StartTLS(tb testing.TB, cert tls.Certificate) *Trap {
	tb.Helper()
	return start(tb, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
}

func start(tb testing.TB, tlsCfg *tls.Config) *Trap {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("pgtrap: listen: %v", err)
	}
	tr := &Trap{ln: ln, tls: tlsCfg}
	tr.wg.Add(1)
	go tr.accept()
	tb.Cleanup(func() {
		ln.Close()
		tr.wg.Wait()
	})
	return tr
}

// Addr is "127.0.0.1:PORT".
func (tr *Trap) Addr() string { return tr.ln.Addr().String() }

// Port is the listening port.
func (tr *Trap) Port() int { return tr.ln.Addr().(*net.TCPAddr).Port }

// Dial dials the trap whatever address it is asked for (a Target.Dial or host override).
func (tr *Trap) Dial(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, tr.Addr())
}

// Received returns every byte received so far, of every connection.
func (tr *Trap) Received() []byte {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return bytes.Clone(tr.recv.Bytes())
}

// Handshakes is the number of TLS handshakes clients completed so far (the client accepted the
// trap's certificate).
func (tr *Trap) Handshakes() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.handshakes
}

// Conns is the number of connections accepted so far.
func (tr *Trap) Conns() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.conns
}

func (tr *Trap) accept() {
	defer tr.wg.Done()
	for {
		c, err := tr.ln.Accept()
		if err != nil {
			return
		}
		tr.mu.Lock()
		tr.conns++
		tr.mu.Unlock()
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			defer c.Close()
			tr.serve(c)
		}()
	}
}

// recorder appends what is read to the trap's record.
type recorder struct {
	tr *Trap
	r  io.Reader
}

func (r recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.tr.mu.Lock()
	r.tr.recv.Write(p[:n])
	r.tr.mu.Unlock()
	return n, err
}

func (tr *Trap) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := recorder{tr: tr, r: c}
	// Untyped messages until the StartupMessage.
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[:4]))
		code := binary.BigEndian.Uint32(hdr[4:])
		if n < 8 || n > 10000 {
			return
		}
		if _, err := io.CopyN(io.Discard, r, int64(n-8)); err != nil {
			return
		}
		if code == codeSSLRequest && tr.tls != nil {
			if _, err := c.Write([]byte{'S'}); err != nil {
				return
			}
			tc := tls.Server(c, tr.tls)
			if err := tc.Handshake(); err != nil {
				return
			}
			tr.mu.Lock()
			tr.handshakes++
			tr.mu.Unlock()
			c, r = tc, recorder{tr: tr, r: tc}
			continue
		}
		if code == codeSSLRequest || code == codeGSSENCRequest {
			if _, err := c.Write([]byte{'N'}); err != nil {
				return
			}
			continue
		}
		if code != protocol3 {
			return
		}
		break
	}
	// AuthenticationCleartextPassword: the client answers with a PasswordMessage in clear.
	if _, err := c.Write([]byte{'R', 0, 0, 0, 8, 0, 0, 0, 3}); err != nil {
		return
	}
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > 1<<20 {
		return
	}
	if _, err := io.CopyN(io.Discard, r, int64(n-4)); err != nil {
		return
	}
	// Refuse, so the client ends: a real attacker would not need more.
	msg := "SFATAL\x00C28P01\x00Mpassword authentication failed\x00\x00"
	resp := []byte{'E'}
	resp = binary.BigEndian.AppendUint32(resp, uint32(4+len(msg)))
	resp = append(resp, msg...)
	c.Write(resp)
}

// CA is a test certificate authority.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	Pool *x509.CertPool // holds only this CA
}

// NewCA makes a CA.
func NewCA(tb testing.TB) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pgtrap test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatalf("pgtrap: make CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("pgtrap: make CA: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{cert: cert, key: key, Pool: pool}
}

// Issue makes a server certificate for names (DNS names or IP addresses) signed by ca.
func (ca *CA) Issue(tb testing.TB, names ...string) tls.Certificate {
	tb.Helper()
	return issue(tb, ca.cert, ca.key, names)
}

// SelfSigned makes a self-signed server certificate for names.
func SelfSigned(tb testing.TB, names ...string) tls.Certificate {
	tb.Helper()
	return issue(tb, nil, nil, names)
}

func issue(tb testing.TB, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, names []string) tls.Certificate {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		tb.Fatalf("pgtrap: issue certificate: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("pgtrap: generate key: %v", err)
	}
	return key
}
