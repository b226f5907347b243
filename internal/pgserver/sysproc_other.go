//go:build !linux && !windows

package pgserver

import "syscall"

// SysProcAttr runs a PostgreSQL process as acct (when not nil), in its own process group.
func SysProcAttr(acct *Account) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if acct != nil {
		a.Credential = &syscall.Credential{Uid: acct.UID, Gid: acct.GID, Groups: []uint32{}}
	}
	return a
}
