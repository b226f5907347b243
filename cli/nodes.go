package cli

import (
	"cmp"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/api"
)

// nodesCmd is `ferry admin nodes`: the deployment's ferry-nodes, their health and tags.
func nodesCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "nodes",
		Aliases: []string{"node"},
		Short:   "List, show, re-tag and delete the deployment's nodes",
		Long: `Every ferry-node of the deployment registers itself in the catalog when it starts and writes a
heartbeat every 10 seconds. A node whose last heartbeat is older than 30 seconds, or that stopped,
shows as offline. A running node's record cannot be deleted: stop the node first.`,
	}
	c.AddCommand(nodeListCmd(), nodeShowCmd(), nodeUpdateCmd(), nodeDeleteCmd())
	return c
}

// missingNode gives a node the node did not find the wording of the other admin commands.
func missingNode(ref string, err error) error {
	if notFound(err) {
		return fmt.Errorf("node %q does not exist (`ferry admin nodes list` lists them)", ref)
	}
	return err
}

// heartbeatAge is the age of a node's last heartbeat as people read it ("4s ago").
func heartbeatAge(n api.Node) string {
	return (time.Duration(n.HeartbeatAgeSeconds) * time.Second).String() + " ago"
}

func printNodes(cmd *cobra.Command, ns []api.Node) error {
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATE\tHEARTBEAT\tKIND\tCLUSTER\tVERSION\tWIREGUARD ENDPOINT\tTAGS")
	for _, n := range ns {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cell(n.ID), cell(n.Name), cell(n.State), heartbeatAge(n), cell(n.Kind), cell(cmp.Or(n.ClusterID, "-")), cell(n.Version),
			cell(n.WireGuardEndpoint), cell(api.FormatNodeTags(n.Tags)))
	}
	return tw.Flush()
}

func printNode(cmd *cobra.Command, n api.Node) error {
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\nname\t%s\nkind\t%s\nproxy cluster\t%s\nstate\t%s\nlast heartbeat\t%s (%s)\nstarted\t%s\nversion\t%s\ntags\t%s\nwireguard endpoint\t%s\nwireguard public key\t%s\nenrollment URL\t%s\nenrollment certificate sha256\t%s\n",
		cell(n.ID), cell(n.Name), cell(n.Kind), cell(cmp.Or(n.ClusterID, "none (a gateway)")), cell(n.State), stamp(n.LastHeartbeat), heartbeatAge(n), stamp(n.StartedAt), cell(n.Version),
		cell(api.FormatNodeTags(n.Tags)), cell(n.WireGuardEndpoint), cell(n.WireGuardPublicKey), cell(n.EnrollURL), cell(n.EnrollCertSHA256))
	return tw.Flush()
}

func nodeListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the nodes with their state, heartbeat age, version and tags",
		Args:  cobra.NoArgs,
		RunE: withAPI(func(cmd *cobra.Command, _ []string, c *api.Client) error {
			ns, err := c.Nodes(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), ns)
			}
			return printNodes(cmd, ns)
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func nodeShowCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show ID|NAME [--json]",
		Short: "Show a node",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			n, err := c.Node(cmd.Context(), args[0])
			if err != nil {
				return missingNode(args[0], err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), n)
			}
			return printNode(cmd, n)
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func nodeUpdateCmd() *cobra.Command {
	var tags string
	var asJSON bool
	c := &cobra.Command{
		Use:   "update ID|NAME --tags k=v,... [--json]",
		Short: "Replace a node's tags (an empty --tags removes them all)",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if !cmd.Flags().Changed("tags") {
				return fmt.Errorf("nothing to update: give --tags k=v,... (--tags '' removes every tag)")
			}
			t, err := api.ParseNodeTags(tags)
			if err != nil {
				return err
			}
			n, err := c.UpdateNodeTags(cmd.Context(), args[0], t)
			if err != nil {
				return missingNode(args[0], err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), n)
			}
			return printNode(cmd, n)
		}),
	}
	c.Flags().StringVar(&tags, "tags", "", "the node's new tags, replacing the old, e.g. region=westeurope,env=prod")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func nodeDeleteCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "delete ID|NAME [--json]",
		Short: "Delete a stopped node's record (refused while the node runs)",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.DeleteNode(cmd.Context(), args[0]); err != nil {
				return missingNode(args[0], err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), map[string]string{"deleted": args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted node %s.\n", args[0])
			return nil
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
