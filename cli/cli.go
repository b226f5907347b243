// Package cli is the ferry command line: a thin face over the client core (package client). Every
// command that needs the node goes through the running daemon's control socket.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/internal/version"
	"github.com/ferryhq/ferry/resource"
)

// NewRoot returns the ferry root command. runGUI, when not nil, runs the desktop app; it is what
// `ferry` with no arguments (and `ferry app`) starts.
func NewRoot(runGUI func(ctx context.Context, dirs client.Dirs) error) *cobra.Command {
	root := &cobra.Command{
		Use:   "ferry",
		Short: "Reach Azure Database for PostgreSQL through Ferry, without passwords",
		Long: `ferry gives every Azure Database for PostgreSQL resource you may use a local address
(for example 127.0.0.1:10001). psql, pgbench, DBeaver, DataGrip and any driver connect to it
unchanged; ferry-node logs in with its managed identity, so you never hold a database password.

Start: ferry login TOKEN, then ferry daemon (or the desktop app), then ferry status and ferry connect NAME.
Run without arguments to open the desktop app.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Read().String(),
	}
	root.SetVersionTemplate("ferry {{.Version}}\n")
	if runGUI != nil {
		root.RunE = func(cmd *cobra.Command, _ []string) error {
			dirs, err := client.DefaultDirs()
			if err != nil {
				return err
			}
			return runGUI(cmd.Context(), dirs)
		}
	}
	root.AddCommand(loginCmd(), logoutCmd(), daemonCmd(), statusCmd(), connectCmd(), disconnectCmd(), adminCmd(), vnetHelperCmd(), versionCmd())
	strictGroups(root)
	return root
}

// Main runs the root command with os.Args and returns the process exit code.
func Main(runGUI func(ctx context.Context, dirs client.Dirs) error) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return execute(ctx, NewRoot(runGUI), os.Stderr)
}

// execute runs root and writes its error, if any, to stderr; it returns the exit status.
func execute(ctx context.Context, root *cobra.Command, stderr io.Writer) int {
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "ferry:", printable(err.Error()))
		return 1
	}
	return 0
}

func dirsAndControl() (client.Dirs, *client.Control, error) {
	dirs, err := client.DefaultDirs()
	if err != nil {
		return dirs, nil, err
	}
	return dirs, client.NewControl(dirs), nil
}

func loginCmd() *cobra.Command {
	var device string
	c := &cobra.Command{
		Use:   "login TOKEN",
		Short: "Enroll this device with ferry-node using an enrollment token",
		Long: `Enroll this device with the node that issued TOKEN. A WireGuard key pair is made here; only its
public key is sent. The node's TLS certificate is pinned by the token. The state is stored under the
user's config directory (FERRY_CONFIG_DIR overrides it) with mode 0600. Then run ` + "`ferry daemon`" + `.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return errors.New("give the enrollment token your administrator issued (`ferry admin users enroll NAME`): ferry login TOKEN")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			dirs, err := client.DefaultDirs()
			if err != nil {
				return err
			}
			st, err := client.Login(cmd.Context(), dirs, args[0], device)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Enrolled as %s (device address %s). Start the client with `ferry daemon`.\n", printable(st.User), printable(st.DeviceAddress))
			return nil
		},
	}
	c.Flags().StringVar(&device, "device-name", "", "name of this device as the node lists it (default: the hostname)")
	return c
}

