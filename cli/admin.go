package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func adminCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "admin",
		Short: "Administer ferry-node (needs the admin permission level)",
		Long:  "Administer ferry-node through the running daemon. The node checks that you are an administrator.",
	}
	ds := &cobra.Command{Use: "datasources", Aliases: []string{"datasource", "resources"}, Short: "Add and list database resources"}
	ds.AddCommand(datasourceAddCmd(), datasourceListCmd(), datasourceShowCmd(), datasourceUpdateCmd(), datasourceDeleteCmd(), datasourceHealthcheckCmd(), datasourceDiagnosticsCmd())
	logs := &cobra.Command{Use: "logs", Short: "Read the node's connection and query logs"}
	logs.AddCommand(logsConnectionsCmd(), logsQueriesCmd())
	c.AddCommand(ds, logs, usersCmd(), rolesCmd(), activitiesCmd(), settingsCmd())
	return c
}

func logsConnectionsCmd() *cobra.Command {
	var limit int
	c := &cobra.Command{
		Use:   "connections",
		Short: "List the newest connections through the node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, ctl, err := dirsAndControl()
			if err != nil {
				return err
			}
			cs, err := ctl.API().Connections(cmd.Context(), limit)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTART\tEND\tUSER\tRESOURCE\tCLIENT\tOUTCOME\tERROR")
			for _, c := range cs {
				end := ""
				if !c.End.IsZero() {
					end = c.End.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.Start.Local().Format(time.DateTime), end, c.User, c.Resource, c.ClientAddr, c.Outcome, c.Error)
			}
			return tw.Flush()
		},
	}
	c.Flags().IntVar(&limit, "limit", 50, "how many records")
	return c
}

func logsQueriesCmd() *cobra.Command {
	var limit int
	c := &cobra.Command{
		Use:   "queries",
		Short: "List the newest queries run through the node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, ctl, err := dirsAndControl()
			if err != nil {
				return err
			}
			qs, err := ctl.API().Queries(cmd.Context(), limit)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tUSER\tRESOURCE\tCONNECTION\tSQL")
			for _, q := range qs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", q.Time.Local().Format(time.DateTime), q.User, q.Resource, q.ConnectionID, strings.Join(strings.Fields(q.SQL), " "))
			}
			return tw.Flush()
		},
	}
	c.Flags().IntVar(&limit, "limit", 50, "how many records")
	return c
}
