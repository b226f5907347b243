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

// TestAllowsJudgesTheExactName: Allows judges the name the node would dial and put in the TLS
// ServerName, not a cleaned-up copy of it: white space around it, control characters, NULs and
// non-ASCII letters that Unicode lower-cases to ASCII (the Kelvin sign K to k) are refused, so the
// last check before a login cannot pass a name the catalog's validation would refuse.
func TestAllowsJudgesTheExactName(t *testing.T) {
	l, err := Parse(append([]string{"*.bank.example"}, Defaults...))
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{
		" mypg.postgres.database.azure.com",
		"mypg.postgres.database.azure.com ",
		"mypg.postgres.database.azure.com\n",
		"\tmypg.postgres.database.azure.com",
		"mypg.postgres.database.azure.com\r\n",
		"mypg.postgres.database.azure.com\x00",
		"mypg.postgres.database.azure.com\x00.attacker.example",
		"mypg.postgres.database.azure.com. ",
		"x.ban\u212a.example",                      // KELVIN SIGN lower-cases to ASCII k
		"mypg.postgres.database.azure.co\u1e3f",    // a look-alike m
		"mypg.postgres.dat\u0430base.azure.com",    // Cyrillic a
		"mypg.postgres.database.azure.com\u3002",   // ideographic full stop
		"mypg\uff0epostgres.database.azure.com",    // fullwidth full stop
		"mypg.postgres.database.azure.com:5432",    // host:port
		"[fe80::1%25eth0]",                         // bracketed IPv6 with a zone
		"fe80::1%mypg.postgres.database.azure.com", // a zone that looks like an allowed name
		strings.Repeat("a", 64) + ".bank.example",  // label over 63
		strings.Repeat("a.", 125) + "bank.example", // name over 253
	} {
		if l.Allows(host) {
			t.Errorf("Allows(%q) = true, want false", host)
		}
	}
	for _, host := range []string{"x.BANK.example", "xn--mypg-9ua.postgres.database.azure.com", "X.Bank.Example."} {
		if !l.Allows(host) {
			t.Errorf("Allows(%q) = false, want true", host)
		}
	}
}
