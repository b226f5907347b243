// Package netstack is a userspace TCP/IP stack (gVisor's tcpip) that exchanges raw IP packets
// through a wireguard-go tun.Device instead of an OS interface, so a WireGuard tunnel (or, later,
// an OS TUN device) can carry TCP without root.
//
// Besides dialing and listening on its own addresses, a Stack can terminate TCP for any
// destination address (promiscuous mode with spoofing): each SYN that no listener owns is handed,
// with its (destination, source) pair, to a Forward callback that either accepts the flow (the
// three-way handshake is completed only then) or refuses it with an immediate RST. This is the
// "decide first, then SYN-ACK" pattern: a dead or forbidden target never holds a connection slot.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultMTU is the IP MTU of the stack in bytes: 1420 is wg-quick's default, i.e. a
	// 1500-byte path MTU minus the WireGuard-over-IPv6 overhead (40 IPv6 + 8 UDP + 32 WireGuard).
	DefaultMTU = 1420

	// DefaultTCPReceiveBuffer is the initial TCP receive buffer (and advertised window basis)
	// per connection in bytes: 1 MiB covers the bandwidth-delay product of 100 Mbit/s at
	// 80 ms RTT. gVisor auto-tunes it upwards to MaxTCPBuffer when the application keeps up.
	// Buffers are limits, not allocations: an idle connection holds no buffer memory
	// (see BenchmarkIdleConnMemory in package tunnel).
	DefaultTCPReceiveBuffer = 1 << 20

	// DefaultTCPSendBuffer is the TCP send buffer per connection in bytes (1 MiB), sized like
	// the receive buffer so one connection can fill the same bandwidth-delay product.
	DefaultTCPSendBuffer = 1 << 20

	// MaxTCPBuffer is the ceiling, in bytes, to which buffers may grow by auto-tuning, unless
	// a larger value is configured explicitly.
	MaxTCPBuffer = 4 << 20

	// DefaultForwardTimeout bounds how long a Forward callback may take to decide a flow.
	DefaultForwardTimeout = 10 * time.Second

	// DefaultKeepaliveIdle, DefaultKeepaliveInterval and DefaultKeepaliveCount make a
	// silent peer of a forwarded, accepted or dialed connection be detected after
	// about 60 s + 3 × 20 s = 2 minutes (TCP keepalive, RFC 1122 §4.2.3.6).
	DefaultKeepaliveIdle     = 60 * time.Second
	DefaultKeepaliveInterval = 20 * time.Second
	DefaultKeepaliveCount    = 3

	// outboundQueueLen is the number of outbound packets the link endpoint buffers before
	// the stack drops (TCP then retransmits).
	outboundQueueLen = 1024

	nicID tcpip.NICID = 1
)

// Config describes a Stack. Zero fields take the defaults above.
type Config struct {
	// Addresses are the stack's own IPv4/IPv6 addresses (at least one).
	Addresses []netip.Addr
	// MTU is the IP MTU in bytes (default DefaultMTU; at least 1280, at most 65535).
	MTU int
	// Promiscuous makes the stack accept packets for any destination address and reply from
	// that address (gVisor promiscuous mode + spoofing); used on the node and in virtual
	// networking mode.
	Promiscuous bool
	// TCPReceiveBuffer and TCPSendBuffer are per-connection TCP buffer sizes in bytes
	// (defaults DefaultTCPReceiveBuffer, DefaultTCPSendBuffer; at least 4096).
	TCPReceiveBuffer, TCPSendBuffer int
	// ForwardTimeout bounds one Forward decision (default DefaultForwardTimeout); when it
	// passes the flow is refused with RST.
	ForwardTimeout time.Duration
	// KeepaliveIdle, KeepaliveInterval and KeepaliveCount configure TCP keepalive on
	// forwarded, accepted and dialed connections (defaults above).
	KeepaliveIdle, KeepaliveInterval time.Duration
	KeepaliveCount                   int
	// UserTimeout, when positive, resets a connection whose sent data has gone unacknowledged for
	// that long (TCP_USER_TIMEOUT, RFC 5482): keepalive only probes idle connections, so a peer
	// that vanishes while data is in flight is caught by this instead. 0 = off.
	UserTimeout time.Duration
}

// Flow is a new inbound TCP flow as seen by the stack.
type Flow struct {
	Local  netip.AddrPort // the destination the peer dialed
	Remote netip.AddrPort // the peer's address
}

