//go:build cgo || !darwin

package ui

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
)

// TestWrapValue: values wrap only after separators, each line fits, and the lines joined are the
// value. The measure is one unit per rune.
func TestWrapValue(t *testing.T) {
	runes := func(s string) float32 { return float32(utf8.RuneCountInString(s)) }
	tests := []struct {
		value string
		width float32
		want  []string
	}{
		{"azure-pg-mi-prod.ferry.internal", 100, []string{"azure-pg-mi-prod.ferry.internal"}},
		{"azure-pg-mi-prod.ferry.internal", 0, []string{"azure-pg-mi-prod.ferry.internal"}},
		{"azure-pg-mi-prod.ferry.internal", 25, []string{"azure-pg-mi-prod.ferry.", "internal"}},
		{"azure-pg-mi-prod.ferry.internal", 12, []string{"azure-pg-mi-", "prod.ferry.", "internal"}},
		{"127.0.0.1:10001 (not listening)", 20, []string{"127.0.0.1:10001 (not ", "listening)"}},
		{"127.0.0.1:10001 (not listening)", 18, []string{"127.0.0.1:10001 ", "(not listening)"}},
		{"env=production,team=data", 16, []string{"env=production,", "team=data"}},
		{"mi_user@mypg", 8, []string{"mi_user@", "mypg"}},
		{"jdbc:postgresql://127.0.0.1:10001/production?sslmode=disable", 30, []string{"jdbc:postgresql://127.0.0.1:", "10001/production?", "sslmode=disable"}},
		{"abcdefghij", 4, []string{"abcd", "efgh", "ij"}}, // one piece wider than a line: the only break inside a piece
		{"", 10, []string{""}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/%v", tc.value, tc.width), func(t *testing.T) {
			got := wrapValue(tc.value, tc.width, runes)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			if strings.Join(got, "") != tc.value {
				t.Errorf("lines %q do not join to %q", got, tc.value)
			}
			for _, l := range got {
				if tc.width > 0 && runes(strings.TrimRight(l, " ")) > tc.width {
					t.Errorf("line %q is wider than %v", l, tc.width)
				}
			}
		})
	}
}

func TestCount(t *testing.T) {
	for n, want := range map[int]string{0: "0 resources", 1: "1 resource", 2: "2 resources", 12: "12 resources"} {
		if got := Count(n, "resource"); got != want {
			t.Errorf("Count(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestEmptyTableHint(t *testing.T) {
	one := []client.ResourceStatus{rs("a", false, "", nil)}
	tests := []struct {
		name   string
		st     client.Status
		err    error
		search string
		shown  int
		want   string
	}{
		{"no grants", client.Status{User: "newcomer", NodeReachable: true}, nil, "", 0, client.NoResourcesHint("newcomer")},
		{"no grants, searching", client.Status{User: "newcomer", NodeReachable: true}, nil, "prod", 0, client.NoResourcesHint("newcomer")},
		{"search finds nothing", client.Status{NodeReachable: true, Resources: one}, nil, " nope ", 0, `No resource matches "nope"`},
		{"rows shown", client.Status{NodeReachable: true, Resources: one}, nil, "", 1, ""},
		{"node unreachable", client.Status{User: "newcomer"}, nil, "", 0, ""},
		{"daemon down", client.Status{}, errors.New("no daemon"), "", 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := EmptyTableHint(tc.st, tc.err, tc.search, tc.shown)
			if (tc.want == "") != (got == "") || !strings.HasPrefix(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLoginErrorText(t *testing.T) {
	_, bad := client.Login(t.Context(), client.Dirs{Config: t.TempDir(), Runtime: t.TempDir()}, api.EnrollTokenPrefix+"garbage", "")
	if bad == nil {
		t.Fatal("a garbage token logged in")
	}
	got := LoginErrorText(bad)
	if want := "This is not a valid Ferry enrollment token: it is damaged or cut short; copy it again in full."; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if other := errors.New("log in: connection refused"); LoginErrorText(other) != other.Error() {
		t.Errorf("other errors change: %q", LoginErrorText(other))
	}
}
