package netlab

import (
	"context"
	"net"
)

// Listen listens on network and address inside the host (e.g. "tcp", h.HostPort(0)).
func (h *Host) Listen(network, address string) (ln net.Listener, err error) {
	err = h.Do(func() error {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// DialContext connects from inside the host to address.
func (h *Host) DialContext(ctx context.Context, network, address string) (c net.Conn, err error) {
	err = h.Do(func() error {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
