package cli

import (
	"strings"
	"testing"
)

// testHealthCommands runs against TestCommandsAgainstDemo's installation (one emulator per test
// binary: MSAL caches managed-identity tokens process-wide).
func testHealthCommands(t *testing.T) {
	out, err := run(t, "admin", "datasources", "healthcheck", "azure-pg-mi-prod")
	if err != nil || !strings.HasPrefix(out, "azure-pg-mi-prod: healthy (checked ") {
		t.Fatalf("healthcheck: %v:\n%s", err, out)
	}
	for _, step := range []string{"resolve", "tcp", "tls", "token", "login", "query"} {
		if !strings.Contains(out, "\n"+step+" ") || strings.Contains(out, "✗") {
			t.Errorf("healthcheck output lacks a passed %s step:\n%s", step, out)
		}
	}
	out, err = run(t, "admin", "datasources", "diagnostics", "azure-pg-mi-prod")
	if err != nil || !strings.HasPrefix(out, "azure-pg-mi-prod: healthy") || !strings.Contains(out, "SELECT 1 answered 1") {
		t.Fatalf("diagnostics: %v:\n%s", err, out)
	}
	out, err = run(t, "status")
	if err != nil {
		t.Fatal(err)
	}
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "azure-pg-mi-prod ") {
			row = l
		}
	}
	if f := strings.Fields(row); len(f) < 8 || f[len(f)-4] != "healthy" { // ... HEALTH MODE NODE TAGS
		t.Errorf("status row of azure-pg-mi-prod has no healthy HEALTH column: %q\n%s", row, out)
	}
	out, err = run(t, "admin", "datasources", "list")
	if err != nil || !strings.Contains(out, " HEALTH\n") {
		t.Fatalf("datasources list: %v:\n%s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "azure-pg-mi-prod ") && !strings.HasSuffix(l, " healthy") {
			t.Errorf("datasources list row: %q", l)
		}
	}
	if _, err := run(t, "admin", "datasources", "healthcheck", "no-such-resource"); err == nil || err.Error() != notExists {
		t.Errorf("healthcheck of an unknown resource: %v", err)
	}
}
