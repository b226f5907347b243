package splice

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

// pair returns the two ends of a loopback TCP connection, closed at cleanup.
func pair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// spliced returns the outer ends of client <-> (a splice b) <-> server, and a channel closed
// when Splice returns.
func spliced(t *testing.T, ctx context.Context, linger time.Duration) (client, server *net.TCPConn, done chan struct{}) {
	t.Helper()
	client, a := pair(t)
	b, server := pair(t)
	done = make(chan struct{})
	go func() {
		defer close(done)
		NewPool().Splice(ctx, a, b, linger)
	}()
	return client, server, done
}

func wait(t *testing.T, done chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: Splice did not return", what)
	}
}

// TestSpliceCopiesBothWays sends small messages (the small buffer) and bulk data (the pooled
// one) each way, with half-closes passed on.
func TestSpliceCopiesBothWays(t *testing.T) {
	bulk := make([]byte, 3<<20+17)
	rand.Read(bulk)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"one byte", []byte("x")},
		{"exactly the small buffer", bytes.Repeat([]byte("s"), smallBuffer)},
		{"bulk", bulk},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server, done := spliced(t, context.Background(), 5*time.Second)
			got := make(chan []byte, 2)
			go func() { b, _ := io.ReadAll(server); got <- b }()
			go func() { b, _ := io.ReadAll(client); got <- b }()
			go func() { client.Write(tc.data); client.CloseWrite() }()
			go func() { server.Write(tc.data); server.CloseWrite() }()
			for range 2 {
				select {
				case b := <-got:
					if !bytes.Equal(b, tc.data) {
						t.Fatalf("got %d bytes, want the %d sent", len(b), len(tc.data))
					}
				case <-time.After(20 * time.Second):
					t.Fatal("data did not arrive")
				}
			}
			wait(t, done, "both half-closed")
		})
	}
}

// TestSpliceEnds: once one direction has ended the other gets the linger, and ending ctx stops
// both at once.
func TestSpliceEnds(t *testing.T) {
	t.Run("linger", func(t *testing.T) {
		client, _, done := spliced(t, context.Background(), 100*time.Millisecond)
		client.CloseWrite() // the server never closes its side
		wait(t, done, "after the linger")
	})
	t.Run("ctx", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		_, _, done := spliced(t, ctx, time.Hour)
		cancel()
		wait(t, done, "after ctx ended")
	})
}
