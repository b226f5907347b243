package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/ferryhq/ferry/netstack"
)

// EnvVNetHelper moves the privileged helper's socket (default DefaultVNetHelperSocket).
const EnvVNetHelper = "FERRY_VNET_HELPER"

// DefaultVNetHelperSocket is where `ferry vnet-helper` listens unless told otherwise.
const DefaultVNetHelperSocket = "/run/ferry/vnet-helper.sock"

// errNoHelper: this client is not root and no privileged helper answers on its socket.
var errNoHelper = errors.New("virtual networking needs root or the privileged helper, which is not running")

// helperRequest is one request to the privileged helper (a JSON line on its unix socket).
type helperRequest struct {
	Op string `json:"op"` // "tun" or "dns"
	// tun
	Name   string `json:"name,omitempty"`
	Subnet string `json:"subnet,omitempty"`
	MTU    int    `json:"mtu,omitempty"`
	// dns
	Interface string `json:"interface,omitempty"`
	Server    string `json:"server,omitempty"`
	Domain    string `json:"domain,omitempty"`
}

// helperReply answers a request; a "tun" reply carries the device's file descriptor (SCM_RIGHTS).
type helperReply struct {
	Name  string `json:"name,omitempty"`
	Error string `json:"error,omitempty"`
}

// dnsConfigurer tells the OS to send the org domain to Ferry's resolver; undo reverts it.
type dnsConfigurer func(ctx context.Context, spec dnsSpec, log *slog.Logger) (undo func() error, err error)

// openTUN creates the TUN device with its address and route: in this process when it runs as root
// (CI, servers), else through the privileged helper (`ferry vnet-helper`), which hands the device
// over its unix socket and also configures the OS's DNS for as long as this client keeps the
// socket open. The returned configurer does the DNS part the same way.
func openTUN(ctx context.Context, dirs Dirs, cfg netstack.TUNConfig) (tun.Device, dnsConfigurer, error) {
	if os.Geteuid() == 0 || runtime.GOOS == "windows" { // Windows: the client must run as Administrator
		if err := checkSubnetFree(ctx, cfg.Subnet); err != nil {
			return nil, nil, err
		}
		dev, err := netstack.OpenTUN(ctx, cfg)
		if err != nil {
			return nil, nil, err
		}
		if err := recoverDNS(dirs, slog.Default()); err != nil {
			slog.Warn("could not undo the DNS configuration of an earlier run", "err", err)
		}
		return dev, func(ctx context.Context, spec dnsSpec, log *slog.Logger) (func() error, error) {
			return configureDNS(ctx, dirs, spec, log)
		}, nil
	}
	sock := os.Getenv(EnvVNetHelper)
	if sock == "" {
		sock = DefaultVNetHelperSocket
	}
	return openTUNViaHelper(ctx, sock, cfg)
}

// allowedSubnet reports whether the helper may route p to a user's TUN: only private (RFC 1918) and
// shared (CGNAT, RFC 6598) IPv4 space, so the helper can never be used to capture other traffic.
func allowedSubnet(p netip.Prefix) error {
	p = p.Masked()
	for _, ok := range []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("100.64.0.0/10"),
	} {
		if p.Addr().Is4() && p.Bits() >= ok.Bits() && ok.Contains(p.Addr()) && p.Bits() <= 30 {
			return nil
		}
	}
	return fmt.Errorf("subnet %s is not private (RFC 1918) or shared (RFC 6598) IPv4 space of /30 or wider", p)
}
