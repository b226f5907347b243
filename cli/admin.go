package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/resource"
)

func adminCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "admin",
		Short: "Administer ferry-node (needs the admin permission level)",
		Long:  "Administer ferry-node through the running daemon. The node checks that you are an administrator.",
	}
	ds := &cobra.Command{Use: "datasources", Aliases: []string{"datasource", "resources"}, Short: "Add and list database resources"}
	ds.AddCommand(datasourceAddCmd(), datasourceListCmd())
	logs := &cobra.Command{Use: "logs", Short: "Read the node's connection and query logs"}
	logs.AddCommand(logsConnectionsCmd(), logsQueriesCmd())
	c.AddCommand(ds, logs)
	return c
}

func datasourceAddCmd() *cobra.Command {
	add := &cobra.Command{Use: "add", Short: "Add a datasource of a given type"}
	r := resource.New("")
	var portOverride, tags string
	var asJSON bool
	mi := &cobra.Command{
		Use:   "azurepostgresmi NAME",
		Short: "Add an " + resource.TypeDisplayName + " resource",
		Long: `Add an Azure Database for PostgreSQL server that ferry-node reaches with its managed identity.
Omit --managed-identity-client-id to use the VM's system-assigned identity.

Example:
  ferry admin datasources add azurepostgresmi azure-pg-mi-prod \
    --hostname=mypg.postgres.database.azure.com --port=5432 --database=production \
    --username=mi_user --managed-identity-client-id=11111111-2222-3333-4444-555555555555 \
    --tls-required --tags="env=production,team=data"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r.Name = args[0]
			var err error
			if r.PortOverride, err = resource.ParsePortOverride(portOverride); err != nil {
				return err
			}
			if r.Tags, err = resource.ParseTags(tags); err != nil {
				return err
			}
			if err := r.Validate(); err != nil {
				return fmt.Errorf("the resource is not valid:\n%w", err)
			}
			_, ctl, err := dirsAndControl()
			if err != nil {
				return err
			}
			out, err := ctl.API().AddDatasource(cmd.Context(), r)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Added %s (%s): loopback address %s, virtual networking address %s\n", out.Name, out.ID, out.LoopbackAddress, out.VNAddress)
			return nil
		},
	}
	f := mi.Flags()
	f.StringVar(&r.Hostname, "hostname", "", "server hostname, e.g. mypg.postgres.database.azure.com (required)")
	f.IntVar(&r.Port, "port", resource.DefaultPort, "server port")
	f.StringVar(&r.Database, "database", "", "database to connect to (required)")
	f.StringVar(&r.Username, "username", "", "PostgreSQL user of the managed identity (required unless --username-path)")
	f.StringVar(&r.UsernamePath, "username-path", "", "secret path of the username (with --secret-store-id)")
	f.StringVar(&r.ManagedIdentityClientID, "managed-identity-client-id", "", "client ID of the user-assigned managed identity; omit for the system-assigned identity")
	f.StringVar(&r.ManagedIdentityClientIDPath, "managed-identity-client-id-path", "", "secret path of the client ID (with --secret-store-id)")
	f.BoolVar(&r.TLSRequired, "tls-required", true, "require TLS to the server (verified)")
	f.StringVar(&r.BindInterface, "bind-interface", "", "loopback IP the client listens on, e.g. 127.0.0.1")
	f.StringVar(&r.EgressFilter, "egress-filter", "", "nodes that may reach the server, e.g. tag:env=prod")
	f.StringVar(&portOverride, "port-override", "", "local port (loopback 1024-64999, virtual networking 1-65535); -1 = a new auto-assigned port")
	f.StringVar(&r.ProxyClusterID, "proxy-cluster-id", "", "proxy cluster to route through (empty: none)")
	f.StringVar(&r.SecretStoreID, "secret-store-id", "", "secret store holding the credentials (empty: the catalog)")
	f.StringVar(&r.Subdomain, "subdomain", "", "DNS alias in virtual networking mode")
	f.StringVar(&tags, "tags", "", `tags as "key=value,key2=value2"`)
	f.StringVar(&r.ConnectivityMode, "connectivity-mode", "", "loopback or virtual-networking (default: the org's)")
	f.StringVar(&r.IPAddress, "ip-address", "", "IP address to use (default: assigned)")
	f.BoolVar(&r.RestrictDatabase, "restrict-database", false, "limit connections to --database")
	f.BoolVar(&r.UseAzureSingleServerUsernames, "use-azure-single-server-usernames", false, "append @servername to the username (Azure Single Server)")
	f.BoolVar(&asJSON, "json", false, "print the stored resource as JSON")
	add.AddCommand(mi)
	return add
}

func datasourceListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every datasource in the catalog",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, ctl, err := dirsAndControl()
			if err != nil {
				return err
			}
			l, err := ctl.API().Datasources(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTYPE\tHOSTNAME\tDATABASE\tUSERNAME\tIDENTITY\tLOOPBACK\tVN ADDRESS\tTAGS")
			for _, r := range l.Datasources {
				id := "system-assigned"
				if r.ManagedIdentityClientID != "" {
					id = r.ManagedIdentityClientID
				}
				fmt.Fprintf(tw, "%s\t%s\t%s:%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Type, r.Hostname, r.Port, r.Database, r.Username, id, r.LoopbackAddress, r.VNAddress, resource.FormatTags(r.Tags))
			}
			return tw.Flush()
		},
	}
}
