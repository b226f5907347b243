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
result and prints every step; a failure names the step, the error and the fix. Exits 1 when unhealthy.

Health is kept per node: the node answering runs the check if it is a candidate for the resource
(its proxy cluster's worker, or a gateway, matching its egress filter); the other candidate nodes'
latest results (from their own schedules) are listed under "per node", and --json has them in
"nodes". When the answering node is not a candidate, the result shown is the fleet's latest.`,
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
			if h.Reason != "" {
				return fmt.Errorf("%s: %s", args[0], h.Reason)
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
		Long: `Show the last health check of resource NAME, step by step. Health is kept per node and resource:
each candidate node (its proxy cluster's workers, or the gateways, matching its egress filter) checks
it and stores its result in the catalog. The steps shown are those of the first healthy online
candidate (else the one checked last); "per node" lists each candidate's latest result, with
"stale" for a node that is offline, and --json has them in "nodes". A resource no online node can
reach shows why ("no node can reach it: …") instead of a result.`,
		Args: cobra.ExactArgs(1),
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
		fmt.Fprintf(w, " (checked %s, %.0f ms", stamp(h.Time), h.DurationMS)
		if h.NodeName != "" {
			fmt.Fprintf(w, ", by node %s", h.NodeName)
		}
		fmt.Fprint(w, ")")
	}
	fmt.Fprintln(w)
	if h.Reason != "" {
		fmt.Fprintln(w, h.Reason)
	}
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
	if h.State != api.HealthHealthy && h.Error != "" && h.Reason == "" {
		fmt.Fprintf(w, "error: %s\n", h.Error)
	}
	if h.Hint != "" {
		fmt.Fprintf(w, "fix:   %s\n", h.Hint)
	}
	return writeNodeHealth(w, h.Nodes)
}

// writeNodeHealth prints which node said what: the last result of each candidate node.
func writeNodeHealth(w io.Writer, nodes []api.Health) error {
	if len(nodes) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nper node (the latest result of each candidate node):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tHEALTH\tCHECKED\tTIME\tERROR")
	for _, n := range nodes {
		checked, took := "-", "-"
		if n.Checked {
			checked, took = stamp(n.Time), fmt.Sprintf("%.0f ms", n.DurationMS)
		}
		if n.Stale {
			checked += " (stale: node offline)"
		}
		errText := ""
		if n.Checked && n.State != api.HealthHealthy {
			errText = n.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.NodeName, n.Label(), checked, took, errText)
	}
	return tw.Flush()
}
