package azureemu

import "syscall"

// sysProcAttr: Windows has no setuid; PostgreSQL there refuses to run as an
// administrator, so run the emulator as an ordinary user.
func sysProcAttr(*runAs) *syscall.SysProcAttr { return nil }
