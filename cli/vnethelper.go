package cli

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/resource"
)

// defaultHelperDomain is the org domain's default (the node's catalog.DefaultDNSDomain; the CLI
// does not import the node).
const defaultHelperDomain = "ferry.internal"

func vnetHelperCmd() *cobra.Command {
	var cfg client.HelperConfig
	var uid uidFlag
	var subnet string
	c := &cobra.Command{
		Use:   "vnet-helper",
		Short: "Privileged helper for virtual networking mode (run as root)",
		Long: `Run the privileged helper that virtual networking mode needs when ferry runs as an ordinary user.
It does only this, for one user (--user, default $SUDO_UID): on each connection of that user's
ferry to its unix socket (peer credentials are checked), it creates one TUN device with its address
and the route for the org's VN subnet (--subnet, and only while nothing on the machine is routed or
addressed in it), hands the device over (file descriptor passing), and points the system's DNS for
the org's domain (--domain) at subnet+2 through that TUN for as long as that ferry runs.

The subnet and domain are the org's (` + "`ferry admin settings show`" + ` prints them); they come from these
flags, which only whoever starts the helper as root sets, never from the client: a client asking for
another subnet, another domain, another resolver or another interface is refused.

DNS goes through systemd-resolved (per-link routing domain: only the org's names reach Ferry).
Without resolved, the helper refuses DNS unless started with --allow-resolv-conf: it then puts
Ferry's resolver first in /etc/resolv.conf, so every name the machine looks up, for every user,
goes to the served user's ferry (which forwards other names): for single-user machines only.

  sudo ferry vnet-helper --user "$(id -u)" --subnet 100.64.0.0/10 --domain ferry.internal

As a systemd unit (/etc/systemd/system/ferry-vnet-helper.service, root's, mode 0644):

  [Service]
  ExecStart=/usr/local/bin/ferry vnet-helper --user 1000 --subnet 100.64.0.0/10 --domain ferry.internal
  Restart=on-failure

Its --state directory and the --socket's directory, and every directory above them, must be
root's and not writable by group or others (sticky /tmp above them is fine); it refuses to start
otherwise. ferry finds the socket at ` + client.DefaultVNetHelperSocket + ` (` + client.EnvVNetHelper + ` moves it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !uid.set {
				s := os.Getenv("SUDO_UID")
				if s == "" {
					s = os.Getenv("PKEXEC_UID")
				}
				if err := uid.Set(s); err != nil {
					return fmt.Errorf("vnet-helper: give --user UID (the user whose ferry it serves)")
				}
			}
			p, err := netip.ParsePrefix(subnet)
			if err != nil {
				return fmt.Errorf("vnet-helper: --subnet %q: give the org's VN subnet, e.g. %s", subnet, resource.DefaultVNSubnet)
			}
			cfg.Subnet = p
			cfg.OwnerUID = uid.n
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			return client.ServeVNetHelper(cmd.Context(), cfg)
		},
	}
	c.Flags().Var(&uid, "user", "uid of the only user served (default: $SUDO_UID, or $PKEXEC_UID under pkexec)")
	c.Flags().StringVar(&subnet, "subnet", resource.DefaultVNSubnet.String(), "the org's VN subnet: the only one routed to a TUN")
	c.Flags().StringVar(&cfg.Domain, "domain", defaultHelperDomain, "the org's DNS domain: the only one pointed at Ferry's resolver")
	c.Flags().BoolVar(&cfg.AllowResolvConf, "allow-resolv-conf", false, "without systemd-resolved, edit /etc/resolv.conf (every name the machine looks up then goes to the user's ferry: single-user machines only)")
	c.Flags().StringVar(&cfg.Socket, "socket", client.DefaultVNetHelperSocket, "unix socket to serve (its directory: root's, not group/world writable)")
	c.Flags().StringVar(&cfg.StateDir, "state", client.DefaultVNetHelperState, "where the DNS backup is kept for crash recovery (root's, not group/world writable)")
	return c
}

// uidFlag is --user: a uid, or unset (then $SUDO_UID or $PKEXEC_UID), with no default value of
// its own for the help to print.
type uidFlag struct {
	n   int
	set bool
}

func (u *uidFlag) String() string {
	if !u.set {
		return ""
	}
	return strconv.Itoa(u.n)
}

func (u *uidFlag) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a uid", s)
	}
	u.n, u.set = n, true
	return nil
}

func (u *uidFlag) Type() string { return "UID" }
