//go:build !linux && !windows

package azureemu

import "syscall"

// sysProcAttr runs a PostgreSQL process as acct (when not nil).
func sysProcAttr(acct *runAs) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if acct != nil {
		a.Credential = &syscall.Credential{Uid: acct.uid, Gid: acct.gid, Groups: []uint32{}}
	}
	return a
}
