package resource

import (
	"errors"
	"fmt"
	"net/netip"
)

// DefaultVNSubnet is the default virtual networking subnet (the CGNAT range, RFC 6598).
var DefaultVNSubnet = netip.MustParsePrefix("100.64.0.0/10")

// DefaultLoopbackIP is the loopback address resources listen on unless told otherwise.
const DefaultLoopbackIP = "127.0.0.1"

// FirstLoopbackPort is where the search for a free loopback port starts (the first resource
// gets 127.0.0.1:10001).
const FirstLoopbackPort = 10001

// Taken is the set of addresses already held by other resources: each "ip:port", and each IP.
type Taken struct {
	AddrPorts map[netip.AddrPort]bool
	IPs       map[netip.Addr]bool
}

// NewTaken returns an empty Taken.
func NewTaken() Taken {
	return Taken{AddrPorts: map[netip.AddrPort]bool{}, IPs: map[netip.Addr]bool{}}
}

// Add records an assigned address ("ip:port"); malformed input is ignored.
func (t Taken) Add(addr string) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return
	}
	t.AddrPorts[ap] = true
	t.IPs[ap.Addr()] = true
}

// TUNAddress is the client's TUN address in virtual networking mode: the subnet's first host (subnet+1).
func TUNAddress(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// ResolverAddress is the DNS resolver's address in virtual networking mode (subnet+2).
func ResolverAddress(subnet netip.Prefix) netip.Addr { return TUNAddress(subnet).Next() }

// UsableVNAddr reports whether ip may be a resource's virtual networking IP in subnet: inside it, and
// not the network address, the TUN address (subnet+1), the resolver address (subnet+2) or the
// broadcast address.
func UsableVNAddr(subnet netip.Prefix, ip netip.Addr) bool {
	subnet = subnet.Masked()
	return subnet.Contains(ip) && ip != subnet.Addr() && ip != TUNAddress(subnet) && ip != ResolverAddress(subnet) && ip != lastAddr(subnet)
}

// ErrAddressTaken is wrapped by AssignVN's and AssignLoopback's refusal of an address the resource
// asks for (its IP address or port override) that another resource holds: a conflict with that
// resource, not a bad request.
var ErrAddressTaken = errors.New("is already used by another resource")

// AssignVN returns the resource's virtual networking address "ip:port". The IP is the resource's IP
// Address property when set (it must lie in subnet and not be a reserved address), else the first
// address of the subnet that no other resource holds, skipping the network address, the TUN
// address (subnet+1), the resolver address (subnet+2) and the broadcast address. The port is the
// port override when positive (virtual networking mode), else the resource's port.
func AssignVN(r *Resource, subnet netip.Prefix, taken Taken) (string, error) {
	subnet = subnet.Masked()
	port := r.Port
	if r.Mode("") == ModeVirtualNetworking && r.PortOverride > 0 {
		port = r.PortOverride
	}
	reserved := func(a netip.Addr) bool { return !UsableVNAddr(subnet, a) }
	if r.IPAddress != "" && r.Mode("") == ModeVirtualNetworking {
		ip, err := netip.ParseAddr(r.IPAddress)
		if err != nil {
			return "", fmt.Errorf("assign virtual networking address: %q is not an IP address", r.IPAddress)
		}
		if !subnet.Contains(ip) || reserved(ip) {
			return "", fmt.Errorf("assign virtual networking address: %s is not a usable address of the subnet %s", ip, subnet)
		}
		ap := netip.AddrPortFrom(ip, uint16(port))
		if taken.AddrPorts[ap] {
			return "", fmt.Errorf("assign virtual networking address: %s %w", ap, ErrAddressTaken)
		}
		return ap.String(), nil
	}
	for ip := subnet.Addr(); subnet.Contains(ip); ip = ip.Next() {
		if reserved(ip) || taken.IPs[ip] {
			continue
		}
		return netip.AddrPortFrom(ip, uint16(port)).String(), nil
	}
	return "", fmt.Errorf("assign virtual networking address: the subnet %s has no free address left", subnet)
}

// LoopbackRule is the one rule for a loopback IP that a resource names itself: --bind-interface, and
// --ip-address in loopback mode. The org's loopback range is only where the node picks addresses
// for resources that name none, so a named address may lie outside it (and stays put when the range
// changes; see catalog.UpdateSettings).
const LoopbackRule = "any loopback IP (" + LoopbackIPs + "), in the org's loopback range or not"

// LoopbackIPs are the addresses LoopbackRule accepts.
const LoopbackIPs = "127.0.0.1 to 127.255.255.254, or ::1"

// CheckLoopbackIP applies LoopbackRule to s. An IPv4-mapped IPv6 form (::ffff:127.0.0.1) is
// refused: netip counts it as loopback and as another address than 127.0.0.1, so the uniqueness of
// addresses (Taken) would not see that it is the IPv4 socket another resource already holds.
func CheckLoopbackIP(s string) error {
	_, err := parseLoopbackIP(s)
	return err
}

// parseLoopbackIP returns s as an address when it follows LoopbackRule.
func parseLoopbackIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err == nil && a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("%q is an IPv4-mapped IPv6 address; write it as %s (%s)", s, a.Unmap(), LoopbackIPs)
	}
	if err != nil || !a.IsLoopback() || a.Zone() != "" || a == netip.AddrFrom4([4]byte{127, 0, 0, 0}) || a == netip.AddrFrom4([4]byte{127, 255, 255, 255}) {
		return netip.Addr{}, fmt.Errorf("%q is not a loopback IP (%s)", s, LoopbackIPs)
	}
	return a, nil
}

