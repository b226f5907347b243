package cli

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
)

// TestEnrollTokenCommands: `ferry admin users enroll` prints the token's ID; --list (table and
// --json, all users or one) shows unused tokens; --cancel takes one back; misuse of the flags is
// refused before anything reaches the node.
func TestEnrollTokenCommands(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql is not installed")
	}
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), NoResource: true})
	t.Setenv(client.EnvConfigDir, env.Dirs.Config)
	t.Setenv(client.EnvRuntimeDir, env.Dirs.Runtime)

	if out, err := run(t, "admin", "users", "add", "alice"); err != nil {
		t.Fatalf("users add: %v: %s", err, out)
	}
	out, err := run(t, "admin", "users", "enroll", "alice")
	if err != nil || !strings.Contains(out, "ferry-enroll") || !strings.Contains(out, "--cancel ") {
		t.Fatalf("users enroll alice: %v: %s", err, out)
	}
	id := strings.Fields(out[strings.Index(out, "--cancel ")+len("--cancel "):])[0]
	id = strings.Trim(id, "`):")
	out, err = run(t, "admin", "users", "enroll", "--list", "--json")
	var list []api.PendingToken
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].ID != id || list[0].User != "alice" {
		t.Fatalf("enroll --list --json: %v: %s; want alice's token %s", err, out, id)
	}
	out, err = run(t, "admin", "users", "enroll", "--list", "alice")
	if err != nil || !strings.Contains(out, "ID") || !strings.Contains(out, id) {
		t.Fatalf("enroll --list alice: %v: %s", err, out)
	}
	out, err = run(t, "admin", "users", "enroll", "--cancel", id)
	if err != nil || !strings.Contains(out, "Cancelled enrollment token "+id+" of alice") {
		t.Fatalf("enroll --cancel: %v: %s", err, out)
	}
	out, err = run(t, "admin", "users", "enroll", "--cancel", id)
	if err == nil || !strings.Contains(err.Error(), "no unused token") {
		t.Fatalf("enroll --cancel twice: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "users", "enroll", "--list", "--json"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("enroll --list --json after cancel: %v: %q", err, out)
	}
	for _, args := range [][]string{
		{"--list", "--cancel", id},
		{"--cancel", id, "alice"},
		{"--json", "alice"},
		{"--list", "alice", "bob"},
		{},
	} {
		if out, err := run(t, append([]string{"admin", "users", "enroll"}, args...)...); err == nil {
			t.Errorf("enroll %v succeeded: %s", args, out)
		}
	}
}
