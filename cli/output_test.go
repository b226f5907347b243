package cli

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

const notExists = "resource \"no-such-resource\" does not exist (`ferry admin datasources list` lists them)"

// testOutput runs against TestCommandsAgainstDemo's installation (after its users, roles and
// activities exist): one wording for a missing resource, tables by default and --json everywhere,
// the health in list --json, time zones on timestamps, and a list that fits 120 columns.
func testOutput(t *testing.T) {
	// The same wording wherever a resource name matches nothing.
	for _, args := range [][]string{
		{"admin", "datasources", "show", "no-such-resource"},
		{"admin", "datasources", "update", "no-such-resource", "--port=5433"},
		{"admin", "datasources", "delete", "no-such-resource"},
		{"admin", "datasources", "healthcheck", "no-such-resource"},
		{"admin", "datasources", "diagnostics", "no-such-resource"},
	} {
		if _, err := run(t, args...); err == nil || err.Error() != notExists {
			t.Errorf("%v: %v; want %q", args, err, notExists)
		}
	}
	if _, err := run(t, "admin", "users", "show", "nobody"); err == nil || !strings.HasPrefix(err.Error(), `user "nobody" does not exist`) {
		t.Errorf("users show nobody: %v", err)
	}
	// --resource that names no resource says so instead of printing an empty table.
	for _, cmd := range []string{"connections", "queries"} {
		if _, err := run(t, "admin", "logs", cmd, "--resource", "nope"); err == nil || !strings.Contains(err.Error(), `--resource "nope": no records, and no resource of that name exists`) {
			t.Errorf("logs %s --resource nope: %v", cmd, err)
		}
	}

	// users show: a table by default, JSON with --json (as datasources show).
	out, err := run(t, "admin", "users", "show", "engineer")
	if err != nil || !regexp.MustCompile(`(?m)^name +engineer$`).MatchString(out) || !regexp.MustCompile(`(?m)^roles +developers$`).MatchString(out) {
		t.Errorf("users show: %v:\n%s", err, out)
	}
	var u struct{ Name string }
	if out, err = run(t, "admin", "users", "show", "engineer", "--json"); err != nil || json.Unmarshal([]byte(out), &u) != nil || u.Name != "engineer" {
		t.Errorf("users show --json: %v:\n%s", err, out)
	}
	// roles list and activities take --json.
	var roles []struct {
		Name   string
		Grants []string
	}
	if out, err = run(t, "admin", "roles", "list", "--json"); err != nil || json.Unmarshal([]byte(out), &roles) != nil || len(roles) == 0 {
		t.Errorf("roles list --json: %v:\n%s", err, out)
	}
	var acts []struct{ Action string }
	if out, err = run(t, "admin", "activities", "--json"); err != nil || json.Unmarshal([]byte(out), &acts) != nil || len(acts) == 0 {
		t.Errorf("activities --json: %v:\n%s", err, out)
	}
	// Timestamps in tables carry the zone.
	zoned := regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z+\-0-9]+\b`)
	if out, err = run(t, "admin", "activities"); err != nil || !zoned.MatchString(out) {
		t.Errorf("activities: no zone on the time: %v:\n%s", err, out)
	}
	if out, err = run(t, "admin", "users", "show", "engineer"); err != nil || !zoned.MatchString(out) {
		t.Errorf("users show: no zone on created: %v:\n%s", err, out)
	}

	// list --json carries the health the table shows.
	var listed []struct {
		Name   string
		Health *struct{ State string }
	}
	if out, err = run(t, "admin", "datasources", "list", "--json"); err != nil || json.Unmarshal([]byte(out), &listed) != nil || len(listed) == 0 {
		t.Fatalf("datasources list --json: %v:\n%s", err, out)
	}
	for _, r := range listed {
		if r.Health == nil || r.Health.State == "" {
			t.Errorf("datasources list --json: %s has no health:\n%s", r.Name, out)
		}
	}
	// The table fits 120 columns; --wide has every column.
	if out, err = run(t, "admin", "datasources", "list"); err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if n := utf8.RuneCountInString(l); n > 120 {
			t.Errorf("datasources list line of %d columns:\n%s", n, l)
		}
	}
	if out, err = run(t, "admin", "datasources", "list", "--wide"); err != nil || !strings.Contains(out, "IDENTITY") || !strings.Contains(out, "env=dev,team=data") {
		t.Errorf("datasources list --wide: %v:\n%s", err, out)
	}
}
