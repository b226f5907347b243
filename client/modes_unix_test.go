//go:build unix

package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFallbackAddressTaken: when another program (another local user's, say) already listens on
// the loopback address where a resource is to be served, also with SO_REUSEPORT, connect fails
// with what to do and the resource is not marked connected: the client never shares the port, so
// the user's program could only meet the other listener if it ignored the error.
func TestFallbackAddressTaken(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		t.Run(fmt.Sprintf("fallback %v", fallback), func(t *testing.T) {
			lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
				})
				return errors.Join(err, serr)
			}}
			squat, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer squat.Close()
			d := followDaemon(t, false)
			r := vnRes("a", 3, "a")
			r.LoopbackAddress = squat.Addr().String()
			d.mu.Lock()
			_, err = d.listen(r, fallback)
			row := d.row(r)
			d.mu.Unlock()
			if err == nil || !strings.Contains(err.Error(), "another program") {
				t.Errorf("listen on a taken address: %v, want a refusal saying another program uses it", err)
			}
			if row.Connected {
				t.Errorf("marked connected at %s, which another program holds", row.Address)
			}
		})
	}
}
