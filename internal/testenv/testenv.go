// Package testenv is the tests' one way to start the demo installation (demo.Start: PostgreSQL, the
// Azure emulator, a node and an enrolled client daemon) for one test and stop it at cleanup, with a
// goroutine-leak check that runs after the stop: whatever the test or the installation left running
// fails the test with its stack.
package testenv

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/ferryhq/ferry/demo"
)

// StartTimeout bounds demo.Start.
const StartTimeout = 2 * time.Minute

// Start starts the demo installation with opt for test t (opt.Dir defaults to a fresh t.TempDir())
// and stops it at cleanup, failing t when the stop fails or leaves goroutines behind (CheckLeaks).
// A test that runs alongside others (t.Parallel) uses StartParallel: the goroutines of the other
// tests' installations would count as its leaks.
func Start(t testing.TB, opt demo.Options) *demo.Env {
	t.Helper()
	CheckLeaks(t) // registered first, so it runs last: after the installation's Close
	return StartParallel(t, opt)
}

// StartParallel is Start without the goroutine-leak check, for tests that run alongside others.
func StartParallel(t testing.TB, opt demo.Options) *demo.Env {
	t.Helper()
	if opt.Dir == "" {
		opt.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	env, err := demo.Start(ctx, opt)
	if err != nil {
		t.Fatalf("start demo: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Errorf("stop demo: %v", err)
		}
	})
	return env
}

// NeedBins skips t unless every one of bins is on PATH.
func NeedBins(t testing.TB, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s is not installed (apt-get install postgresql-client-15)", b)
		}
	}
}
