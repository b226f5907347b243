package client

import (
	"context"
	"errors"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/ferryhq/ferry/netstack"
)

func openTUNViaHelper(ctx context.Context, cfg netstack.TUNConfig) (tun.Device, error) {
	return nil, errors.New("virtual networking mode needs root to create its TUN device")
}
