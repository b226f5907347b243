package azureemu

import "syscall"

// sysProcAttr runs a PostgreSQL process as acct (when not nil) and has the
// kernel kill it if the emulator's process dies first (PR_SET_PDEATHSIG).
func sysProcAttr(acct *runAs) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if acct != nil {
		a.Credential = &syscall.Credential{Uid: acct.uid, Gid: acct.gid, Groups: []uint32{}}
	}
	return a
}
