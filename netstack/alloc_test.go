package netstack

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestLinkEndpointAllocs is the link endpoint's allocation budget: heap allocations per packet
// that goes through the device in (Write: an ICMP echo request injected into the stack) and out
// (Read: the stack's echo reply copied into the caller's buffer), the stack's own handling of
// the echo included. It counts allocations, not time, so a change that makes the per-packet
// path between wireguard-go and gVisor allocate more fails here.
func TestLinkEndpointAllocs(t *testing.T) {
	const (
		offset = 16 // headroom, as wireguard-go leaves for its message header
		batch  = 32 // packets per call, as wireguard-go hands them over in batches
		// Today, all in gVisor's handling of the echo: the reply's route and its entry in the
		// outbound queue. The device itself allocates nothing per packet.
		budget = 2
	)
	s := newStack(t, Config{Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.2")}})
	dev := s.Device()
	in := make([][]byte, batch)
	for i := range in {
		in[i] = echoRequest(offset, "198.18.0.1", "198.18.0.2", uint16(i), make([]byte, 56))
	}
	out := make([][]byte, batch)
	for i := range out {
		out[i] = make([]byte, offset+2048)
	}
	sizes := make([]int, batch)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := dev.Write(in, offset); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < batch; {
			n, err := dev.Read(out[got:], sizes[got:], offset)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	for i := range batch {
		if p := header.IPv4(out[i][offset : offset+sizes[i]]); header.ICMPv4(p.Payload()).Type() != header.ICMPv4EchoReply {
			t.Fatalf("packet %d read back is not an echo reply: % x", i, out[i][offset:offset+min(sizes[i], 28)])
		}
	}
	per := allocs / batch
	t.Logf("%.2f allocations per packet in and out (%.0f per batch of %d)", per, allocs, batch)
	if per > budget {
		t.Errorf("%.2f allocations per packet, budget %d: the link endpoint's per-packet path allocates more than it did", per, budget)
	}
}

// echoRequest returns an IPv4 ICMP echo request from src to dst behind offset bytes of headroom.
func echoRequest(offset int, src, dst string, seq uint16, data []byte) []byte {
	b := make([]byte, offset+header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(data))
	ip := header.IPv4(b[offset:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b) - offset),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     tcpip.AddrFromSlice(netip.MustParseAddr(src).AsSlice()),
		DstAddr:     tcpip.AddrFromSlice(netip.MustParseAddr(dst).AsSlice()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := header.ICMPv4(ip.Payload())
	icmp.SetType(header.ICMPv4Echo)
	icmp.SetIdent(1)
	icmp.SetSequence(seq)
	copy(icmp.Payload(), data)
	icmp.SetChecksum(0)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return b
}
