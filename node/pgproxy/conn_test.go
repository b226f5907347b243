package pgproxy

import (
	"net"
	"sync"
	"testing"
)

// acceptLoop accepts l's connections until l is closed. For each, accepted runs on the accept
// loop's goroutine (to count the session before the client can see it served) and the function it
// returns serves the connection on a goroutine of its own; wg tracks the loop and every session.
func acceptLoop(l net.Listener, wg *sync.WaitGroup, accepted func(net.Conn) func()) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			serve := accepted(c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve()
			}()
		}
	}()
}

// loopbackPair returns both ends of a loopback TCP connection, closed at cleanup.
func loopbackPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() { c, _ := l.Accept(); accepted <- c }()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		tb.Fatal("accept failed")
	}
	tb.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}
