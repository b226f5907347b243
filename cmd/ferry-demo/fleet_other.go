//go:build !linux

package main

import (
	"context"
	"fmt"
	"os"
)

// runFleet: the fleet's ferry-node processes (demo/fleet) need Linux; elsewhere the nodes run in
// the demo's process as before.
func runFleet(ctx context.Context, o fleetOptions) int {
	fmt.Fprintln(os.Stderr, "ferry-demo: not Linux: the nodes run inside the demo's process on loopback ports")
	return runInProcess(ctx, o)
}
