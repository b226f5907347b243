package pgtest

import (
	"errors"
	"syscall"
)

var errUnsupported = errors.New("unsupported platform")

func supported() error { return nil }

const interrupt = syscall.SIGINT

// sysProcAttr runs a PostgreSQL process as acct (when not nil), in its own process group, and has the
// kernel kill it if the test process dies first.
func sysProcAttr(acct *account) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if acct != nil {
		a.Credential = &syscall.Credential{Uid: acct.uid, Gid: acct.gid, Groups: []uint32{}}
	}
	return a
}
