//go:build !unix

package client

import "io/fs"

// fileOwner reports no owner: this OS has no uids (its temp and runtime directories are per user).
func fileOwner(fs.FileInfo) (uid int, ok bool) { return 0, false }

func myUID() int { return -1 }
