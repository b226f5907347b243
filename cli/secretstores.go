package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/resource"
)

// secretStoresCmd is `ferry admin secretstores`: the Azure Key Vaults the node reads resources'
// usernames and client IDs from.
func secretStoresCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "secretstores",
		Short: "Manage secret stores (Azure Key Vault) that resources read their username and client ID from",
		Long: `Secret stores are places the node reads a resource's username and managed-identity client ID
from, with its own managed identity, so that no credential sits in Ferry's catalog. The default,
when a resource names no store, is "` + resource.SecretStoreNone + `".

Azure setup: give the node's identity (the VM's system-assigned identity, or the user-assigned one
named with --managed-identity-client-id) the "Key Vault Secrets User" role on the vault, e.g.
  az role assignment create --role "Key Vault Secrets User" --assignee <principal-id> --scope <vault resource ID>`,
	}
	c.AddCommand(secretStoreAddCmd(), secretStoreListCmd(), secretStoreShowCmd(), secretStoreUpdateCmd(), secretStoreDeleteCmd())
	return c
}

func secretStoreAddCmd() *cobra.Command {
	add := &cobra.Command{Use: "add TYPE NAME --vault-uri URI", Short: "Add a secret store"}
	var s resource.SecretStore
	var asJSON bool
	kv := &cobra.Command{
		Use:   resource.SecretStoreTypeAzureKeyVault + " NAME --vault-uri https://NAME.vault.azure.net/ [--managed-identity-client-id ID]",
		Short: "Add an Azure Key Vault; prints its ID (se-…)",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			s.Name, s.Type = args[0], resource.SecretStoreTypeAzureKeyVault
			if err := s.Validate(); err != nil {
				return err
			}
			out, err := c.AddSecretStore(cmd.Context(), s)
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
	kv.Flags().StringVar(&s.VaultURI, "vault-uri", "", "the vault's URI, https://NAME.vault.azure.net/ (required)")
	kv.Flags().StringVar(&s.ManagedIdentityClientID, "managed-identity-client-id", "", "client ID of the node's user-assigned identity that reads the vault; empty: the VM's system-assigned identity")
	kv.Flags().BoolVar(&asJSON, "json", false, "print the new store as JSON")
	_ = kv.MarkFlagRequired("vault-uri")
	add.AddCommand(kv)
	return add
}

func printStores(cmd *cobra.Command, stores []resource.SecretStore) error {
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tTYPE\tVAULT URI\tIDENTITY")
	for _, s := range stores {
		id := s.ManagedIdentityClientID
		if id == "" {
			id = "system-assigned"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.ID, s.Name, s.Type, s.VaultURI, id)
	}
	return tw.Flush()
}

func secretStoreListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the secret stores",
		Args:  cobra.NoArgs,
		RunE: withAPI(func(cmd *cobra.Command, _ []string, c *api.Client) error {
			stores, err := c.SecretStores(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), stores)
			}
			return printStores(cmd, stores)
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func secretStoreShowCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show ID|NAME [--json]",
		Short: "Show a secret store",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			s, err := c.SecretStore(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), s)
			}
			return printStores(cmd, []resource.SecretStore{s})
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func secretStoreUpdateCmd() *cobra.Command {
	var name, uri, clientID string
	var asJSON bool
	c := &cobra.Command{
		Use:   "update ID|NAME [--name NEW] [--vault-uri URI] [--managed-identity-client-id ID]",
		Short: "Change a secret store (an empty --managed-identity-client-id means the system-assigned identity)",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			s, err := c.SecretStore(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("name") {
				s.Name = name
			}
			if f.Changed("vault-uri") {
				s.VaultURI = uri
			}
			if f.Changed("managed-identity-client-id") {
				s.ManagedIdentityClientID = clientID
			}
			if err := s.Validate(); err != nil {
				return err
			}
			out, err := c.UpdateSecretStore(cmd.Context(), args[0], s)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			return printStores(cmd, []resource.SecretStore{out.After})
		}),
	}
	c.Flags().StringVar(&name, "name", "", "new name")
	c.Flags().StringVar(&uri, "vault-uri", "", "new vault URI")
	c.Flags().StringVar(&clientID, "managed-identity-client-id", "", "client ID of the identity that reads the vault; empty: system-assigned")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (before and after)")
	return c
}

func secretStoreDeleteCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "delete ID|NAME [--json]",
		Short: "Delete a secret store (refused while resources use it)",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.DeleteSecretStore(cmd.Context(), args[0]); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), map[string]string{"deleted": args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted secret store %s\n", args[0])
			return nil
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
