// Command ferry is the Ferry desktop app and CLI. Without arguments it opens the desktop app; see
// `ferry --help` for the commands.
package main

import (
	"github.com/ferryhq/ferry/internal/quietinit"

	"os"

	"github.com/ferryhq/ferry/app"
	"github.com/ferryhq/ferry/cli"
)

func main() {
	quietinit.Restore()
	os.Exit(cli.Main(app.Run))
}
