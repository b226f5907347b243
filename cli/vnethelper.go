package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/client"
)

func vnetHelperCmd() *cobra.Command {
	var cfg client.HelperConfig
	uid := -1
	c := &cobra.Command{
		Use:   "vnet-helper",
		Short: "Privileged helper for virtual networking mode (run as root)",
		Long: `Run the privileged helper that virtual networking mode needs when ferry runs as an ordinary user.
It does only this, for one user (--user, default $SUDO_UID): creates the TUN device with its
address and the route for the org's VN subnet (private or CGNAT space only), hands the device to
that user's ferry over a unix socket (file descriptor passing; peer credentials are checked), and
points the system's DNS for the org domain at Ferry's resolver for as long as that ferry runs.

  sudo ferry vnet-helper --user "$(id -u)"          # or: pkexec ferry vnet-helper --user UID

As a systemd unit (/etc/systemd/system/ferry-vnet-helper.service):

  [Service]
  ExecStart=/usr/local/bin/ferry vnet-helper --user 1000
  Restart=on-failure

ferry finds the socket at ` + client.DefaultVNetHelperSocket + ` (` + client.EnvVNetHelper + ` moves it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if uid < 0 {
				s := os.Getenv("SUDO_UID")
				if s == "" {
					s = os.Getenv("PKEXEC_UID")
				}
				n, err := strconv.Atoi(s)
				if err != nil {
					return fmt.Errorf("vnet-helper: give --user UID (the user whose ferry it serves)")
				}
				uid = n
			}
			cfg.OwnerUID = uid
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			return client.ServeVNetHelper(cmd.Context(), cfg)
		},
	}
	c.Flags().IntVar(&uid, "user", -1, "uid of the only user served (default $SUDO_UID or $PKEXEC_UID)")
	c.Flags().StringVar(&cfg.Socket, "socket", client.DefaultVNetHelperSocket, "unix socket to serve")
	c.Flags().StringVar(&cfg.StateDir, "state", "/var/lib/ferry-vnet-helper", "where the DNS backup is kept for crash recovery")
	return c
}
