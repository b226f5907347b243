package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// listenBacklog is the accept queue length of a listener (Linux's default somaxconn).
const listenBacklog = 4096

// DialContext opens a TCP connection from the stack to address, a numeric "ip:port" (no name
// resolution). network is "tcp", "tcp4" or "tcp6". The connection has keepalive enabled and
// supports deadlines. A refused connection (RST) fails with an error matching
// syscall.ECONNREFUSED; ctx expiring fails with ctx.Err().
func (s *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("netstack: address %q is not a numeric ip:port: %w", address, err)}
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	switch {
	case network == "tcp":
	case network == "tcp4" && ap.Addr().Is4(), network == "tcp6" && ap.Addr().Is6():
	case network == "tcp4" || network == "tcp6":
		return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: errors.New("netstack: address family does not match network")}
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: net.UnknownNetworkError(network)}
	}
	if ap.Port() == 0 || ap.Addr().IsUnspecified() {
		return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: errors.New("netstack: missing address or port")}
	}
	c, err := s.dial(ctx, ap)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	return c, nil
}

func (s *Stack) dial(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	var wq waiter.Queue
	ep, terr := s.stack.NewEndpoint(tcp.ProtocolNumber, protocolOf(ap.Addr()), &wq)
	if terr != nil {
		return nil, translate(terr)
	}
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if err := ctx.Err(); err != nil {
		ep.Close()
		return nil, err
	}
	s.setKeepalive(ep)
	terr = ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()})
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctx.Err()
		case <-s.ctx.Done():
			ep.Close()
			return nil, net.ErrClosed
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, translate(terr)
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

// ListenTCP listens on addr, which must be one of the stack's addresses (or any address in
// promiscuous mode). Accepted connections have keepalive enabled and support deadlines.
// A listener takes precedence over the forwarder for its address and port.
func (s *Stack) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if !addr.Addr().IsValid() {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Err: errors.New("netstack: listen address has no IP")}
	}
	var wq waiter.Queue
	ep, terr := s.stack.NewEndpoint(tcp.ProtocolNumber, protocolOf(addr.Addr()), &wq)
	if terr != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: translate(terr)}
	}
	fa := tcpip.FullAddress{NIC: nicID, Port: addr.Port()}
	if !addr.Addr().IsUnspecified() {
		fa.Addr = tcpip.AddrFromSlice(addr.Addr().AsSlice())
	}
	if terr := ep.Bind(fa); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "bind", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: translate(terr)}
	}
	if terr := ep.Listen(listenBacklog); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: translate(terr)}
	}
	la := net.TCPAddrFromAddrPort(addr)
	if got, err := ep.GetLocalAddress(); err == nil {
		la = net.TCPAddrFromAddrPort(netip.AddrPortFrom(addrFrom(got.Addr), got.Port))
	}
	return &listener{s: s, ep: ep, wq: &wq, addr: la, done: make(chan struct{})}, nil
}

// listener is a net.Listener over a listening gVisor endpoint. Unlike gonet's, its Close
// unblocks a pending Accept, and accepted endpoints get keepalive (gVisor does not inherit
// keepalive from the listening endpoint).
type listener struct {
	s    *Stack
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	addr *net.TCPAddr
	once sync.Once
	done chan struct{}
}

func (l *listener) Accept() (net.Conn, error) {
	entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
	l.wq.EventRegister(&entry)
	defer l.wq.EventUnregister(&entry)
	for {
		select {
		case <-l.done:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
		default:
		}
		ep, wq, terr := l.ep.Accept(nil)
		if terr == nil {
			l.s.setKeepalive(ep)
			return gonet.NewTCPConn(wq, ep), nil
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: translate(terr)}
		}
		select {
		case <-notify:
		case <-l.done:
		case <-l.s.ctx.Done():
			l.Close()
		}
	}
}

func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.ep.Close()
	})
	return nil
}

func (l *listener) Addr() net.Addr { return l.addr }

// translate maps a gVisor error to the syscall errno a net.Conn user expects, so callers can
// test with errors.Is(err, syscall.ECONNREFUSED) etc.; other errors keep gVisor's text.
func translate(err tcpip.Error) error {
	switch err.(type) {
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted:
		return syscall.ECONNABORTED
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT
	case *tcpip.ErrNetworkUnreachable:
		return syscall.ENETUNREACH
	case *tcpip.ErrHostUnreachable:
		return syscall.EHOSTUNREACH
	case *tcpip.ErrPortInUse:
		return syscall.EADDRINUSE
	case *tcpip.ErrBadLocalAddress:
		return syscall.EADDRNOTAVAIL
	case *tcpip.ErrClosedForSend, *tcpip.ErrClosedForReceive:
		return net.ErrClosed
	}
	return errors.New(err.String())
}
