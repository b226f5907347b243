package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
)

// TestLogsTablesEscapeControlCharacters: an enrolled user's SQL (and the server's errors it
// provokes) reach an administrator's terminal through `ferry admin logs queries` and `logs
// connections`; the tables print terminal escape sequences, C1 controls and bidirectional
// overrides escaped, so a user cannot clear, retitle or fake the administrator's screen.
func TestLogsTablesEscapeControlCharacters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), LoopbackIP: demo.RandomLoopbackIP()})
	t.Setenv(client.EnvConfigDir, env.Dirs.Config)
	t.Setenv(client.EnvRuntimeDir, env.Dirs.Runtime)

	conn, err := pgx.Connect(ctx, client.ConnString(env.Resource))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "select '"+hostile+"' as x"); err != nil {
		t.Fatalf("hostile query: %v", err)
	}
	conn.Close(ctx)

	out, err := run(t, "admin", "logs", "queries")
	if err != nil {
		t.Fatalf("logs queries: %v\n%s", err, out)
	}
	if !strings.Contains(out, `\x1b[2J`) {
		t.Fatalf("the query is not in the log, escaped:\n%q", out)
	}
	checkNoControls(t, "logs queries", out)

	// A connection's error and role@database as the node's log may hold them.
	var b strings.Builder
	cs := []api.Connection{{ID: 1, Start: time.Now(), User: "mallory", Resource: "pg", ClientAddr: "100.64.0.9:5000",
		Role: "mi_user" + hostile, Database: "app" + hostile, Outcome: "failed", Error: "server said: " + hostile}}
	if err := printConnections(&b, cs, false); err != nil {
		t.Fatal(err)
	}
	checkNoControls(t, "logs connections", b.String())
}

func checkNoControls(t *testing.T, what, out string) {
	t.Helper()
	for _, raw := range []string{"\x1b", "\x07", "\u009b", "\u202e", "\r"} {
		if strings.Contains(out, raw) {
			t.Errorf("%s prints %q raw:\n%q", what, raw, out)
		}
	}
}
