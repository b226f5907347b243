package catalog

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/ferryhq/ferry/resource"
)

// Settings are the org's network settings. Empty fields mean "unchanged" in UpdateSettings.
type Settings struct {
	ConnectivityMode string
	VNSubnet         string
	DNSDomain        string
	LoopbackRange    string
}

var allowedVNRanges = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("100.64.0.0/10"),
}

// ValidateSettings checks each set field: the connectivity mode is loopback or virtual-networking;
// the VN subnet is an IPv4 subnet of RFC 1918 or the CGNAT range (RFC 6598) with room for resources
// (at most /29); the DNS domain is a DNS name; the loopback range lies in 127.0.0.0/8.
func ValidateSettings(s Settings) error {
	switch s.ConnectivityMode {
	case "", resource.ModeLoopback, resource.ModeVirtualNetworking:
	default:
		return fmt.Errorf("connectivity-mode: %q is not %s or %s", s.ConnectivityMode, resource.ModeLoopback, resource.ModeVirtualNetworking)
	}
	if s.VNSubnet != "" {
		p, err := netip.ParsePrefix(s.VNSubnet)
		inside := false
		for _, r := range allowedVNRanges {
			inside = inside || (err == nil && r.Contains(p.Addr()) && p.Bits() >= r.Bits())
		}
		if err != nil || !p.Addr().Is4() || !inside || p.Bits() > 29 {
			return fmt.Errorf("vn-subnet: %q must be an IPv4 subnet of 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10, at most /29", s.VNSubnet)
		}
	}
	if s.DNSDomain != "" && !resource.ValidHostname(s.DNSDomain) {
		return fmt.Errorf("dns-domain: %q is not a DNS name", s.DNSDomain)
	}
	// A client running as root points the system's lookups for the whole domain at its resolver,
	// which answers the aliases: a top-level domain ("com") would let the catalog answer for every
	// name under it on those machines.
	if _, err := netip.ParseAddr(s.DNSDomain); s.DNSDomain != "" && (err == nil || !strings.Contains(strings.Trim(s.DNSDomain, "."), ".")) {
		return fmt.Errorf("dns-domain: %q must be a name of two labels or more, such as ferry.internal, not a top-level domain or an address", s.DNSDomain)
	}
	if s.LoopbackRange != "" {
		p, err := netip.ParsePrefix(s.LoopbackRange)
		if err != nil || !netip.MustParsePrefix("127.0.0.0/8").Contains(p.Addr()) || p.Bits() < 8 {
			return fmt.Errorf("loopback-range: %q must be a range within 127.0.0.0/8 (127.0.0.1/32 or, for one IP per resource, e.g. 127.0.0.0/8)", s.LoopbackRange)
		}
	}
	return nil
}

// UpdateSettings validates and stores the set fields of s. When the VN subnet or the loopback range
// changes, resources whose addresses no longer fit get new ones; the returned lines say which
// ("name: old -> new").
func (c *Catalog) UpdateSettings(ctx context.Context, s Settings) ([]string, error) {
	if err := ValidateSettings(s); err != nil {
		return nil, err
	}
	if s.VNSubnet != "" {
		s.VNSubnet = netip.MustParsePrefix(s.VNSubnet).Masked().String()
	}
	for key, v := range map[string]string{SettingDefaultMode: s.ConnectivityMode, SettingVNSubnet: s.VNSubnet, SettingDNSDomain: strings.ToLower(strings.TrimSuffix(s.DNSDomain, ".")), SettingLoopbackRange: s.LoopbackRange} {
		if v == "" {
			continue
		}
		if err := c.SetSetting(ctx, key, v); err != nil {
			return nil, err
		}
	}
	org, err := c.addressing(ctx)
	if err != nil {
		return nil, err
	}
	rs, err := c.Resources(ctx)
	if err != nil {
		return nil, err
	}
	var moved []string
	for _, r := range rs {
		vn, _ := netip.ParseAddrPort(r.VNAddress)
		lb, _ := netip.ParseAddrPort(r.LoopbackAddress)
		vnFits := org.subnet.Contains(vn.Addr())
		lbFits := r.BindInterface != "" || (r.IPAddress != "" && r.Mode("") == resource.ModeLoopback) || org.loopback.Contains(lb.Addr())
		if vnFits && lbFits {
			continue
		}
		_, after, err := c.update(ctx, r.Name, func(x *resource.Resource) {
			if !vnFits && x.Mode("") == resource.ModeVirtualNetworking && x.IPAddress != "" && !org.subnet.Contains(netip.MustParseAddr(x.IPAddress)) {
				x.IPAddress = "" // the requested IP lies outside the new subnet
			}
			x.PortOverride = nonAutoPort(x.PortOverride)
		}, !vnFits, !lbFits)
		if err != nil {
			return moved, fmt.Errorf("re-assign %s: %w", r.Name, err)
		}
		if !vnFits {
			moved = append(moved, fmt.Sprintf("%s: virtual networking address %s -> %s", r.Name, r.VNAddress, after.VNAddress))
		}
		if !lbFits {
			moved = append(moved, fmt.Sprintf("%s: loopback address %s -> %s", r.Name, r.LoopbackAddress, after.LoopbackAddress))
		}
	}
	return moved, nil
}

func nonAutoPort(p int) int {
	if p == resource.PortOverrideAuto {
		return 0
	}
	return p
}
