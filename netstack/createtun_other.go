//go:build !linux

package netstack

import "golang.zx2c4.com/wireguard/tun"

// createTUN creates the OS's TUN device (macOS: the next utun, Windows: a Wintun adapter).
func createTUN(name string, mtu int) (tun.Device, error) { return tun.CreateTUN(name, mtu) }
