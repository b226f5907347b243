package pgserver

import "syscall"

// SysProcAttr: Windows has no setuid; PostgreSQL there refuses to run as an administrator, so run
// as an ordinary user.
func SysProcAttr(*Account) *syscall.SysProcAttr { return nil }
