package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
)

func logoutCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Remove this device from the node and delete its local key",
		Long: `Remove this device's WireGuard key from ferry-node, disconnect every resource and delete the local
state. The daemon exits afterwards. Run ` + "`ferry login TOKEN`" + ` with a new token to enroll again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dirs, ctl, err := dirsAndControl()
			if err != nil {
				return err
			}
			if client.DaemonRunning(dirs) {
				err = ctl.Logout(cmd.Context())
			} else {
				err = logoutWithoutDaemon(cmd.Context(), dirs)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Logged out: this device's key is removed from the node and from this machine.")
			return nil
		},
	}
}

// logoutWithoutDaemon brings the tunnel up just long enough to tell the node, with a control socket
// of its own so that nothing else can talk to it meanwhile.
func logoutWithoutDaemon(ctx context.Context, dirs client.Dirs) error {
	tmp, err := os.MkdirTemp("", "ferry-logout-")
	if err != nil {
		return fmt.Errorf("log out: %w", err)
	}
	defer os.RemoveAll(tmp)
	dirs.Runtime = tmp
	d, err := client.StartDaemon(ctx, dirs, slog.New(slog.DiscardHandler))
	if err != nil {
		return fmt.Errorf("log out: %w", err)
	}
	defer d.Close()
	return d.Logout(ctx)
}

// withAPI runs fn with the node API client through the daemon.
func withAPI(fn func(cmd *cobra.Command, args []string, c *api.Client) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		_, ctl, err := dirsAndControl()
		if err != nil {
			return err
		}
		return fn(cmd, args, ctl.API())
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func usersCmd() *cobra.Command {
	c := &cobra.Command{Use: "users", Aliases: []string{"user"}, Short: "Manage users, their devices and enrollment"}
	var admin bool
	var roles []string
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a user (then issue a token with `ferry admin users enroll NAME`)",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.AddUser(cmd.Context(), api.NewUser{Name: args[0], Admin: admin, Roles: roles}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Added user %s. Give them a token from `ferry admin users enroll %s`.\n", args[0], args[0])
			return nil
		}),
	}
	add.Flags().BoolVar(&admin, "admin", false, "give the admin permission level (every admin command, every resource)")
	add.Flags().StringSliceVar(&roles, "role", nil, "role to assign (repeatable)")

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: withAPI(func(cmd *cobra.Command, _ []string, c *api.Client) error {
			us, err := c.Users(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), us)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tPERMISSION\tSTATE\tROLES\tDEVICES")
			for _, u := range us {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", u.Name, permission(u), state(u), strings.Join(u.Roles, ","), u.Devices)
			}
			return tw.Flush()
		}),
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var showJSON bool
	show := &cobra.Command{
		Use:   "show NAME [--json]",
		Short: "Show a user",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			u, err := c.User(cmd.Context(), args[0])
			if err != nil {
				return missing("user", args[0], err)
			}
			if showJSON {
				return printJSON(cmd.OutOrStdout(), u)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "name\t%s\npermission\t%s\nstate\t%s\nroles\t%s\ndevices\t%d\ncreated\t%s\n",
				u.Name, permission(u), state(u), strings.Join(u.Roles, ","), u.Devices, stamp(u.CreatedAt))
			return tw.Flush()
		}),
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")
	var undo bool
	suspend := &cobra.Command{
		Use:   "suspend NAME",
		Short: "Suspend a user: their devices lose the tunnel and open sessions end within seconds",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.SuspendUser(cmd.Context(), args[0], !undo); err != nil {
				return missing("user", args[0], err)
			}
			if undo {
				fmt.Fprintf(cmd.OutOrStdout(), "Reinstated %s.\n", args[0])
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "Suspended %s: their devices lose the tunnel and open sessions end within seconds.\n", args[0])
			}
			return nil
		}),
	}
	suspend.Flags().BoolVar(&undo, "undo", false, "reinstate the user instead")
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a user and their devices",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.DeleteUser(cmd.Context(), args[0]); err != nil {
				return missing("user", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted user %s and their devices.\n", args[0])
			return nil
		}),
	}
	var listTokens, tokensJSON bool
	var cancelID string
	enroll := &cobra.Command{
		Use:   "enroll NAME | --list [NAME] [--json] | --cancel ID",
		Short: "Issue a single-use enrollment token for a user (for `ferry login TOKEN`), or list and cancel unused ones",
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case listTokens && cancelID != "":
				return errors.New("give either --list or --cancel, not both")
			case listTokens:
				return cobra.MaximumNArgs(1)(cmd, args)
			case cancelID != "":
				return cobra.NoArgs(cmd, args)
			case tokensJSON:
				return errors.New("--json goes with --list")
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			switch {
			case listTokens:
				user := ""
				if len(args) == 1 {
					user = args[0]
				}
				ts, err := c.EnrollTokens(cmd.Context(), user)
				if err != nil {
					return err
				}
				if tokensJSON {
					return printJSON(cmd.OutOrStdout(), ts)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tUSER\tEXPIRES")
				for _, t := range ts {
					exp := stamp(t.ExpiresAt)
					if t.Expired {
						exp += " (expired)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", t.ID, t.User, exp)
				}
				return tw.Flush()
			case cancelID != "":
				t, err := c.CancelEnrollToken(cmd.Context(), cancelID)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Cancelled enrollment token %s of %s: it can no longer enroll a device.\n", t.ID, t.User)
				return nil
			}
			t, err := c.EnrollUser(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Single-use enrollment token for %s, valid until %s (ID %s; cancel it with `ferry admin users enroll --cancel %s`):\n",
				args[0], stamp(t.ExpiresAt), t.ID, t.ID)
			fmt.Fprintln(cmd.OutOrStdout(), t.Token)
			return nil
		}),
	}
	enroll.Flags().BoolVar(&listTokens, "list", false, "list the tokens not used yet (of user NAME if given)")
	enroll.Flags().BoolVar(&tokensJSON, "json", false, "with --list: print JSON")
	enroll.Flags().StringVar(&cancelID, "cancel", "", "cancel the unused token with this ID, so that it can no longer enroll a device")
	var deleteKey string
	devices := &cobra.Command{
		Use:   "devices NAME [--delete PUBLIC_KEY]",
		Short: "List a user's devices, or delete one",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if deleteKey != "" {
				return c.DeleteDevice(cmd.Context(), deleteKey)
			}
			ds, err := c.Devices(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PUBLIC KEY\tNAME\tADDRESS\tENROLLED\tLAST HANDSHAKE")
			for _, d := range ds {
				hs := "never"
				if !d.LastHandshake.IsZero() {
					hs = stamp(d.LastHandshake)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.PublicKey, d.Name, d.Address, stamp(d.EnrolledAt), hs)
			}
			return tw.Flush()
		}),
	}
	devices.Flags().StringVar(&deleteKey, "delete", "", "delete the device with this WireGuard public key")
	c.AddCommand(add, list, show, suspend, del, enroll, devices)
	return c
}

func permission(u api.User) string {
	if u.Admin {
		return "admin"
	}
	return "user"
}

func state(u api.User) string {
	if u.Suspended {
		return "suspended"
	}
	return "active"
}

func rolesCmd() *cobra.Command {
	c := &cobra.Command{Use: "roles", Aliases: []string{"role"}, Short: "Manage roles: what they grant and who holds them"}
	add := &cobra.Command{
		Use:  "add NAME",
		Args: cobra.ExactArgs(1), Short: "Add a role",
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.AddRole(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Added role %s. Grant it resources with `ferry admin roles grant %s RESOURCE|tag:KEY=VALUE`.\n", args[0], args[0])
			return nil
		}),
	}
	var listJSON bool
	list := &cobra.Command{
		Use: "list [--json]", Args: cobra.NoArgs, Short: "List roles with their grants and users",
		RunE: withAPI(func(cmd *cobra.Command, _ []string, c *api.Client) error {
			rs, err := c.Roles(cmd.Context())
			if err != nil {
				return err
			}
			if listJSON {
				if rs == nil {
					rs = []api.Role{}
				}
				return printJSON(cmd.OutOrStdout(), rs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tGRANTS\tUSERS")
			for _, r := range rs {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, strings.Join(r.Grants, ","), strings.Join(r.Users, ","))
			}
			return tw.Flush()
		}),
	}
	grant := &cobra.Command{
		Use:   "grant ROLE (RESOURCE | tag:KEY=VALUE)",
		Short: "Grant a role one resource by name, or every resource whose tags match",
		Args:  cobra.ExactArgs(2),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.Grant(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Role %s now grants %s.\n", args[0], args[1])
			if !strings.HasPrefix(args[1], "tag:") {
				if _, err := c.Datasource(cmd.Context(), args[1]); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: no resource is named %q yet; the grant takes effect when one is\n", args[1])
				}
			}
			return nil
		}),
	}
	revoke := &cobra.Command{
		Use:   "revoke ROLE (RESOURCE | tag:KEY=VALUE)",
		Short: "Revoke a grant; sessions it allowed end within seconds",
		Args:  cobra.ExactArgs(2),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.Revoke(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Role %s no longer grants %s; sessions it allowed end within seconds.\n", args[0], args[1])
			return nil
		}),
	}
	assign := &cobra.Command{
		Use: "assign ROLE USER", Short: "Give a user a role", Args: cobra.ExactArgs(2),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.AssignRole(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s now holds role %s.\n", args[1], args[0])
			return nil
		}),
	}
	unassign := &cobra.Command{
		Use: "unassign ROLE USER", Short: "Take a role from a user", Args: cobra.ExactArgs(2),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.UnassignRole(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s no longer holds role %s.\n", args[1], args[0])
			return nil
		}),
	}
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a role", Args: cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.DeleteRole(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted role %s.\n", args[0])
			return nil
		}),
	}
	list.Flags().BoolVar(&listJSON, "json", false, "print JSON")
	c.AddCommand(add, list, grant, revoke, assign, unassign, del)
	return c
}

func activitiesCmd() *cobra.Command {
	var limit int
	var asJSON bool
	c := &cobra.Command{
		Use:   "activities [--limit N] [--json]",
		Short: "Read the admin activity log: who changed what, when",
		Args:  cobra.NoArgs,
		RunE: withAPI(func(cmd *cobra.Command, _ []string, c *api.Client) error {
			as, err := c.Activities(cmd.Context(), limit)
			if err != nil {
				return err
			}
			if asJSON {
				if as == nil {
					as = []api.Activity{}
				}
				return printJSON(cmd.OutOrStdout(), as)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tTARGET\tDETAIL")
			for _, a := range as {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", stamp(a.Time), a.Actor, a.Action, a.Target, a.Detail)
			}
			return tw.Flush()
		}),
	}
	c.Flags().IntVar(&limit, "limit", 50, "how many records")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
