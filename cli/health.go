package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/api"
)

// healthLabel is the HEALTH column: "healthy", "unhealthy (STEP)", "unhealthy (not checked yet)", or
// "-" when the node does not report health.
func healthLabel(h *api.Health) string {
	if h == nil {
		return "-"
	}
	return h.Label()
}

func datasourceHealthcheckCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "healthcheck NAME",
		Short: "Run a resource's health check now and show the result",
		Long: `Ask ferry-node to check resource NAME now: resolve the hostname, open TCP, negotiate TLS (certificate
verified), get an access token for the resource's managed identity, log in, run SELECT 1. Waits for the
result and prints every step; a failure names the step, the error and the fix. Exits 1 when unhealthy.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, ctl, err := dirsAndControl()
			if err != nil {
				return err
			}
			h, err := ctl.API().HealthCheck(cmd.Context(), args[0])
			if err != nil {
				return missing("resource", args[0], err)
			}
			if err := writeHealth(cmd.OutOrStdout(), h, asJSON); err != nil {
				return err
			}
			if h.State != api.HealthHealthy {
				return fmt.Errorf("%s is %s", args[0], h.Label())
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return c
}

func datasourceDiagnosticsCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "diagnostics NAME",
		Short: "Show the last health check of a resource, step by step",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, ctl, err := dirsAndControl()
			if err != nil {
				return err
			}
			h, err := ctl.API().Diagnostics(cmd.Context(), args[0])
			if err != nil {
				return missing("resource", args[0], err)
			}
			return writeHealth(cmd.OutOrStdout(), h, asJSON)
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return c
}

func writeHealth(w io.Writer, h api.Health, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(h)
	}
	fmt.Fprintf(w, "%s: %s", h.Resource, h.Label())
	if h.Checked {
		fmt.Fprintf(w, " (checked %s, %.0f ms)", stamp(h.Time), h.DurationMS)
	}
	fmt.Fprintln(w)
	if len(h.Steps) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "STEP\tOK\tTIME\tDETAIL")
		for _, s := range h.Steps {
			mark, detail := "✓", s.Detail
			if !s.OK {
				mark, detail = "✗", s.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%.1f ms\t%s\n", s.Name, mark, s.DurationMS, detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if h.State != api.HealthHealthy && h.Error != "" {
		fmt.Fprintf(w, "error: %s\n", h.Error)
	}
	if h.Hint != "" {
		fmt.Fprintf(w, "fix:   %s\n", h.Hint)
	}
	return nil
}
