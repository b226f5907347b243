package netstack

import (
	"context"
	"net/netip"
	"strconv"
)

const defaultTUNName = "ferry0"

// configureTUN gives the interface its address with the subnet's prefix length (the kernel then
// installs the route for the subnet, "proto kernel scope link") and brings it up, with iproute2.
func configureTUN(ctx context.Context, cfg TUNConfig) error {
	p := netip.PrefixFrom(cfg.Addr, cfg.Subnet.Bits())
	if err := run(ctx, "ip", "addr", "add", p.String(), "dev", cfg.Name); err != nil {
		return err
	}
	return run(ctx, "ip", "link", "set", "dev", cfg.Name, "mtu", strconv.Itoa(cfg.MTU), "up")
}
