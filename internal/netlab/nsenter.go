package netlab

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that has entered the host's network namespace, and returns its error.
// Sockets fn makes (listeners, connections) belong to the host and keep working from any
// goroutine afterwards; goroutines fn starts do not run in the namespace. The thread is never
// handed back: it ends with fn's goroutine, so no other code runs in the namespace by accident.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread exits with this goroutine
		f, err := unix.Open("/run/netns/"+h.NS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("netlab: enter %s: %w", h.NS, err)
			return
		}
		err = unix.Setns(f, unix.CLONE_NEWNET)
		_ = unix.Close(f)
		if err != nil {
			errc <- fmt.Errorf("netlab: enter %s: %w", h.NS, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

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
