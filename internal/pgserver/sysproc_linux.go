package pgserver

import "syscall"

// SysProcAttr runs a PostgreSQL process as acct (when not nil), in its own process group, and has
// the kernel kill it if our process dies first (PR_SET_PDEATHSIG).
func SysProcAttr(acct *Account) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if acct != nil {
		a.Credential = &syscall.Credential{Uid: acct.UID, Gid: acct.GID, Groups: []uint32{}}
	}
	return a
}
