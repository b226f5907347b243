package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// tunPair runs a TUNStack whose "OS device" is a plain stack standing in for the kernel: the
// kernel side has the TUN address 100.64.0.1, the TUN stack answers for the rest of the subnet.
func tunPair(t testing.TB) (kernel *Stack, vn *TUNStack) {
	t.Helper()
	kernel = newStack(t, Config{Addresses: []netip.Addr{netip.MustParseAddr("100.64.0.1")}})
	vn, err := NewTUNStack(kernel.Device(), Config{Addresses: []netip.Addr{netip.MustParseAddr("100.64.0.2")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vn.Close() })
	return kernel, vn
}

func TestTUNStackForward(t *testing.T) {
	kernel, vn := tunPair(t)
	vn.SetForwarder(16, func(ctx context.Context, f Flow) (func(net.Conn), error) {
		if f.Local != netip.MustParseAddrPort("100.64.0.3:5432") {
			return nil, errors.New("not connected")
		}
		return echo, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := kernel.DialContext(ctx, "tcp", "100.64.0.3:5432")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := make([]byte, 3*TUNMTU) // several segments of the jumbo MTU
	for i := range big {
		big[i] = byte(i)
	}
	roundTrip(t, c, big)

	_, err = kernel.DialContext(ctx, "tcp", "100.64.0.4:5432")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial to an address that is not connected: %v, want connection refused (RST)", err)
	}
}

func TestTUNStackUDP(t *testing.T) {
	kernel, vn := tunPair(t)
	pc, err := vn.ListenUDP(netip.MustParseAddrPort("100.64.0.2:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("re:"), buf[:n]...), from)
		}
	}()
	c, err := kernel.ListenUDP(netip.MustParseAddrPort("100.64.0.1:40000"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteTo([]byte("ping"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("100.64.0.2:53"))); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, _, err := c.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "re:ping" {
		t.Fatalf("got %q, %v", buf[:n], err)
	}
}

// BenchmarkTUNIdleConnMemory opens b.N idle TCP connections from the "kernel" side into a
// TUNStack, each held by a forwarder handler blocked in Read (as the client's splice is), and
// reports the live heap plus goroutine stacks added per connection, for both ends together.
func BenchmarkTUNIdleConnMemory(b *testing.B) {
	kernel, vn := tunPair(b)
	accepted := make(chan struct{}, 1024)
	vn.SetForwarder(1024, func(ctx context.Context, f Flow) (func(net.Conn), error) {
		return func(c net.Conn) {
			defer c.Close()
			accepted <- struct{}{}
			io.Copy(io.Discard, c)
		}, nil
	})
	dial := func() net.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := kernel.DialContext(ctx, "tcp", "100.64.0.3:5432")
		if err != nil {
			b.Fatal(err)
		}
		<-accepted
		return c
	}
	defer dial().Close() // warm up
	before := live()
	g := runtime.NumGoroutine()
	conns := make([]net.Conn, 0, b.N)
	b.ResetTimer()
	for range b.N {
		conns = append(conns, dial())
	}
	b.StopTimer()
	b.ReportMetric(float64(live()-before)/float64(b.N), "bytes/conn")
	b.ReportMetric(float64(runtime.NumGoroutine()-g)/float64(b.N), "goroutines/conn")
	for _, c := range conns {
		c.Close()
	}
}

func live() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc + m.StackInuse)
}
