//go:build !cgo

package app

import (
	"context"
	"errors"

	"github.com/ferryhq/ferry/client"
)

// Run reports that this ferry binary has no desktop app: the GUI toolkit needs cgo (and, for other
// systems, that system's C toolchain). The CLI is complete without it.
func Run(ctx context.Context, dirs client.Dirs) error {
	return errors.New("this ferry binary was built without cgo, so it has no desktop app; use the commands (ferry --help), or build with CGO_ENABLED=1 on the target system")
}
