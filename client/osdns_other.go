//go:build !linux && !darwin && !windows

package client

import (
	"context"
	"errors"
	"log/slog"
)

const resolvConfPath = "/etc/resolv.conf"

func configureDNS(ctx context.Context, dirs Dirs, spec dnsSpec, log *slog.Logger) (func() error, error) {
	return nil, errors.New("DNS: configuring the system's resolver is not supported on this OS")
}

func recoverDNS(dirs Dirs, log *slog.Logger) error { return nil }
