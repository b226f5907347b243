package splice

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// BenchmarkSplice moves a bulk stream (COPY-like) client -> splice -> server over loopback TCP;
// "io.Copy" is what the client did before (two io.Copy goroutines), for an A/B in one run.
func BenchmarkSplice(b *testing.B) {
	const chunk = 64 << 10
	for _, tc := range []struct {
		name   string
		splice func(ctx context.Context, a, c net.Conn)
	}{
		{"pool", func(ctx context.Context, a, c net.Conn) { NewPool().Splice(ctx, a, c, time.Second) }},
		{"io.Copy", func(ctx context.Context, a, c net.Conn) {
			done := make(chan struct{}, 2)
			go func() { io.Copy(c, a); closeWrite(c); done <- struct{}{} }()
			go func() { io.Copy(a, c); closeWrite(a); done <- struct{}{} }()
			<-done
			<-done
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			client, a := pair(b)
			c, server := pair(b)
			// As the tunnel side (gVisor's gonet) does, the connections offer no ReadFrom or
			// WriteTo, so io.Copy cannot hand the copy to the kernel (splice(2)).
			go tc.splice(context.Background(), plain{a}, plain{c})
			got := make(chan int64, 1)
			go func() { n, _ := io.Copy(io.Discard, server); got <- n }()
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ResetTimer()
			for range b.N {
				if _, err := client.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			client.CloseWrite()
			if n := <-got; n != int64(b.N)*chunk {
				b.Fatalf("got %d bytes, sent %d", n, int64(b.N)*chunk)
			}
		})
	}
}

// plain is a TCP connection without ReadFrom and WriteTo.
type plain struct{ net.Conn }

func (p plain) CloseWrite() error { return p.Conn.(*net.TCPConn).CloseWrite() }
