// Command ferry-node runs a Ferry node on an Azure VM with a managed identity: it accepts enrolled
// devices over WireGuard and proxies their PostgreSQL connections to Azure Database for PostgreSQL,
// logging in with access tokens from the managed identity. It is pure Go (CGO_ENABLED=0) and links no
// GUI code.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/internal/fdlimit"
	"github.com/ferryhq/ferry/internal/version"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/serverhost"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-node:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "ferry-node",
		Short: "Ferry node: password-less access to Azure Database for PostgreSQL with managed identities",
		Long: `ferry-node runs on an Azure VM that has a system- or user-assigned managed identity. It asks IMDS for
short-lived access tokens, logs in to Azure Database for PostgreSQL with them over verified TLS, and
serves Ferry clients over WireGuard. It keeps the catalog of resources and users and logs every
connection and query.

First: ferry-node init --state DIR --public-host HOST. Then: ferry-node run --state DIR.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Read().String(),
	}
	root.SetVersionTemplate("ferry-node {{.Version}}\n")
	root.AddCommand(initCmd(), runCmd(), tokenCmd(), doctorCmd(), catalogCmd(), versionCmd())
	return root
}

func configPath(state, config string) string {
	if config != "" {
		return config
	}
	return filepath.Join(state, node.ConfigFile)
}

func initCmd() *cobra.Command {
	var state, admin, enrollListen, imds, join, tags string
	var cfg node.Config
	var caFiles, overrides, allowHosts []string
	c := &cobra.Command{
		Use:   "init --state DIR [--join CATALOG_URL [--cluster ID]] [--name NAME] [--tags k=v,...]",
		Short: "Create a node: its WireGuard key, its catalog and a first admin's enrollment token",
		Long: `Create a node's state in DIR: its WireGuard key, the TLS certificate of its enrollment endpoint,
its node ID (DIR/node.json), the catalog (SQLite in DIR, or the PostgreSQL database of --catalog-url)
with a first admin user, and DIR/config.json. Prints a single-use enrollment token for that admin:
give it to ` + "`ferry login`" + ` on the admin's machine.

