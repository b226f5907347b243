package netstack

import (
	"context"
	"net"
)

const defaultTUNName = "Ferry"

// configureTUN sets the Wintun adapter's address (with the subnet's mask, which also routes the
// subnet to it) with netsh. Not exercised by the tests (they run on Linux).
func configureTUN(ctx context.Context, cfg TUNConfig) error {
	mask := net.IP(net.CIDRMask(cfg.Subnet.Bits(), 32)).String()
	return run(ctx, "netsh", "interface", "ipv4", "set", "address", "name="+cfg.Name, "source=static", "address="+cfg.Addr.String(), "mask="+mask)
}
