//go:build !linux

package client

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/ferryhq/ferry/netstack"
)

// HelperConfig configures the privileged helper (Linux only so far).
type HelperConfig struct {
	Socket   string
	OwnerUID int
	StateDir string
	Subnet   netip.Prefix
	Domain   string

	AllowResolvConf bool
	Logger          *slog.Logger
}

// DefaultVNetHelperState is the helper's state directory unless told otherwise.
const DefaultVNetHelperState = "/var/lib/ferry-vnet-helper"

// ServeVNetHelper is not available on this OS yet: run the client as root/Administrator.
func ServeVNetHelper(ctx context.Context, cfg HelperConfig) error {
	return errors.New("vnet-helper: not available on this OS yet; run ferry as root (macOS) or Administrator (Windows) for virtual networking")
}

func openTUNViaHelper(ctx context.Context, sock string, cfg netstack.TUNConfig) (tun.Device, dnsConfigurer, error) {
	return nil, nil, errors.New("virtual networking needs root (macOS) or Administrator (Windows) on this OS: the helper is Linux-only so far")
}

// checkSubnetFree is Linux's overlap check; elsewhere the OS's own route handling applies.
func checkSubnetFree(ctx context.Context, subnet netip.Prefix) error { return nil }
