package cli

import (
	"strings"
	"testing"

	"github.com/ferryhq/ferry/internal/helplint"
)

// TestHelpTexts walks every command's flags for the help-text mistakes helplint knows.
func TestHelpTexts(t *testing.T) {
	for _, d := range helplint.Defects(NewRoot(nil)) {
		t.Error(d)
	}
}

// TestUpdateHelpHasNoAddDefaults: update keeps every property not given, so its help shows no
// defaults (they are add's) and add does not offer update's --name.
func TestUpdateHelpHasNoAddDefaults(t *testing.T) {
	out, err := run(t, "admin", "datasources", "update", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"(default", "(required"} {
		if strings.Contains(out, bad) {
			t.Errorf("update --help shows %q:\n%s", bad, out)
		}
	}
	if !strings.Contains(out, "--name ") {
		t.Errorf("update --help lacks --name:\n%s", out)
	}
	out, err = run(t, "admin", "datasources", "add", "azurepostgresmi", "--help")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "--name ") || !strings.Contains(out, "(default 5432)") || !strings.Contains(out, "(required)") {
		t.Errorf("add --help:\n%s", out)
	}
	out, err = run(t, "daemon", "--help")
	if err != nil || !strings.Contains(out, "--verbose") || !strings.Contains(out, "--mode string") {
		t.Errorf("daemon --help: %v:\n%s", err, out)
	}
}
