package main

import (
	"bytes"
	"testing"

	"github.com/ferryhq/ferry/internal/version"
)

func TestVersion(t *testing.T) {
	want := "ferry-node " + version.Read().String() + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		root := rootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		if err := root.Execute(); err != nil || out.String() != want {
			t.Errorf("%v: %v: got %q, want %q", args, err, out.String(), want)
		}
	}
}
