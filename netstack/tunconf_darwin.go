package netstack

import (
	"context"
	"strconv"
)

// defaultTUNName asks macOS for the next free utun device.
const defaultTUNName = "utun"

// configureTUN sets the utun's point-to-point address and MTU with ifconfig(8) and routes the
// subnet to it with route(8). Not exercised by the tests (they run on Linux).
func configureTUN(ctx context.Context, cfg TUNConfig) error {
	a := cfg.Addr.String()
	if err := run(ctx, "ifconfig", cfg.Name, "inet", a, a, "mtu", strconv.Itoa(cfg.MTU), "up"); err != nil {
		return err
	}
	return run(ctx, "route", "-q", "-n", "add", "-inet", cfg.Subnet.Masked().String(), "-interface", cfg.Name)
}
