package demo_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
)

// TestEnvLinePastesIntoAShell runs the line ferry-demo prints for the CLI in sh and bash, as a person
// pasting it would, and checks that the shell then holds the demo's directories, whatever they contain.
func TestEnvLinePastesIntoAShell(t *testing.T) {
	tests := []struct{ name, config, runtime string }{
		{"plain", "/tmp/ferry-demo-123/client", "/tmp/ferry-demo-123/run"},
		{"spaces", "/tmp/my demos/ferry-demo-1/client", "/tmp/my demos/ferry-demo-1/run"},
		{"shell characters", `/tmp/it's $HOME/` + "`id`" + `/client`, `/tmp/a;b&c|d*"e"/run`},
	}
	for _, sh := range []string{"sh", "bash"} {
		if _, err := exec.LookPath(sh); err != nil {
			t.Logf("%s is not installed; skipping it", sh)
			continue
		}
		for _, tc := range tests {
			t.Run(sh+"/"+tc.name, func(t *testing.T) {
				e := &demo.Env{Dirs: client.Dirs{Config: tc.config, Runtime: tc.runtime}}
				line := e.EnvLine()
				if !strings.HasPrefix(line, "export ") || strings.Contains(line, "\n") {
					t.Fatalf("not one export command: %q", line)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				script := line + "\nsh -c 'printf \"%s\\n%s\\n\" \"$" + client.EnvConfigDir + "\" \"$" + client.EnvRuntimeDir + "\"'\n"
				cmd := exec.CommandContext(ctx, sh, "-s") // reads the line from stdin, as typed
				cmd.Stdin = strings.NewReader(script)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("%s rejected %q: %v\n%s", sh, line, err, out)
				}
				if want := tc.config + "\n" + tc.runtime + "\n"; string(out) != want {
					t.Errorf("after %q the CLI would see\n%q, want\n%q", line, out, want)
				}
			})
		}
	}
}
