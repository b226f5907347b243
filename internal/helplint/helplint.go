// Package helplint finds the help-text mistakes that cobra and pflag let through silently, so that
// a test can walk every command of a binary and keep them out:
//
//   - a backquoted word in a flag's usage becomes the flag's value placeholder
//     ("--mode ferry vnet-helper") and loses its quotes;
//   - a usage that states its own default next to a non-zero default value prints two
//     ("(default $SUDO_UID) (default -1)");
//   - "(required)" on a command that changes an existing object (update), where nothing is;
//   - a flag marked as belonging to another command ("(update only)").
package helplint

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Defects walks root and every command under it and returns one line per defect found, naming
// the command and the flag.
func Defects(root *cobra.Command) []string {
	var out []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			for _, d := range flagDefects(c, f) {
				out = append(out, fmt.Sprintf("%s --%s: %s", c.CommandPath(), f.Name, d))
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return out
}

var otherCommandRE = regexp.MustCompile(`\((add|update|show|list|delete) only\)`)

func flagDefects(c *cobra.Command, f *pflag.Flag) []string {
	var ds []string
	if strings.Contains(f.Usage, "`") {
		name, _ := pflag.UnquoteUsage(f)
		ds = append(ds, fmt.Sprintf("backquotes in the usage make %q the value placeholder", name))
	}
	fs := pflag.NewFlagSet("", pflag.ContinueOnError)
	fs.AddFlag(f)
	if line := fs.FlagUsages(); strings.Count(line, "(default") > 1 {
		ds = append(ds, "states its default twice: "+strings.TrimSpace(line))
	}
	if c.Name() == "update" && strings.Contains(f.Usage, "required") {
		ds = append(ds, `"required" on update, where every property keeps its value unless given`)
	}
	if otherCommandRE.MatchString(f.Usage) {
		ds = append(ds, "marked as belonging to another command: "+f.Usage)
	}
	return ds
}
