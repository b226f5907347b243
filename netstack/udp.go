package netstack

import (
	"errors"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// ListenUDP binds a UDP socket of the stack to addr (one of the stack's own addresses) and
// returns it as a net.PacketConn (ReadFrom/WriteTo, deadlines).
func (s *Stack) ListenUDP(addr netip.AddrPort) (net.PacketConn, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if !addr.Addr().IsValid() || addr.Addr().IsUnspecified() {
		return nil, &net.OpError{Op: "listen", Net: "udp", Err: errors.New("netstack: listen address has no IP")}
	}
	fa := &tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(addr.Addr().AsSlice()), Port: addr.Port()}
	c, err := gonet.DialUDP(s.stack, fa, nil, protocolOf(addr.Addr()))
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(addr), Err: err}
	}
	return c, nil
}