func daemonCmd() *cobra.Command {
	var verbose bool
	var mode string
	c := &cobra.Command{
		Use:   "daemon",
		Short: "Run the headless client: the tunnel to the node and the local addresses",
		Long: `Run the client in the foreground: it keeps the WireGuard tunnel to ferry-node, listens on the local
address of every connected resource, and serves the control socket that the CLI and the desktop
app use. Stop it with Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dirs, err := client.DefaultDirs()
			if err != nil {
				return err
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			if mode == "" {
				mode = os.Getenv(client.EnvMode)
			}
			if err := client.ValidMode(mode); err != nil {
				return err
			}
			d, err := client.StartDaemon(cmd.Context(), dirs, logger, client.WithMode(mode))
			if err != nil {
				return err
			}
			select {
			case <-cmd.Context().Done():
			case <-d.LoggedOut():
			}
			return d.Close()
		},
	}
	addModeFlag(c, &mode)
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "log debug messages too")
	return c
}

func statusCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status",
		Short: "List the resources you may reach, their local addresses and whether they are connected",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, ctl, err := dirsAndControl()
			if err != nil {
				return err
			}
			st, err := ctl.Status(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(st); err != nil {
					return err
				}
				return statusErr(st)
			}
			if st.VNUnavailable != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "ferry: %s\n", st.VNUnavailable)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTYPE\tADDRESS\tSTATUS\tHEALTH\tMODE\tNODE\tTAGS")
			for _, r := range st.Resources {
				state := "not connected"
				if r.Connected {
					state = "connected"
				}
				node := r.Node // the node its new connections go to
				if node == "" {
					node = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Type, r.Address, state, healthLabel(r.Health), client.ModeLabel(r), node, resource.FormatTags(r.Tags))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			writeUnroutable(out, st.Resources)
			writeNode(out, st)
			if err := statusErr(st); err != nil {
				return err
			}
			if len(st.Resources) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), client.NoResourcesHint(st.User))
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON (each resource's row has the node its connections go to)")
	return c
}

// statusErr: the table or JSON (what the daemon last knew) is still printed; the exit status says
// that the node could not be reached, so that scripts do not take it for a working client.
func statusErr(st client.Status) error {
	switch {
	case st.Suspended || st.DeviceRemoved:
		return errors.New(st.NodeError)
	case !st.NodeReachable:
		return fmt.Errorf("ferry-node unreachable: %s", st.NodeError)
	}
	return nil
}

// writeUnroutable prints, for each resource that no node can carry now, why ("NAME: no node can
// reach it: …", from the node's route of it).
func writeUnroutable(w io.Writer, rs []client.ResourceStatus) {
	for _, r := range rs {
		if r.Route != nil && len(r.Route.Nodes) == 0 && r.Route.Reason != "" {
			fmt.Fprintf(w, "%s: %s\n", cell(r.Name), cell(r.Route.Reason))
		}
	}
}

// writeNode prints the node in use, and the last change of node when the client left the one it
// enrolled with.
func writeNode(w io.Writer, st client.Status) {
	if st.Node == "" {
		return
	}
	fmt.Fprintf(w, "Node: %s (%s)", st.Node, st.NodeEndpoint)
	if st.PreferredNode != "" && st.PreferredNode != st.Node {
		fmt.Fprintf(w, ", preferred node %s", st.PreferredNode)
	}
	fmt.Fprintln(w)
	if st.NodeChange != "" {
		fmt.Fprintf(w, "Last node change: %s\n", st.NodeChange)
	}
}

func connectCmd() *cobra.Command {
	var env bool
	c := &cobra.Command{
		Use:   "connect NAME",
		Short: "Connect a resource and print its local address",
		Long: `Connect a resource: the daemon starts listening on its local address and prints it. With --env,
print shell export lines (PGHOST, PGPORT, PGDATABASE, PGUSER, PGSSLMODE) instead, so that

  pgenv=$(ferry connect NAME --env) && eval "$pgenv" && psql

reaches the database. No password is needed: ferry-node logs in with its managed identity.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, ctl, err := dirsAndControl()
			if err != nil {
				return err
			}
			r, err := ctl.Connect(cmd.Context(), args[0])
			if notFound(err) {
				return fmt.Errorf("resource %q does not exist or is not granted to you (`ferry status` lists yours)", args[0])
			}
			if err != nil {
				return err
			}
			writeConnect(cmd.OutOrStdout(), r, env)
			return nil
		},
	}
	c.Flags().BoolVar(&env, "env", false, "print shell export lines for psql instead of the address")
	return c
}

func writeConnect(w io.Writer, r client.ResourceStatus, env bool) {
	if !env {
		fmt.Fprintln(w, r.Address)
		return
	}
	for _, kv := range client.PGEnv(r) {
		fmt.Fprintf(w, "export %s=%s\n", kv[0], shellQuote(kv[1]))
	}
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func disconnectCmd() *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "disconnect NAME... | --all",
		Short: "Stop listening on resources' local addresses",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return errors.New("disconnect: give resource names or --all (not both)")
			}
			_, ctl, err := dirsAndControl()
			if err != nil {
				return err
			}
			return ctl.Disconnect(cmd.Context(), args...)
		},
	}
	c.Flags().BoolVar(&all, "all", false, "disconnect every connected resource")
	return c
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and VCS revision this ferry was built from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "ferry", version.Read())
			return err
		},
	}
}
