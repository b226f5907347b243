package cli

import (
	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/client"
)

// addModeFlag adds --mode to the daemon command.
func addModeFlag(c *cobra.Command, mode *string) {
	c.Flags().StringVar(mode, "mode", "", "connectivity mode for this client: "+client.ModeLoopback+" or "+client.ModeVirtualNetworking+
		" (default: the org's setting; "+client.EnvMode+" also sets it). Virtual networking needs root or the privileged helper (ferry vnet-helper)")
}
