package netstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// newStack starts a Stack and closes it at the end of the test.
func newStack(t testing.TB, cfg Config) *Stack {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// link pumps packets between two devices in both directions, like a wire; it stops when either
// side is closed.
func link(t testing.TB, a, b tun.Device) {
	t.Helper()
	pump := func(from, to tun.Device) {
		const offset = 16 // headroom, as wireguard-go leaves for its message header
		bufs := make([][]byte, from.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, offset+65535)
		}
		sizes := make([]int, len(bufs))
		for {
			n, err := from.Read(bufs, sizes, offset)
			if err != nil {
				return
			}
			out := make([][]byte, n)
			for i := range n {
				out[i] = bufs[i][:offset+sizes[i]]
			}
			if _, err := to.Write(out, offset); err != nil {
				return
			}
		}
	}
	go pump(a, b)
	go pump(b, a)
}

// pair returns a promiscuous "node" stack at 198.18.0.1 wired to a "client" stack at 198.18.0.2.
func pair(t testing.TB) (node, client *Stack) {
	t.Helper()
	node = newStack(t, Config{Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.1")}, Promiscuous: true})
	client = newStack(t, Config{Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.2")}})
	link(t, node.Device(), client.Device())
	return node, client
}

func echo(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
}

func TestConfigErrors(t *testing.T) {
	a := []netip.Addr{netip.MustParseAddr("198.18.0.1")}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no addresses", Config{}},
		{"invalid address", Config{Addresses: []netip.Addr{{}}}},
		{"unspecified address", Config{Addresses: []netip.Addr{netip.IPv4Unspecified()}}},
		{"MTU too small", Config{Addresses: a, MTU: 500}},
		{"MTU too large", Config{Addresses: a, MTU: 70000}},
		{"tiny buffer", Config{Addresses: a, TCPReceiveBuffer: 10}},
		{"negative timeout", Config{Addresses: a, ForwardTimeout: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded, want an error")
			}
		})
	}
}

func TestForwardAnyDestination(t *testing.T) {
	node, client := pair(t)
	flows := make(chan Flow, 4)
	node.SetForwarder(8, func(ctx context.Context, f Flow) (func(net.Conn), error) {
		flows <- f
		return echo, nil
	})
	tests := []string{"100.64.0.7:5432", "100.127.255.254:1", "198.18.0.1:5432"}
	for _, dst := range tests {
		t.Run(dst, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := client.DialContext(ctx, "tcp", dst)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			f := <-flows
			if f.Local.String() != dst {
				t.Errorf("flow local = %v, want %v", f.Local, dst)
			}
			if f.Remote.String() != c.LocalAddr().String() || f.Remote.Addr() != netip.MustParseAddr("198.18.0.2") {
				t.Errorf("flow remote = %v, want client %v", f.Remote, c.LocalAddr())
			}
			if c.RemoteAddr().String() != dst {
				t.Errorf("conn remote = %v, want %v", c.RemoteAddr(), dst)
			}
			roundTrip(t, c, []byte("hello "+dst))
		})
	}
}

func roundTrip(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func TestForwardRefused(t *testing.T) {
	tests := []struct {
		name    string
		forward Forward // nil: no forwarder installed
	}{
		{"no forwarder", nil},
		{"error", func(ctx context.Context, f Flow) (func(net.Conn), error) { return nil, errors.New("no such resource") }},
		{"nil handler", func(ctx context.Context, f Flow) (func(net.Conn), error) { return nil, nil }},
		{"panic", func(ctx context.Context, f Flow) (func(net.Conn), error) { panic("boom") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node, client := pair(t)
			if tt.forward != nil {
				node.SetForwarder(8, tt.forward)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := client.DialContext(ctx, "tcp4", "100.64.0.9:5432")
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded, want connection refused")
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial error = %v, want ECONNREFUSED", err)
			}
		})
	}
}

func TestForwardTimeoutRefuses(t *testing.T) {
	node, err := New(Config{Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.1")}, Promiscuous: true, ForwardTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	client := newStack(t, Config{Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.2")}})
	link(t, node.Device(), client.Device())
	node.SetForwarder(8, func(ctx context.Context, f Flow) (func(net.Conn), error) {
		<-ctx.Done() // a far side that never answers
		return echo, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.DialContext(ctx, "tcp", "100.64.0.9:5432")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial error = %v, want ECONNREFUSED after the forward timeout", err)
	}
}

// TestForwarderBounded checks that at most maxInFlight flows wait for a decision: the next SYN
// is dropped (not answered) until a slot frees.
func TestForwarderBounded(t *testing.T) {
	node, client := pair(t)
	release := make(chan struct{})
	started := make(chan Flow, 4)
	node.SetForwarder(1, func(ctx context.Context, f Flow) (func(net.Conn), error) {
		started <- f
		select {
		case <-release:
			return echo, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	firstDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := client.DialContext(ctx, "tcp", "100.64.0.1:5432")
		if err == nil {
			c.Close()
		}
		firstDone <- err
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := client.DialContext(ctx, "tcp", "100.64.0.2:5432")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second dial while the only slot is taken: %v, want deadline exceeded", err)
	}
	select {
	case f := <-started:
		t.Fatalf("forwarder saw %v beyond its bound", f)
	default:
	}
	close(release)
	if err := <-firstDone; err != nil {
		t.Fatalf("first dial: %v", err)
	}
}

func TestListenTakesPrecedence(t *testing.T) {
	node, client := pair(t)
	node.SetForwarder(8, func(ctx context.Context, f Flow) (func(net.Conn), error) {
		return nil, fmt.Errorf("forwarder must not see %v", f)
	})
	ln, err := node.ListenTCP(netip.MustParseAddrPort("198.18.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go echo(c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, "tcp", "198.18.0.1:80")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	roundTrip(t, c, []byte("ping"))
	if ln.Addr().String() != "198.18.0.1:80" {
		t.Errorf("listener addr = %v", ln.Addr())
	}
}

func TestListenerCloseUnblocksAccept(t *testing.T) {
	node, _ := pair(t)
	ln, err := node.ListenTCP(netip.MustParseAddrPort("198.18.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	ln.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked 5s after Close")
	}
}

func TestDeadlines(t *testing.T) {
	node, client := pair(t)
	node.SetForwarder(8, func(ctx context.Context, f Flow) (func(net.Conn), error) {
		return func(c net.Conn) { defer c.Close(); io.Copy(io.Discard, c) }, nil // never writes
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, "tcp", "100.64.0.7:5432")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past deadline = %v, want a timeout net.Error", err)
	}
}

func TestDialErrors(t *testing.T) {
	_, client := pair(t)
	tests := []struct{ network, address string }{
		{"udp", "100.64.0.1:53"},
		{"tcp", "db.example:5432"},
		{"tcp", "100.64.0.1"},
		{"tcp", "100.64.0.1:0"},
		{"tcp6", "100.64.0.1:5432"},
		{"tcp4", "[fd00::1]:5432"},
	}
	for _, tt := range tests {
		t.Run(tt.network+" "+tt.address, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			c, err := client.DialContext(ctx, tt.network, tt.address)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded, want an error")
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("dial error = %v, want an immediate validation error", err)
			}
		})
	}
}

func TestCloseUnblocksDeviceRead(t *testing.T) {
	s, err := New(Config{Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := s.Device().Read([][]byte{make([]byte, 2000)}, []int{0}, 0)
		errc <- err
	}()
	if ev := <-s.Device().Events(); ev != tun.EventUp {
		t.Errorf("first event = %v, want EventUp", ev)
	}
	s.Device().Close()
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("Read after Close = %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked 5s after Close")
	}
	if _, ok := <-s.Device().Events(); ok {
		t.Error("events channel still open after Close")
	}
	if _, err := s.Device().Write([][]byte{{0x45}}, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close = %v, want os.ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestDeviceWriteRejectsNonIP(t *testing.T) {
	s := newStack(t, Config{Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.1")}})
	n, err := s.Device().Write([][]byte{{0, 0, 0x45, 0, 0}, {0, 0}, {0, 0, 0x10, 1, 2}}, 2) // truncated IPv4 (dropped), empty, version 1
	if !errors.Is(err, syscall.EAFNOSUPPORT) || n != 2 {
		t.Fatalf("Write = %d, %v; want 2, EAFNOSUPPORT", n, err)
	}
}

// TestConcurrentFlows runs several forwarded flows at once to shake out races.
func TestConcurrentFlows(t *testing.T) {
	node, client := pair(t)
	node.SetForwarder(16, func(ctx context.Context, f Flow) (func(net.Conn), error) { return echo, nil })
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := client.DialContext(ctx, "tcp", fmt.Sprintf("100.64.0.%d:5432", i+1))
			if err != nil {
				t.Errorf("dial %d: %v", i, err)
				return
			}
			defer c.Close()
			msg := bytes.Repeat([]byte{byte(i)}, 200_000)
			go c.Write(msg)
			got := make([]byte, len(msg))
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Errorf("flow %d: echo mismatch (err %v)", i, err)
			}
		}()
	}
	wg.Wait()
}
