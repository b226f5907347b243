package helplint

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestDefects: each mistake the package names is found on a command of its own, with the command
// and flag named, and a clean flag yields nothing. Without it, the binaries' TestHelpTexts would
// pass just as well if Defects found nothing at all.
func TestDefects(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  string // the subcommand the flag is on
		add  func(c *cobra.Command)
		want string // a part of the one defect expected; "" for none
	}{
		{"clean", "add", func(c *cobra.Command) { c.Flags().Int("port", 5432, "the server's port") }, ""},
		{"backquotes", "daemon", func(c *cobra.Command) {
			c.Flags().String("mode", "", "the mode; see `ferry vnet-helper`")
		}, `root daemon --mode: backquotes in the usage make "ferry vnet-helper" the value placeholder`},
		{"default twice", "vnet-helper", func(c *cobra.Command) {
			c.Flags().Int("uid", -1, "the user's ID (default $SUDO_UID)")
		}, "root vnet-helper --uid: states its default twice"},
		{"required on update", "update", func(c *cobra.Command) {
			c.Flags().String("host", "", "the server's host name (required)")
		}, `root update --host: "required" on update`},
		{"another command's flag", "add", func(c *cobra.Command) {
			c.Flags().String("name", "", "the new name (update only)")
		}, "root add --name: marked as belonging to another command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := &cobra.Command{Use: "root"}
			sub := &cobra.Command{Use: tc.cmd}
			tc.add(sub)
			root.AddCommand(sub)
			got := Defects(root)
			switch {
			case tc.want == "" && len(got) != 0:
				t.Errorf("Defects: %q, want none", got)
			case tc.want != "" && (len(got) != 1 || !strings.HasPrefix(got[0], tc.want)):
				t.Errorf("Defects: %q, want one starting %q", got, tc.want)
			}
		})
	}
}
