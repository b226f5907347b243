//go:build unix

package client

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// lockSocket takes the control socket's lock file (sock + ".lock") for the daemon's life, so that
// two daemons starting at once never both judge the socket stale: between bind and listen a fresh
// socket refuses connections like a dead one. errSocketLocked: another daemon holds it.
func lockSocket(sock string) (io.Closer, error) {
	f, err := os.OpenFile(sock+".lock", os.O_CREATE|os.O_RDWR|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("control socket lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errSocketLocked
		}
		return nil, fmt.Errorf("control socket lock: %w", err)
	}
	return f, nil // closing the file releases the lock
}
