package testenv

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// recordingTB is a testing.TB whose cleanups run when the test says and whose errors are kept.
type recordingTB struct {
	testing.TB
	cleanups []func()
	errs     []string
}

func (r *recordingTB) Helper()                   {}
func (r *recordingTB) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *recordingTB) Failed() bool              { return len(r.errs) > 0 }
func (r *recordingTB) Errorf(f string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(f, a...)) }

func (r *recordingTB) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func leakyGoroutineForTest(stop <-chan struct{}) { <-stop }

// TestCheckLeaks: a goroutine started during the test and still running at cleanup is reported with
// its stack; one that ends within the wait is not.
func TestCheckLeaks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		endAfter time.Duration // <0: not before the check
		leak     bool
	}{
		{"ended before cleanup", 0, false},
		{"ends during the wait", 50 * time.Millisecond, false},
		{"still running", -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recordingTB{TB: t}
			checkLeaks(r, 2*time.Second)
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() { defer close(done); leakyGoroutineForTest(stop) }()
			switch {
			case tc.endAfter == 0:
				close(stop)
				<-done
			case tc.endAfter > 0:
				time.AfterFunc(tc.endAfter, func() { close(stop) })
			}
			r.runCleanups()
			if tc.endAfter < 0 {
				close(stop)
				<-done
			}
			got := strings.Join(r.errs, "\n")
			if tc.leak != (len(r.errs) > 0) {
				t.Fatalf("leak reported = %v, want %v: %s", len(r.errs) > 0, tc.leak, got)
			}
			if tc.leak && !strings.Contains(got, "leakyGoroutineForTest") {
				t.Errorf("the report does not show the leaked goroutine's stack:\n%s", got)
			}
		})
	}
}
