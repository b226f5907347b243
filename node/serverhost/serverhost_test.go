package serverhost

import (
	"errors"
	"strings"
	"testing"
)

func TestDefaultAllows(t *testing.T) {
	l := Default()
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"mypg.postgres.database.azure.com", true},
		{"MyPG.Postgres.Database.Azure.COM", true},
		{"mypg.postgres.database.azure.com.", true},
		{"a.b.postgres.database.azure.com", true},
		{"mypg.postgres.database.chinacloudapi.cn", true},
		{"mypg.postgres.database.usgovcloudapi.net", true},
		// The suffix itself, and names that only share its characters, not its labels.
		{"postgres.database.azure.com", false},
		{".postgres.database.azure.com", false},
		{"evilpostgres.database.azure.com", false},
		{"mypg.postgres.database.azure.com.attacker.example", false},
		{"mypg.postgres.database.azure.com.", true},
		{"mypg.postgres.database.azure.com..", false},
		{"mypg.postgres-database.azure.com", false},
		{"mypg.database.azure.com", false},
		{"mypg.mysql.database.azure.com", false},
		{"mypg.database.chinacloudapi.cn", false},
		{"mypg.database.usgovcloudapi.net", false},
		{"attacker.example", false},
		{"localhost", false},
		{"", false},
		{"my pg.postgres.database.azure.com", false},
		// IP literals are never matched by a wildcard.
		{"127.0.0.1", false},
		{"10.0.0.4", false},
		{"::1", false},
		{"::ffff:127.0.0.1", false},
	} {
		if got := l.Allows(tc.host); got != tc.want {
			t.Errorf("Default().Allows(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

func TestListedEntries(t *testing.T) {
	l, err := Parse([]string{"MyPG.Internal.Example.", "10.0.0.4", "fd00::4", "*.corp.example"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"mypg.internal.example", true},
		{"MYPG.INTERNAL.EXAMPLE.", true},
		{"other.internal.example", false},
		{"x.mypg.internal.example", false},
		{"10.0.0.4", true},
		{"::ffff:10.0.0.4", true},
		{"10.0.0.5", false},
		{"fd00::4", true},
		{"FD00:0::4", true},
		{"fd00::4%eth0", false},
		{"db.corp.example", true},
		{"corp.example", false},
		{"mypg.postgres.database.azure.com", false}, // an explicit list replaces the defaults
	} {
		if got := l.Allows(tc.host); got != tc.want {
			t.Errorf("Allows(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
	var nilList *List
	if nilList.Allows("mypg.postgres.database.azure.com") {
		t.Error("a nil list allows a host")
	}
}

func TestParseRefuses(t *testing.T) {
	for _, bad := range []string{"*", "*.", "*.com", "**.example.com", "*.*.example.com", "a.*.example.com", "", "my host", "fe80::1%eth0", "10.0.0.0/8", "https://x.example"} {
		if _, err := Parse([]string{bad}); err == nil || !strings.Contains(err.Error(), ConfigKey) {
			t.Errorf("Parse(%q) = %v, want an error naming %s", bad, err, ConfigKey)
		}
	}
}

func TestCheckNamesTheConfigKey(t *testing.T) {
	err := Default().Check("attacker.example")
	var na *NotAllowedError
	if !errors.As(err, &na) || !strings.Contains(err.Error(), ConfigKey) || !strings.Contains(err.Error(), "attacker.example") {
		t.Fatalf("Check = %v", err)
	}
	if err := Default().Check("127.0.0.1"); err == nil || !strings.Contains(err.Error(), "IP address") {
		t.Fatalf("Check(IP) = %v", err)
	}
	if err := Default().Check("mypg.postgres.database.azure.com"); err != nil {
		t.Fatal(err)
	}
}