// Forward decides a new inbound TCP flow (a SYN for an address/port no ListenTCP owns). Return
// a handler to complete the handshake and receive the conn, or an error to answer RST at once.
// ctx is cancelled after Config.ForwardTimeout or when the stack closes. handle runs on its own
// goroutine after the handshake and owns the conn (it must close it).
type Forward func(ctx context.Context, f Flow) (handle func(net.Conn), err error)

// Stack is a gVisor TCP/IP stack whose link layer is a tun.Device (see Device).
type Stack struct {
	cfg   Config
	stack *stack.Stack
	ep    *channel.Endpoint
	dev   *device

	forwarder atomic.Pointer[tcp.Forwarder]

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	closeOnce sync.Once
}

// New creates a Stack. It is ready once Device is handed to a wireguard-go device (or any
// packet pump).
func New(cfg Config) (*Stack, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Stack{
		cfg: cfg,
		stack: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
			// HandleLocal (loop packets for our own addresses back in the stack) must be off in
			// promiscuous mode: there every address counts as ours, so gVisor would drop every
			// inbound packet as carrying a "local" source address.
			HandleLocal: !cfg.Promiscuous,
		}),
		ep: channel.New(outboundQueueLen, uint32(cfg.MTU), ""),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.configure(); err != nil {
		s.stack.Close()
		s.cancel()
		return nil, err
	}
	s.dev = newDevice(s)
	return s, nil
}

func (c *Config) setDefaults() error {
	if len(c.Addresses) == 0 {
		return errors.New("netstack: config: no addresses")
	}
	for _, a := range c.Addresses {
		if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" {
			return fmt.Errorf("netstack: config: invalid address %q", a)
		}
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		return fmt.Errorf("netstack: config: MTU %d out of range 1280..65535", c.MTU)
	}
	if c.TCPReceiveBuffer == 0 {
		c.TCPReceiveBuffer = DefaultTCPReceiveBuffer
	}
	if c.TCPSendBuffer == 0 {
		c.TCPSendBuffer = DefaultTCPSendBuffer
	}
	if c.TCPReceiveBuffer < tcp.MinBufferSize || c.TCPSendBuffer < tcp.MinBufferSize {
		return fmt.Errorf("netstack: config: TCP buffers must be at least %d bytes", tcp.MinBufferSize)
	}
	if c.ForwardTimeout == 0 {
		c.ForwardTimeout = DefaultForwardTimeout
	}
	if c.KeepaliveIdle == 0 {
		c.KeepaliveIdle = DefaultKeepaliveIdle
	}
	if c.KeepaliveInterval == 0 {
		c.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if c.KeepaliveCount == 0 {
		c.KeepaliveCount = DefaultKeepaliveCount
	}
	if c.ForwardTimeout < 0 || c.KeepaliveIdle < 0 || c.KeepaliveInterval < 0 || c.KeepaliveCount < 0 || c.UserTimeout < 0 {
		return errors.New("netstack: config: negative timeout or keepalive setting")
	}
	return nil
}

func (s *Stack) configure() error {
	opts := []tcpip.SettableTransportProtocolOption{
		ptr(tcpip.TCPSACKEnabled(true)),
		ptr(tcpip.CongestionControlOption("cubic")),
		ptr(tcpip.TCPModerateReceiveBufferOption(true)),
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: s.cfg.TCPReceiveBuffer, Max: max(MaxTCPBuffer, s.cfg.TCPReceiveBuffer)},
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: s.cfg.TCPSendBuffer, Max: max(MaxTCPBuffer, s.cfg.TCPSendBuffer)},
	}
	for _, o := range opts {
		if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fmt.Errorf("netstack: set TCP option %T: %s", o, err)
		}
	}
	if err := s.stack.CreateNIC(nicID, s.ep); err != nil {
		return fmt.Errorf("netstack: create NIC: %s", err)
	}
	var has4, has6 bool
	for _, a := range s.cfg.Addresses {
		proto := protocolOf(a)
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if err := s.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netstack: add address %s: %s", a, err)
		}
		has4 = has4 || a.Is4()
		has6 = has6 || a.Is6()
	}
	if has4 || s.cfg.Promiscuous {
		s.stack.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	if has6 || s.cfg.Promiscuous {
		s.stack.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	if s.cfg.Promiscuous {
		if err := s.stack.SetPromiscuousMode(nicID, true); err != nil {
			return fmt.Errorf("netstack: promiscuous mode: %s", err)
		}
		if err := s.stack.SetSpoofing(nicID, true); err != nil {
			return fmt.Errorf("netstack: spoofing: %s", err)
		}
	}
	// One handler for the stack's lifetime; SetForwarder swaps what it dispatches to. A SYN it
	// does not take (no forwarder) gets the stack's default answer, an RST.
	s.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		f := s.forwarder.Load()
		return f != nil && f.HandlePacket(id, pkt)
	})
	return nil
}

