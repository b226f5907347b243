//go:build unix

package node

import (
	"io/fs"
	"syscall"
)

// fileOwner returns the uid that owns the file fi describes; ok is false where the OS has no uids.
func fileOwner(fi fs.FileInfo) (uid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}
