package main

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/catalog/migrate"
)

func catalogCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "catalog",
		Short: "Work on the node's catalog database",
		Args:  cobra.NoArgs,
	}
	c.AddCommand(catalogMigrateCmd())
	return c
}

func catalogMigrateCmd() *cobra.Command {
	var state, config, from, to, clientID, imds string
	var caFiles []string
	var intoExisting bool
	c := &cobra.Command{
		Use:   "migrate --to postgres://ROLE@HOST/DATABASE [--state DIR | --from sqlite:PATH] [--into-existing]",
		Short: "Move a single node's SQLite catalog and audit log into a shared PostgreSQL catalog",
		Long: `Move a single node's catalog (settings, secret stores, resources, users, roles, grants, devices,
enrollment tokens, nodes, admin activity) and its audit log (connections and queries) from its
SQLite file into a PostgreSQL database, for a fleet of nodes sharing one catalog. The catalog moves
in one transaction and the audit log in a second one; both schemas are brought forward first (the
source's too, as the node would at its next start). Resource IDs and addresses, device keys and
addresses and node IDs stay as they are, so enrolled devices keep connecting; audit records keep
their record IDs, so nothing the node's audit spool ships later is written twice.

Stop the node first: a source whose node is running (its heartbeat is recent) is refused.
A target that holds any catalog or audit row is refused, naming what it holds, unless
--into-existing: then rows equal to the target's are skipped, audit records it holds (same record
ID) are skipped, and rows that clash with the target's (same name with other content, or a taken ID,
address or key) refuse the whole catalog move, each named. A run that moved the catalog but failed
on the audit log is finished by running it again with --into-existing.

The target URL logs in as the node does: without a password, with the managed identity's token
(--catalog-client-id, default the system-assigned identity) over TLS verified against the node's
CA files (--ca-file), to an allowed host; --state DIR takes these settings and the source file from
the node's config. A password in the URL or a Unix socket host logs in without a token.

Afterwards set "catalog_url" (and "catalog_client_id") in STATE/config.json, or run the node with
FERRY_NODE_CATALOG_URL, and start it; other nodes join with ferry-node init --join URL.`,
		Example: `  systemctl stop ferry-node
  ferry-node catalog migrate --state /var/lib/ferry-node \
    --to 'postgres://ferry-node-1@ferry-catalog.postgres.database.azure.com/ferry' \
    --catalog-client-id 11111111-2222-3333-4444-555555555555`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" {
				return fmt.Errorf("--to is required: the PostgreSQL catalog to move into (postgres://ROLE@HOST/DATABASE)")
			}
			if !strings.HasPrefix(to, "postgres://") && !strings.HasPrefix(to, "postgresql://") && !strings.Contains(to, "=") {
				return fmt.Errorf("--to %q: give a PostgreSQL URL, postgres://ROLE@HOST/DATABASE", redacted(to))
			}
			var cfg node.Config
			if state != "" || config != "" {
				var err error
				if cfg, err = node.LoadConfig(configPath(state, config)); err != nil {
					return err
				}
			}
			if from == "" {
				switch {
				case state == "":
					return fmt.Errorf("--from sqlite:PATH or --state DIR is required: the node's SQLite catalog to move")
				case strings.HasPrefix(cfg.CatalogURL, "sqlite:"):
					from = cfg.CatalogURL
				case cfg.CatalogURL != "":
					return fmt.Errorf("the node in %s keeps its catalog in %s already, not in a SQLite file; give --from sqlite:PATH to move another file", state, cfg.CatalogURL)
				default:
					from = "sqlite:" + filepath.Join(state, "ferry.db")
				}
			}
			path, ok := strings.CutPrefix(from, "sqlite:")
			if !ok || path == "" {
				return fmt.Errorf("--from %q: give the node's SQLite catalog as sqlite:PATH (e.g. sqlite:/var/lib/ferry-node/ferry.db)", from)
			}
			abs, err := filepath.Abs(path)
			if err != nil {
				return fmt.Errorf("--from %q: %w", from, err)
			}
			if _, err := os.Stat(abs); err != nil {
				return fmt.Errorf("--from %q: %w; give the node's SQLite catalog (its state directory's ferry.db)", from, err)
			}
			if clientID != "" {
				cfg.CatalogClientID = clientID
			}
			if imds != "" {
				cfg.IMDSEndpoint = imds
			}
			cfg.CAFiles = append(cfg.CAFiles, caFiles...)
			ctx := cmd.Context()
			logger := slog.New(slog.DiscardHandler)
			src, err := node.OpenCatalogURL(ctx, "sqlite:"+abs, cfg, logger)
			if err != nil {
				return fmt.Errorf("source: %w", err)
			}
			defer src.Close()
			dst, err := node.OpenCatalogURL(ctx, to, cfg, logger)
			if err != nil {
				return fmt.Errorf("target: %w", err)
			}
			defer dst.Close()
			res, err := migrate.Run(ctx, src, dst, migrate.Options{IntoExisting: intoExisting})
			out := cmd.OutOrStdout()
			if len(res.Counts) > 0 {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TABLE\tMOVED\tALREADY THERE")
				for _, c := range res.Counts {
					fmt.Fprintf(tw, "%s\t%d\t%d\n", c.Table, c.Copied, c.Skipped)
				}
				tw.Flush()
			}
			if err != nil {
				return err
			}
			shown := redacted(to)
			fmt.Fprintf(out, "\nMoved %s into the PostgreSQL catalog. Next:\n", abs)
			fmt.Fprintf(out, "  - this node: set \"catalog_url\": %q (and \"catalog_client_id\" for a user-assigned identity) in its config.json, then start it;\n", shown)
			fmt.Fprintf(out, "    keep %s as a backup; the node no longer uses it\n", abs)
			fmt.Fprintf(out, "  - other nodes: ferry-node init --state DIR --join %q --name NAME --tags region=…\n", shown)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&to, "to", "", "the PostgreSQL catalog to move into: postgres://ROLE@HOST/DATABASE (required)")
	f.StringVar(&from, "from", "", "the node's SQLite catalog: sqlite:PATH (default with --state: the node's own)")
	f.StringVar(&state, "state", "", "the node's state directory: its config gives the source and how to log in to the target")
	f.StringVar(&config, "config", "", "config file (default: STATE/config.json)")
	f.StringVar(&clientID, "catalog-client-id", "", "client ID of the user-assigned managed identity that logs in to the target (default: the config's, else the system-assigned identity)")
	f.StringVar(&imds, "imds-endpoint", "", "replace Azure IMDS with this http://host:port (the Azure emulator); default: the config's, else real IMDS")
	f.StringSliceVar(&caFiles, "ca-file", nil, "extra PEM CA file trusted for the target's TLS certificate (repeatable; added to the config's)")
	f.BoolVar(&intoExisting, "into-existing", false, "merge into a target that holds rows: skip rows it holds, refuse (naming them) rows that clash")
	return c
}

// redacted is a catalog URL fit to print: a postgres:// URL's password as xxxxx, a key=value
// string's password=… likewise.
func redacted(u string) string {
	if p, err := url.Parse(u); err == nil && p.Scheme != "" && p.User != nil {
		return p.Redacted()
	}
	return kvPassword.ReplaceAllString(u, "${1}xxxxx")
}

var kvPassword = regexp.MustCompile(`((?:^|\s)password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)`)
