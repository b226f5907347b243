package tunnel

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/ferryhq/ferry/netstack"
)

// BenchmarkTunnelTCPThroughput streams bytes from a client through real wireguard-go (UDP on
// loopback) into a node's forwarder, one TCP connection, 64 KiB writes. The node confirms the
// byte count at the end, so the timing covers delivery, not just buffering.
func BenchmarkTunnelTCPThroughput(b *testing.B) {
	node, nodeKey := startNode(b, nil)
	node.Stack().SetForwarder(8, func(ctx context.Context, f netstack.Flow) (func(net.Conn), error) {
		return func(c net.Conn) {
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			binary.Write(c, binary.BigEndian, n)
		}, nil
	})
	client, _ := startClient(b, node, nodeKey, clientAddr, true)
	c, err := dial(b, client, "100.64.0.7:5432", 10*time.Second)
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
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		b.Fatal(err)
	}
	var got int64
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if want := int64(b.N) * int64(len(chunk)); got != want {
		b.Fatalf("node received %d bytes, want %d", got, want)
	}
}

// BenchmarkIdleConnMemory opens b.N idle TCP connections through the tunnel, each held by a
// node-side handler goroutine blocked in Read (as a proxy would), and reports the live heap
// plus goroutine stacks they add, per connection. The figure covers both ends (client and
// node stacks live in this one process).
func BenchmarkIdleConnMemory(b *testing.B) {
	node, nodeKey := startNode(b, nil)
	accepted := make(chan struct{}, 1024)
	node.Stack().SetForwarder(1024, func(ctx context.Context, f netstack.Flow) (func(net.Conn), error) {
		return func(c net.Conn) {
			defer c.Close()
			accepted <- struct{}{}
			io.Copy(io.Discard, c)
		}, nil
	})
	client, _ := startClient(b, node, nodeKey, clientAddr, true)
	// Warm up: the first connection pays for the handshake and pools.
	warm, err := dial(b, client, "100.64.0.7:5432", 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	<-accepted
	defer warm.Close()

	before := liveBytes()
	goroutines := runtime.NumGoroutine()
	conns := make([]net.Conn, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		c, err := dial(b, client, "100.64.0.7:5432", 10*time.Second)
		if err != nil {
			b.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		<-accepted
	}
	b.StopTimer()
	after := liveBytes()
	b.ReportMetric(float64(after-before)/float64(b.N), "bytes/conn")
	b.ReportMetric(float64(runtime.NumGoroutine()-goroutines)/float64(b.N), "goroutines/conn")
	for _, c := range conns {
		c.Close()
	}
}

// liveBytes is the live heap plus goroutine stacks after a full GC.
func liveBytes() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc + m.StackInuse)
}
