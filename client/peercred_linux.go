package client

import (
	"net"

	"golang.org/x/sys/unix"
)

// socketPeerUID returns the uid of the process at the other end of a unix socket connection (SO_PEERCRED:
// the credentials of whoever called connect or listen); ok is false when it cannot be told.
func socketPeerUID(c net.Conn) (uid int, ok bool) {
	uc, isUnix := c.(*net.UnixConn)
	if !isUnix {
		return 0, false
	}
	sc, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := sc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil {
		return 0, false
	}
	return int(cred.Uid), true
}
