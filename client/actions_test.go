package client

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/api"
)

func TestJDBCURLAndPsqlCommand(t *testing.T) {
	tests := []struct {
		name     string
		r        ResourceStatus
		jdbc     string
		psqlLine string
	}{
		{"plain", ResourceStatus{Resource: api.Resource{Database: "production", Username: "mi_user"}, Address: "127.0.0.1:10001"},
			"jdbc:postgresql://127.0.0.1:10001/production?sslmode=disable&user=mi_user",
			"psql 'host=127.0.0.1 port=10001 dbname=production user=mi_user sslmode=disable'"},
		{"odd names", ResourceStatus{Resource: api.Resource{Database: "my db", Username: "a@b&c"}, Address: "127.1.2.3:20000"},
			"jdbc:postgresql://127.1.2.3:20000/my%20db?sslmode=disable&user=a%40b%26c",
			`psql 'host=127.1.2.3 port=20000 dbname='\''my db'\'' user=a@b&c sslmode=disable'`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := JDBCURL(tc.r); got != tc.jdbc {
				t.Errorf("JDBCURL = %q, want %q", got, tc.jdbc)
			}
			if got := PsqlCommand(tc.r); got != tc.psqlLine {
				t.Errorf("PsqlCommand = %q, want %q", got, tc.psqlLine)
			}
		})
	}
}

func TestAutostart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "autostart", "ferry.desktop")
	if AutostartEnabled(path) {
		t.Fatal("enabled before it was turned on")
	}
	if err := SetAutostart(path, "/opt/my apps/ferry", true); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "Exec=\"/opt/my apps/ferry\"\n") || !strings.HasPrefix(string(b), "[Desktop Entry]\n") {
		t.Errorf("entry:\n%s", b)
	}
	if !AutostartEnabled(path) {
		t.Error("not enabled after turning it on")
	}
	for range 2 { // turning it off twice is fine
		if err := SetAutostart(path, "", false); err != nil {
			t.Fatal(err)
		}
	}
	if AutostartEnabled(path) {
		t.Error("still enabled after turning it off")
	}
}

func TestPreferences(t *testing.T) {
	d := Dirs{Config: t.TempDir()}
	if p, err := LoadPreferences(d); err != nil || p.ConnectivityMode != "" {
		t.Fatalf("empty: %+v %v", p, err)
	}
	if err := SavePreferences(d, Preferences{ConnectivityMode: "virtual-networking"}); err != nil {
		t.Fatal(err)
	}
	if p, err := LoadPreferences(d); err != nil || p.ConnectivityMode != "virtual-networking" {
		t.Fatalf("saved: %+v %v", p, err)
	}
	if err := SavePreferences(d, Preferences{ConnectivityMode: "carrier-pigeon"}); err == nil || !strings.Contains(err.Error(), "unknown connectivity mode") {
		t.Fatalf("bad mode: %v", err)
	}
}
