//go:build unix

package fdlimit

import (
	"syscall"
	"testing"
)

func TestRaise(t *testing.T) {
	n, err := Raise()
	if err != nil {
		t.Fatal(err)
	}
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	if uint64(l.Cur) != n || n == 0 {
		t.Fatalf("Raise reported %d, the soft limit is %d (hard %d)", n, l.Cur, l.Max)
	}
}
