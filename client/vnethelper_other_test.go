//go:build unix && !linux

package client

import "os"

// serveFakeHelper: the helper is Linux-only, so is its impostor.
func serveFakeHelper(string) { os.Exit(2) }
