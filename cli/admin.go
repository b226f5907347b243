package cli

import (
	"github.com/spf13/cobra"
)

func adminCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "admin",
		Short: "Administer ferry-node (needs the admin permission level)",
		Long:  "Administer ferry-node through the running daemon. The node checks that you are an administrator.",
	}
	ds := &cobra.Command{Use: "datasources", Aliases: []string{"datasource", "resources"}, Short: "Add, list, show, update, delete and health-check database resources"}
	ds.AddCommand(datasourceAddCmd(), datasourceListCmd(), datasourceShowCmd(), datasourceUpdateCmd(), datasourceDeleteCmd(), datasourceHealthcheckCmd(), datasourceDiagnosticsCmd())
	logs := &cobra.Command{Use: "logs", Short: "Read the node's connection and query logs"}
	logs.AddCommand(logsConnectionsCmd(), logsQueriesCmd())
	c.AddCommand(ds, logs, usersCmd(), rolesCmd(), activitiesCmd(), settingsCmd(), secretStoresCmd(), nodesCmd(), clustersCmd())
	return c
}
