package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/api"
)

// clustersCmd is `ferry admin clusters`: the deployment's proxy clusters.
func clustersCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "clusters",
		Aliases: []string{"cluster"},
		Short:   "Add, list, show and delete proxy clusters (groups of worker nodes that carry chosen resources)",
		Long: `A proxy cluster is a named group of nodes, its workers, with an ID of the form n-1a2b345c67890123.
A resource whose proxy_cluster_id names a cluster (ferry admin datasources add|update
--proxy-cluster-id ID) is carried only by that cluster's workers; a resource without one is carried
by the gateways (the nodes in no cluster). Make a node a worker when you create it:
  ferry-node init --join CATALOG_URL --cluster ID
A resource naming a cluster that does not exist is refused. A cluster cannot be deleted while
resources name it or nodes are its workers: move the resources, stop the workers and delete their
records (ferry admin nodes delete NAME) first.`,
	}
	c.AddCommand(clusterAddCmd(), clusterListCmd(), clusterShowCmd(), clusterDeleteCmd())
	return c
}

// missingCluster gives a cluster the node did not find the wording of the other admin commands.
func missingCluster(ref string, err error) error {
	if notFound(err) {
		return fmt.Errorf("proxy cluster %q does not exist (`ferry admin clusters list` lists them)", ref)
	}
	return err
}

func clusterAddCmd() *cobra.Command {
	var id string
	var asJSON bool
	c := &cobra.Command{
		Use:   "add NAME [--id n-…] [--json]",
		Short: "Add a proxy cluster; prints its ID (n-…)",
		Long: `Add a proxy cluster named NAME (a DNS label such as prod-westeurope) and print its new ID.
--id gives it an ID of your choosing instead (n- and 16 lower-case hex digits), e.g. to recreate a
cluster that resources or copied commands already name.`,
		Args: cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := api.ValidateClusterName(args[0]); err != nil {
				return err
			}
			if id != "" && !api.ValidClusterID(id) {
				return fmt.Errorf("--id %q is not n- and 16 lower-case hex digits (such as n-1a2b345c67890123)", id)
			}
			out, err := c.AddCluster(cmd.Context(), api.ClusterAdd{Name: args[0], ID: id})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.ID)
			return nil
		}),
	}
	c.Flags().StringVar(&id, "id", "", "the cluster's ID (n- and 16 hex digits); default: a new one")
	c.Flags().BoolVar(&asJSON, "json", false, "print the new cluster as JSON")
	return c
}

// workerNames names a cluster's workers (IDs of nodes the admin cannot see stay IDs).
func workerNames(cl api.Cluster, names map[string]string) string {
	if len(cl.Workers) == 0 {
		return "none"
	}
	out := make([]string, 0, len(cl.Workers))
	for _, id := range cl.Workers {
		if n, ok := names[id]; ok {
			out = append(out, n)
		} else {
			out = append(out, id)
		}
	}
	return strings.Join(out, ", ")
}

// nodeNames maps node IDs to names; a failure leaves the IDs.
func nodeNames(cmd *cobra.Command, c *api.Client) map[string]string {
	out := map[string]string{}
	if ns, err := c.Nodes(cmd.Context()); err == nil {
		for _, n := range ns {
			out[n.ID] = n.Name
		}
	}
	return out
}

func printClusters(cmd *cobra.Command, c *api.Client, cs []api.Cluster) error {
	names := nodeNames(cmd, c)
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tCREATED\tWORKERS")
	for _, cl := range cs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cell(cl.ID), cell(cl.Name), stamp(cl.CreatedAt), cell(workerNames(cl, names)))
	}
	return tw.Flush()
}

func clusterListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the proxy clusters with their workers",
		Args:  cobra.NoArgs,
		RunE: withAPI(func(cmd *cobra.Command, _ []string, c *api.Client) error {
			cs, err := c.Clusters(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), cs)
			}
			return printClusters(cmd, c, cs)
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func clusterShowCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show ID|NAME [--json]",
		Short: "Show a proxy cluster and its workers",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			cl, err := c.Cluster(cmd.Context(), args[0])
			if err != nil {
				return missingCluster(args[0], err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), cl)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "id\t%s\nname\t%s\ncreated\t%s\nworkers\t%s\n", cell(cl.ID), cell(cl.Name), stamp(cl.CreatedAt), cell(workerNames(cl, nodeNames(cmd, c))))
			return tw.Flush()
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func clusterDeleteCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "delete ID|NAME [--json]",
		Short: "Delete a proxy cluster (refused while resources name it or nodes are its workers)",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			cl, err := c.DeleteCluster(cmd.Context(), args[0])
			if err != nil {
				return missingCluster(args[0], err)
			}
			if asJSON { // as the other admin deletes answer (nodes, secret stores)
				return printJSON(cmd.OutOrStdout(), map[string]string{"deleted": args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted proxy cluster %s (%s).\n", cell(cl.Name), cell(cl.ID))
			return nil
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
