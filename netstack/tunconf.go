package netstack

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// OpenTUN creates an OS TUN device (cfg.Name, or the platform's default name when empty), gives
// it cfg.Addr and a route for cfg.Subnet, and brings it up. It needs root or CAP_NET_ADMIN
// (Linux), root (macOS) or Administrator (Windows). The interface, its address and its route
// disappear when the returned device is closed or the process exits.
func OpenTUN(ctx context.Context, cfg TUNConfig) (tun.Device, error) {
	if !cfg.Addr.Is4() || !cfg.Subnet.Addr().Is4() || !cfg.Subnet.Contains(cfg.Addr) {
		return nil, fmt.Errorf("netstack: open TUN: address %s must be an IPv4 address of the subnet %s", cfg.Addr, cfg.Subnet)
	}
	if cfg.MTU == 0 {
		cfg.MTU = TUNMTU
	}
	if cfg.Name == "" {
		cfg.Name = defaultTUNName
	}
	dev, err := createTUN(cfg.Name, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("netstack: create TUN %q (needs root or CAP_NET_ADMIN): %w", cfg.Name, err)
	}
	if name, err := dev.Name(); err == nil {
		cfg.Name = name
	}
	if err := configureTUN(ctx, cfg); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// run runs an OS network configuration command, with its output in the error.
func run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netstack: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
