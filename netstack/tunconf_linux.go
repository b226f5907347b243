package netstack

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

const defaultTUNName = "ferry0"

// createTUN creates a new TUN device, as tun.CreateTUN does, but with IFF_TUN_EXCL: the kernel
// refuses (EBUSY) a name that is already a device, so a persistent TUN of another program (created
// with `ip tuntap add`) is never attached to, readdressed and handed over.
func createTUN(name string, mtu int) (tun.Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	// IFF_VNET_HDR as wireguard-go's CreateTUN sets it (offloads and its status listener need it).
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if err == unix.EBUSY {
			return nil, fmt.Errorf("a network interface named %q exists already: %w", name, err)
		}
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "/dev/net/tun"), mtu)
}

// configureTUN gives the interface its address with the subnet's prefix length (the kernel then
// installs the route for the subnet, "proto kernel scope link") and brings it up, with iproute2.
func configureTUN(ctx context.Context, cfg TUNConfig) error {
	p := netip.PrefixFrom(cfg.Addr, cfg.Subnet.Bits())
	if err := run(ctx, "ip", "addr", "add", p.String(), "dev", cfg.Name); err != nil {
		return err
	}
	return run(ctx, "ip", "link", "set", "dev", cfg.Name, "mtu", strconv.Itoa(cfg.MTU), "up")
}