// Device returns the stack's link layer as a wireguard-go tun.Device (hand it to
// device.NewDevice). Closing the device closes the stack.
func (s *Stack) Device() tun.Device { return s.dev }

// MTU returns the stack's IP MTU in bytes.
func (s *Stack) MTU() int { return s.cfg.MTU }

// SetForwarder installs fn to decide inbound TCP flows that no listener owns, with at most
// maxInFlight flows awaiting a decision or handshake at a time (further SYNs are dropped and
// retransmitted by the peer). fn == nil removes the forwarder: such SYNs are then answered
// with RST. Calling it again replaces the forwarder; pending decisions finish with the old one.
func (s *Stack) SetForwarder(maxInFlight int, fn Forward) {
	if fn == nil {
		s.forwarder.Store(nil)
		return
	}
	if maxInFlight <= 0 {
		maxInFlight = 1
	}
	f := tcp.NewForwarder(s.stack, s.cfg.TCPReceiveBuffer, maxInFlight, func(r *tcp.ForwarderRequest) {
		s.handleForward(r, fn)
	})
	s.forwarder.Store(f)
}

func (s *Stack) handleForward(r *tcp.ForwarderRequest, fn Forward) {
	id := r.ID()
	flow := Flow{
		Local:  netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort),
		Remote: netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort),
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ForwardTimeout)
	handle, err := decide(ctx, fn, flow)
	cancel()
	if err != nil || handle == nil {
		r.Complete(true) // RST
		return
	}
	conn, err := s.completeHandshake(r)
	if err != nil {
		return
	}
	handle(conn)
}

// decide runs fn, turning a panic into a refusal so one bad flow cannot take the stack down,
// and a late answer into a refusal.
func decide(ctx context.Context, fn Forward, flow Flow) (handle func(net.Conn), err error) {
	defer func() {
		if p := recover(); p != nil {
			handle, err = nil, fmt.Errorf("netstack: forward %v: panic: %v", flow, p)
		}
	}()
	handle, err = fn(ctx, flow)
	if err == nil && ctx.Err() != nil {
		return nil, fmt.Errorf("netstack: forward %v: %w", flow, ctx.Err())
	}
	return handle, err
}

func (s *Stack) completeHandshake(r *tcp.ForwarderRequest) (net.Conn, error) {
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		r.Complete(true)
		return nil, fmt.Errorf("netstack: complete handshake: %s", terr)
	}
	r.Complete(false)
	s.setKeepalive(ep)
	return gonet.NewTCPConn(&wq, ep), nil
}

func (s *Stack) setKeepalive(ep tcpip.Endpoint) {
	// The timings first: enabling keepalive arms the timer with the idle time set at that moment.
	idle := tcpip.KeepaliveIdleOption(s.cfg.KeepaliveIdle)
	interval := tcpip.KeepaliveIntervalOption(s.cfg.KeepaliveInterval)
	_ = ep.SetSockOpt(&idle)
	_ = ep.SetSockOpt(&interval)
	_ = ep.SetSockOptInt(tcpip.KeepaliveCountOption, s.cfg.KeepaliveCount)
	if s.cfg.UserTimeout > 0 {
		ut := tcpip.TCPUserTimeoutOption(s.cfg.UserTimeout)
		_ = ep.SetSockOpt(&ut)
	}
	ep.SocketOptions().SetKeepAlive(true)
}

// Close shuts the stack down: open connections are reset, pending Reads of the device return
// os.ErrClosed. It is safe to call more than once.
// Done is closed once the stack is closed, by Close or, for a TUNStack, because its device failed
// (the interface was deleted under it).
func (s *Stack) Done() <-chan struct{} { return s.ctx.Done() }

func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.dev.close()
		s.forwarder.Store(nil)
		s.stack.Close()
		s.ep.Close()
		s.stack.Wait()
	})
	return nil
}

func protocolOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

func addrFrom(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

func ptr[T any](v T) *T { return &v }