With --join CATALOG_URL the node joins an existing deployment instead: the catalog named is the
deployment's (made by the first node's init); no catalog and no user are created, and the node
registers itself when it runs. With --cluster ID (a proxy cluster made with
` + "`ferry admin clusters add NAME`" + `) the joining node is a worker of that cluster: it carries only
the resources whose proxy_cluster_id is ID. Without it the node is a gateway and carries the
resources that name no cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state == "" {
				return fmt.Errorf("--state is required: the directory to keep the node's state in")
			}
			cfg.EnrollListen = enrollListen
			cfg.IMDSEndpoint = imds
			cfg.CAFiles = caFiles
			for _, o := range overrides {
				host, addr, ok := strings.Cut(o, "=")
				if !ok || host == "" || addr == "" {
					return fmt.Errorf("--host-override %q: use HOSTNAME=IP[:PORT]", o)
				}
				if cfg.HostOverrides == nil {
					cfg.HostOverrides = map[string]string{}
				}
				cfg.HostOverrides[strings.ToLower(host)] = addr
			}
			if len(allowHosts) > 0 {
				cfg.AllowedServerHosts = append(slices.Clone(serverhost.Defaults), allowHosts...)
			}
			if cmd.Flags().Changed("tags") {
				t, err := api.ParseNodeTags(tags)
				if err != nil {
					return fmt.Errorf("--%w", err) // "--tags: …"
				}
				if len(t) > 0 {
					cfg.Tags = t
				}
			}
			if join != "" {
				if cmd.Flags().Changed("admin") {
					return fmt.Errorf("--admin is for the deployment's first node: a joining node creates no user (its admins are the deployment's)")
				}
				cfg.CatalogURL = join
				if err := node.Join(cmd.Context(), state, cfg); err != nil {
					return err
				}
				fmt.Fprintln(cmd.ErrOrStderr(), "Node created in", state, "as part of the deployment whose catalog is", join+"; run it with `ferry-node run --state", state+"`.")
				return nil
			}
			tok, err := node.Init(cmd.Context(), state, cfg, admin)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "Node created in", state+". Enrollment token for", admin, "(single use, expires in 24h):")
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&state, "state", "", "directory for the node's state (required)")
	f.StringVar(&admin, "admin", node.DefaultAdmin, "name of the first admin user")
	f.StringVar(&join, "join", "", "join the existing deployment whose catalog this is (sqlite:/path/to/ferry.db or postgres://HOST/DATABASE) instead of creating one")
	f.StringVar(&cfg.ClusterID, "cluster", "", "with --join: make the node a worker of this proxy cluster ID (n-…, as ferry admin clusters list shows it)")
	f.StringVar(&cfg.Name, "name", "", "the node's name in the deployment, a DNS label such as gw-westeurope-1 (default: the host name's first label)")
	f.StringVar(&tags, "tags", "", "the node's tags, e.g. region=westeurope,env=prod")
	f.StringVar(&cfg.PublicHost, "public-host", "", "name or IP clients reach this node at (default: the hostname)")
	f.StringVar(&enrollListen, "enroll-listen", fmt.Sprintf(":%d", node.DefaultEnrollPort), "TCP address of the HTTPS enrollment endpoint")
	f.IntVar(&cfg.WireGuardPort, "wireguard-port", node.DefaultWireGuardPort, "UDP port of the WireGuard endpoint")
	f.StringVar(&imds, "imds-endpoint", "", "replace Azure IMDS with this http://host:port (the Azure emulator); empty = real IMDS")
	f.StringSliceVar(&caFiles, "ca-file", nil, "extra PEM CA file trusted for servers' TLS certificates (repeatable)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "127.0.0.1:9108", "TCP address of the Prometheus metrics endpoint (/metrics, /livez, /readyz); empty = off")
	f.StringSliceVar(&allowHosts, "allow-server-host", nil, "also send access tokens to this server: a DNS name, *.DOMAIN or an IP address, e.g. a private endpoint's custom DNS name (repeatable; added to the Azure Database for PostgreSQL domains in the config's "+serverhost.ConfigKey+")")
	f.StringSliceVar(&overrides, "host-override", nil, "dial IP[:PORT] for HOSTNAME (HOSTNAME=IP[:PORT], repeatable); TLS still verifies HOSTNAME")
	f.StringVar(&cfg.CatalogURL, "catalog-url", "", "keep the catalog in this PostgreSQL database (postgres://ROLE@HOST/DB; without a password the node logs in with its managed identity over verified TLS) instead of the state dir's SQLite file; env FERRY_NODE_CATALOG_URL")
	f.StringVar(&cfg.CatalogClientID, "catalog-client-id", "", "client ID of the user-assigned managed identity that logs in to the catalog database (default: the system-assigned identity); env FERRY_NODE_CATALOG_CLIENT_ID")
	return c
}

func runCmd() *cobra.Command {
	var state, config, metricsListen string
	var verbose bool
	c := &cobra.Command{
		Use:   "run --state DIR [--config FILE]",
		Short: "Run the node until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state == "" {
				return fmt.Errorf("--state is required: the directory given to `ferry-node init`")
			}
			cfg, err := node.LoadConfig(configPath(state, config))
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("metrics-listen") {
				cfg.MetricsListen = metricsListen
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			if n, err := fdlimit.Raise(); err != nil {
				logger.Warn("open-file limit", "limit", n, "err", err)
			} else {
				logger.Info("open-file limit", "limit", n)
			}
			n, err := node.Start(cmd.Context(), state, cfg, logger)
			if err != nil {
				return err
			}
			<-cmd.Context().Done()
			logger.Info("stopping")
			return n.Close()
		},
	}
	c.Flags().StringVar(&state, "state", "", "the node's state directory (required)")
	c.Flags().StringVar(&config, "config", "", "config file (default: STATE/config.json)")
	c.Flags().BoolVar(&verbose, "verbose", false, "log debug detail")
	c.Flags().StringVar(&metricsListen, "metrics-listen", "", "override the config's metrics endpoint address (empty = off)")
	return c
}

func tokenCmd() *cobra.Command {
	var state, config string
	c := &cobra.Command{
		Use:   "enroll-token USER --state DIR",
		Short: "Issue a new single-use enrollment token for an existing user",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if state == "" {
				return fmt.Errorf("--state is required")
			}
			cfg, err := node.LoadConfig(configPath(state, config))
			if err != nil {
				return err
			}
			tok, err := node.EnrollToken(cmd.Context(), state, cfg, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	c.Flags().StringVar(&state, "state", "", "the node's state directory (required)")
	c.Flags().StringVar(&config, "config", "", "config file (default: STATE/config.json)")
	return c
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and VCS revision this ferry-node was built from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "ferry-node", version.Read())
			return err
		},
	}
}
