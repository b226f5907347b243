package cli

import (
	"testing"

	"github.com/ferryhq/ferry/internal/version"
)

func TestVersion(t *testing.T) {
	want := "ferry " + version.Read().String() + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, err := run(t, args...)
		if err != nil || out != want {
			t.Errorf("%v: %v: got %q, want %q", args, err, out, want)
		}
	}
}
