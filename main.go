// Command ferry is the Ferry desktop app and CLI. Without arguments it opens the desktop app; see
// `ferry --help` for the commands.
package main

import (
	"os"

	"github.com/ferryhq/ferry/app"
	"github.com/ferryhq/ferry/cli"
)

func main() {
	os.Exit(cli.Main(app.Run))
}
