//go:build linux

package fleettest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ferryhq/ferry/demo/fleet"
	"github.com/ferryhq/ferry/internal/netlab"
)

// bins are the binaries TestMain built; skipReason says why the tests skip instead.
var (
	bins       fleet.Binaries
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if err := netlab.Check("psql"); err != nil {
		skipReason = err.Error()
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "ferry-fleettest-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleettest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	bins, err = fleet.Build(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleettest:", err)
		return 1
	}
	return m.Run()
}

// needLab skips t when the lab cannot be made here.
func needLab(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip("multi-host test: " + skipReason)
	}
}
