//go:build unix

// Package fdlimit raises the process's open-file limit (RLIMIT_NOFILE) to its hard limit, so a
// node or client carrying hundreds of sessions (each one or two sockets) does not run out of file
// descriptors at the common soft limit of 1024. The Go runtime already does this at start on
// Linux and macOS since Go 1.19; Raise makes it explicit and reports the limit for the logs.
package fdlimit

import (
	"fmt"
	"syscall"
)

// Raise sets the soft RLIMIT_NOFILE to the hard limit (on macOS at most OPEN_MAX, 10240, which
// setrlimit enforces there) and returns the soft limit in effect afterwards.
func Raise() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("read the open-file limit: %w", err)
	}
	if l.Cur >= l.Max {
		return uint64(l.Cur), nil
	}
	want := l
	want.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		want.Cur = 10240 // macOS: OPEN_MAX
		if want.Cur <= l.Cur || syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) != nil {
			return uint64(l.Cur), fmt.Errorf("raise the open-file limit from %d to %d: %w", l.Cur, l.Max, err)
		}
	}
	return uint64(want.Cur), nil
}