// DefaultLoopbackRange is the org loopback range unless changed: every resource on 127.0.0.1.
var DefaultLoopbackRange = netip.MustParsePrefix("127.0.0.1/32")

// AssignLoopback returns the resource's loopback address "ip:port" within the org's loopback range
// (a range of 127.0.0.0/8).
//
// The IP is the IP Address property (loopback mode) or the bind interface when set; either must
// follow LoopbackRule (any loopback IP, inside the range or not). Otherwise, with a single-address range (the default 127.0.0.1/32) every resource shares
// that IP and gets its own port: the port override when positive, else the first port from 10001 up
// (wrapping within 1024-64999) that no other resource holds on it. With a wider "multi-loopback" range
// each resource gets the first IP of the range that no other resource holds, and the port override
// or its own port.
func AssignLoopback(r *Resource, loopRange netip.Prefix, taken Taken) (string, error) {
	loopRange = loopRange.Masked()
	if !loopRange.IsValid() {
		loopRange = DefaultLoopbackRange
	}
	var ip netip.Addr
	switch {
	case r.IPAddress != "" && r.Mode("") == ModeLoopback:
		a, err := parseLoopbackIP(r.IPAddress)
		if err != nil {
			return "", fmt.Errorf("assign loopback address: ip-address: %w", err)
		}
		ip = a
	case r.BindInterface != "":
		a, err := parseLoopbackIP(r.BindInterface)
		if err != nil {
			return "", fmt.Errorf("assign loopback address: bind-interface: %w", err)
		}
		ip = a
	case loopRange.Bits() < loopRange.Addr().BitLen():
		for a := loopRange.Addr(); loopRange.Contains(a); a = a.Next() {
			if a == loopRange.Addr() && loopRange.Bits() < 31 {
				continue // the range's network address (127.0.0.0)
			}
			if !taken.IPs[a] {
				ip = a
				break
			}
		}
		if !ip.IsValid() {
			return "", fmt.Errorf("assign loopback address: every IP of the loopback range %s is taken", loopRange)
		}
		port := r.Port
		if r.Mode("") == ModeLoopback && r.PortOverride > 0 {
			port = r.PortOverride
		}
		return netip.AddrPortFrom(ip, uint16(port)).String(), nil
	default:
		ip = loopRange.Addr()
	}
	if !ip.IsLoopback() {
		return "", fmt.Errorf("assign loopback address: %s is not a loopback IP address", ip)
	}
	if r.Mode("") == ModeLoopback && r.PortOverride > 0 {
		ap := netip.AddrPortFrom(ip, uint16(r.PortOverride))
		if taken.AddrPorts[ap] {
			return "", fmt.Errorf("assign loopback address: port override %d on %s %w", r.PortOverride, ip, ErrAddressTaken)
		}
		return ap.String(), nil
	}
	span := LoopbackPortMax - LoopbackPortMin + 1
	for i := 0; i < span; i++ {
		p := LoopbackPortMin + (FirstLoopbackPort-LoopbackPortMin+i)%span
		ap := netip.AddrPortFrom(ip, uint16(p))
		if !taken.AddrPorts[ap] {
			return ap.String(), nil
		}
	}
	return "", fmt.Errorf("assign loopback address: no free port left on %s", ip)
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	b := a.AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}
