package cli

import (
	"strings"
	"testing"
)

// TestMistypedSubcommandFails: a mistyped subcommand at any level fails (so ferry exits non-zero)
// with "unknown command" and the nearest subcommands, as at the top level; a bare group prints help.
func TestMistypedSubcommandFails(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		suggest string // a subcommand the error must suggest, or ""
	}{
		{[]string{"stauts"}, "status"},
		{[]string{"admin", "datasource", "lst"}, "list"},
		{[]string{"admin", "datasources", "lst"}, "list"},
		{[]string{"admin", "lgos"}, "logs"},
		{[]string{"admin", "users", "shw"}, "show"},
		{[]string{"admin", "roles", "grnt", "a", "b"}, "grant"},
		{[]string{"admin", "logs", "qeries"}, "queries"},
		{[]string{"admin", "datasources", "add", "azurepostgres", "x"}, "azurepostgresmi"},
		{[]string{"admin", "settings", "zzzzzzzz"}, ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, err := run(t, tc.args...)
			if err == nil {
				t.Fatalf("succeeded (exit status 0):\n%s", out)
			}
			if !strings.Contains(err.Error(), "unknown command") {
				t.Fatalf("error %q does not say unknown command", err)
			}
			if tc.suggest != "" && (!strings.Contains(err.Error(), "Did you mean this?") || !strings.Contains(err.Error(), "\t"+tc.suggest)) {
				t.Fatalf("error %q does not suggest %s", err, tc.suggest)
			}
		})
	}
	for _, args := range [][]string{{"admin"}, {"admin", "datasources"}, {"admin", "users"}} {
		out, err := run(t, args...)
		if err != nil || !strings.Contains(out, "Available Commands:") {
			t.Errorf("%v without a subcommand: %v:\n%s", args, err, out)
		}
	}
}
