package api

import (
	"strings"
	"testing"
)

// TestParseNodeTags: the --tags form, good and bad.
func TestParseNodeTags(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // formatted tags, or the error's text
		ok   bool
	}{
		{"", "", true},
		{"  ", "", true},
		{"region=westeurope,env=prod", "env=prod,region=westeurope", true},
		{" region=westeurope , env=prod ", "env=prod,region=westeurope", true},
		{"k8s.io/zone=eu-west-1a", "k8s.io/zone=eu-west-1a", true},
		{"ver=v1:2", "ver=v1:2", true},
		{"region", `"region" is not key=value`, false},
		{"region=", "region has no value", false},
		{"=prod", `"=prod" is not key=value`, false},
		{" env = prod ", "env=prod", true},
		{"a=b,", "item 2 is empty", false},
		{",a=b", "item 1 is empty", false},
		{"a=b,a=c", `key "a" is given twice`, false},
		{"a=b=c", `value "b=c" of a is invalid`, false},
		{"re gion=x", `key "re gion" is invalid`, false},
		{"env=pro d", `value "pro d" of env is invalid`, false},
		{"-env=prod", `key "-env" is invalid`, false},
		{"env=prod;rm", "invalid", false},
		{"env=\x1b[2J", "invalid", false},
		{strings.Repeat("k", 64) + "=v", "invalid", false},
		{"k=" + strings.Repeat("v", 64), "invalid", false},
	} {
		got, err := ParseNodeTags(tc.in)
		switch {
		case tc.ok && (err != nil || FormatNodeTags(got) != tc.want || got == nil):
			t.Errorf("ParseNodeTags(%q) = %v, %v; want %q", tc.in, got, err, tc.want)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ParseNodeTags(%q) = %v, %v; want an error naming %q", tc.in, got, err, tc.want)
		}
	}
	many := []string{}
	for i := range MaxNodeTags + 1 {
		many = append(many, "k"+strings.Repeat("x", i%5)+string(rune('a'+i%26))+string(rune('a'+i/26))+"=v")
	}
	if _, err := ParseNodeTags(strings.Join(many, ",")); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("too many tags: %v", err)
	}
}

// TestValidateNodeName: DNS labels pass; anything else, and ID look-alikes, are refused.
func TestValidateNodeName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"gw-westeurope-1", true}, {"a", true}, {"node7", true}, {strings.Repeat("a", 63), true},
		{"", false}, {"-gw", false}, {"gw-", false}, {"GW", false}, {"gw.example", false}, {"gw_1", false},
		{strings.Repeat("a", 64), false}, {"n-0123456789abcdef", false}, {"gw 1", false},
	} {
		if err := ValidateNodeName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateNodeName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
