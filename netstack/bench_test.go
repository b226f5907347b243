package netstack

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// BenchmarkStackTCPThroughput streams bytes between two stacks wired back to back (no
// WireGuard), one TCP connection, 64 KiB writes: the ceiling the stack itself sets.
func BenchmarkStackTCPThroughput(b *testing.B) {
	node, client := pair(b)
	node.SetForwarder(8, func(ctx context.Context, f Flow) (func(net.Conn), error) {
		return func(c net.Conn) {
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			binary.Write(c, binary.BigEndian, n)
		}, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, "tcp", "100.64.0.7:5432")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	var got int64
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if want := int64(b.N) * int64(len(chunk)); got != want {
		b.Fatalf("received %d bytes, want %d", got, want)
	}
}
