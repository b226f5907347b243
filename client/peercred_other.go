//go:build !linux

package client

import "net"

// socketPeerUID cannot tell the peer's uid here; the socket file's owner (checkSocket) is what is checked.
func socketPeerUID(net.Conn) (uid int, ok bool) { return 0, false }
