package store

import (
	"strings"
	"testing"
)

// TestRedact: every form of catalog URL a node accepts keeps its host and loses its passwords.
func TestRedact(t *testing.T) {
	const pw = "pw-SECRET"
	for _, tc := range []struct{ in, keep string }{
		{"postgres://ferry:" + pw + "@db.example.com:5432/ferry", "db.example.com"},
		{"postgresql://ferry:" + pw + "@a.example.com:5432,b.example.com:5432/ferry", "b.example.com"},
		{"postgres://ferry@db.example.com/ferry?password=" + pw + "&sslmode=verify-full", "db.example.com"},
		{"postgres://ferry@db.example.com/ferry?sslpassword=" + pw, "db.example.com"},
		{"postgres://ferry:p%40" + pw + "@h1:1,h2:2/ferry?password=" + pw, "h2"},
		{"host=db.example.com password=" + pw + " dbname=ferry", "db.example.com"},
		{"host=db.example.com password = '" + pw + " with \\' quote' dbname=ferry", "dbname=ferry"},
		{"host=db.example.com sslpassword=" + pw, "db.example.com"},
		{"password=" + pw + " host=db.example.com", "db.example.com"},
		{"postgress://ferry:" + pw + "@db.example.com/ferry", "db.example.com"},
		{"sqlite:/var/lib/ferry/ferry.db", "/var/lib/ferry/ferry.db"},
	} {
		got := Redact(tc.in)
		if strings.Contains(got, "SECRET") || !strings.Contains(got, tc.keep) {
			t.Errorf("Redact(%q) = %q; want it without the password and with %q", tc.in, got, tc.keep)
		}
	}
}
