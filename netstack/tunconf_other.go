//go:build !linux && !darwin && !windows

package netstack

import (
	"context"
	"errors"
)

const defaultTUNName = "tun"

func configureTUN(ctx context.Context, cfg TUNConfig) error {
	return errors.New("netstack: configuring a TUN device is not supported on this OS")
}
