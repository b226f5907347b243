//go:build linux

package node_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node"
)

// TestEnrollmentNoHTTP2AndCapsReleased: the enrollment endpoint does not speak HTTP/2 (whose streams,
// many on one connection, would slip past caps counted per connection), and a source's connections
// give their slots back however they end (closed before, during or after the TLS handshake, reset,
// half-closed, after an answer), so that churn never locks a source out.
func TestEnrollmentNoHTTP2AndCapsReleased(t *testing.T) {
	const perSource, total = 2, 4
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := startLoopbackNode(t, ctx, func(c *node.Config) {
		c.HTTPReadTimeout = node.Duration(10 * time.Minute)
		c.HTTPIdleTimeout = node.Duration(10 * time.Minute)
		c.HTTPMaxConnsPerSource, c.HTTPMaxConns = perSource, total
	})
	addr := n.EnrollAddr().String()
	src := otherLoopbackIP()
	dial := fromSource(src, addr)

	t.Run("no HTTP/2", func(t *testing.T) {
		raw, err := dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
		defer c.Close()
		if err := c.HandshakeContext(ctx); err != nil {
			t.Fatal(err)
		}
		if p := c.ConnectionState().NegotiatedProtocol; p == "h2" {
			t.Fatalf("the enrollment endpoint negotiated %q", p)
		}
	})

	endings := []struct {
		name string
		end  func(t *testing.T, c net.Conn)
	}{
		{"closed at once", func(*testing.T, net.Conn) {}},
		{"closed inside the TLS handshake", func(_ *testing.T, c net.Conn) { _, _ = c.Write([]byte{0x16, 0x03, 0x01}) }},
		{"reset after the handshake", func(t *testing.T, c net.Conn) {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			_ = tc.HandshakeContext(ctx)
			_ = c.(*net.TCPConn).SetLinger(0)
		}},
		{"half-closed inside a header", func(t *testing.T, c net.Conn) {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			_ = tc.HandshakeContext(ctx)
			_, _ = io.WriteString(tc, "POST /v1/enroll HTTP/1.1\r\nHost: n")
			_ = tc.CloseWrite()
			_ = c.SetReadDeadline(time.Now().Add(cutWait))
			_, _ = io.Copy(io.Discard, tc)
		}},
		{"after an answer", func(t *testing.T, c net.Conn) {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			_ = tc.HandshakeContext(ctx)
			_, _ = io.WriteString(tc, "GET /v1/enroll HTTP/1.1\r\nHost: n\r\n\r\n")
			_ = c.SetReadDeadline(time.Now().Add(cutWait))
			_, _ = io.Copy(io.Discard, tc)
		}},
	}
	for round := 0; round < 10; round++ {
		for _, e := range endings {
			c, err := dial(ctx)
			if err != nil {
				t.Fatalf("%s: %v", e.name, err)
			}
			e.end(t, c)
			c.Close()
		}
	}

	// The source may hold its whole share again: perSource connections stay open (no answer, no
	// close), once the node has seen the churned ones end.
	deadline := time.Now().Add(cutWait)
	for {
		held := 0
		var cs []net.Conn
		for i := 0; i < perSource; i++ {
			c, err := dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
		for _, c := range cs {
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
				held++
			}
			c.Close()
		}
		if held == perSource {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after churn, only %d of the source's %d connections are kept: its slots were not given back", held, perSource)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
