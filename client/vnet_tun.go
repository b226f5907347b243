package client

import (
	"context"
	"os"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/ferryhq/ferry/netstack"
)

// openTUN creates the TUN device with its address and route: in this process when it runs as root
// (CI, servers), else through the privileged helper (`ferry vnet-helper`), which hands the device
// over the helper's unix socket.
func openTUN(ctx context.Context, dirs Dirs, cfg netstack.TUNConfig) (tun.Device, error) {
	if os.Geteuid() == 0 {
		return netstack.OpenTUN(ctx, cfg)
	}
	return openTUNViaHelper(ctx, cfg)
}
