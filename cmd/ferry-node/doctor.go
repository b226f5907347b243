package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/node"
)

// errUnhealthy makes doctor exit with status 1 after it has printed why.
var errUnhealthy = errors.New("doctor: some checks failed (see above)")

func doctorCmd() *cobra.Command {
	var state, config string
	var timeout time.Duration
	var verbose bool
	c := &cobra.Command{
		Use:   "doctor [NAME] --state DIR",
		Short: "Check, step by step, that the node can reach and log in to a resource's server",
		Long: `Run the health check of resource NAME on this host, step by step: resolve the hostname, open TCP,
negotiate TLS (certificate verified), get an access token for the resource's managed identity from
IMDS, log in, run SELECT 1. Each step is printed with ✓ or ✗ and its timing; a failed step with the
error and the fix. Without NAME, first check the node itself (catalog writable, WireGuard port, IMDS
reachable, clock against the token's iat), then every resource. Exit status 0 only when every step
passes. Works whether or not ` + "`ferry-node run`" + ` is running.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if state == "" {
				return fmt.Errorf("--state is required: the directory given to `ferry-node init`")
			}
			cfg, err := node.LoadConfig(configPath(state, config))
			if err != nil {
				return err
			}
			opt := node.DoctorOptions{StepTimeout: timeout}
			if verbose {
				opt.Log = cmd.ErrOrStderr()
			}
			if len(args) == 1 {
				opt.Resource = args[0]
			}
			ok, err := node.Doctor(cmd.Context(), cmd.OutOrStdout(), state, cfg, opt)
			if err != nil {
				return err
			}
			if !ok {
				return errUnhealthy
			}
			return nil
		},
	}
	c.Flags().StringVar(&state, "state", "", "the node's state directory (required)")
	c.Flags().StringVar(&config, "config", "", "config file (default: STATE/config.json)")
	c.Flags().DurationVar(&timeout, "timeout", 0, "timeout of each step (default: the config's health_step_timeout, 10s)")
	c.Flags().BoolVar(&verbose, "verbose", false, "also log each token error in full to stderr (the steps show it in one line)")
	return c
}
