package tagexpr

import (
	"strings"
	"testing"
)

func TestParseAndMatch(t *testing.T) {
	prodEU := map[string]string{"env": "prod", "region": "westeurope"}
	prodUS := map[string]string{"env": "prod", "region": "eastus"}
	dev := map[string]string{"env": "dev", "region": "westeurope", "team": "data eng"}
	none := map[string]string{}
	tests := []struct {
		expr      string
		canonical string
		match     []map[string]string
		nomatch   []map[string]string
	}{
		{"tag:env=prod", "tag:env=prod", []map[string]string{prodEU, prodUS}, []map[string]string{dev, none}},
		{"tag:env=prod,tag:region=westeurope", "tag:env=prod and tag:region=westeurope", []map[string]string{prodEU}, []map[string]string{prodUS, dev}},
		{"tag:env=prod or tag:region=eu", "tag:env=prod or tag:region=eu", []map[string]string{prodEU, prodUS}, []map[string]string{dev, none}},
		{"tag:env=prod AND NOT tag:region=eastus", "tag:env=prod and not tag:region=eastus", []map[string]string{prodEU}, []map[string]string{prodUS, dev}},
		{"not tag:env=prod", "not tag:env=prod", []map[string]string{dev, none}, []map[string]string{prodEU}},
		{"(tag:region=westeurope or tag:region=eastus) and tag:env=prod", "(tag:region=westeurope or tag:region=eastus) and tag:env=prod", []map[string]string{prodEU, prodUS}, []map[string]string{dev}},
		// and binds tighter than or
		{"tag:env=dev or tag:env=prod and tag:region=eastus", "tag:env=dev or tag:env=prod and tag:region=eastus", []map[string]string{dev, prodUS}, []map[string]string{prodEU}},
		{`tag:team="data eng"`, `tag:team="data eng"`, []map[string]string{dev}, []map[string]string{prodEU}},
		{`tag:team="a \"q\" \\ (x), y"`, `tag:team="a \"q\" \\ (x), y"`, []map[string]string{{"team": `a "q" \ (x), y`}}, []map[string]string{dev}},
		{`tag:team=""`, `tag:team=""`, []map[string]string{{"team": ""}}, []map[string]string{none}},
		{"not (tag:env=prod or tag:env=dev)", "not (tag:env=prod or tag:env=dev)", []map[string]string{none}, []map[string]string{dev, prodEU}},
		{"tag:k8s.io/zone=eu-1", "tag:k8s.io/zone=eu-1", []map[string]string{{"k8s.io/zone": "eu-1"}}, []map[string]string{none}},
		{"  tag:env=prod  ", "tag:env=prod", []map[string]string{prodEU}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			e, err := Parse(tt.expr)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := e.String(); got != tt.canonical {
				t.Errorf("String() = %q, want %q", got, tt.canonical)
			}
			for _, tags := range tt.match {
				if !e.Match(tags) {
					t.Errorf("does not match %v", tags)
				}
			}
			for _, tags := range tt.nomatch {
				if e.Match(tags) {
					t.Errorf("matches %v", tags)
				}
			}
		})
	}
}

func TestParseRefuses(t *testing.T) {
	tests := []struct {
		expr, want string
	}{
		{"", "empty"},
		{"   ", "empty"},
		{"env=prod", "terms start with tag:"},
		{"tag:env", "not a term"},
		{"prod", "not a term"},
		{"tag:=prod", "no key"},
		{"tag:env=", "no value"},
		{"tag:env=prod tag:region=eu", "expected and, or or the end"},
		{"tag:env=prod or", "expected a term"},
		{"and tag:env=prod", "expected a term"},
		{"tag:env=prod,", "expected a term"},
		{"(tag:env=prod", "expected ')'"},
		{"tag:env=prod)", "without its '('"},
		{"()", "expected a term"},
		{"tag:env=pr;od", `unexpected ';'`},
		{`tag:env="prod`, "not closed"},
		{`tag:env="a\nb"`, "unknown escape"},
		{"tag:env=\"a\x01b\"", "control character"},
		{"tag:env=prod && tag:a=b", `unexpected '&'`},
		{"tag:env=prod | tag:a=b", `unexpected '|'`},
		{"!tag:env=prod", `unexpected '!'`},
		{"tag:env=\xff", "UTF-8"},
		{strings.Repeat("(", 17) + "tag:a=b" + strings.Repeat(")", 17), "nested deeper"},
		{strings.Repeat("not ", 17) + "tag:a=b", "nested deeper"},
		{"tag:a=" + strings.Repeat("b", MaxLen), "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			e, err := Parse(tt.expr)
			if err == nil {
				t.Fatalf("Parse accepted it as %q", e.String())
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "egress filter: ") {
				t.Errorf("error %q, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestPositionsInErrors(t *testing.T) {
	_, err := Parse("tag:env=prod or tag:region")
	if err == nil || !strings.Contains(err.Error(), "position 17") {
		t.Errorf("error %v, want position 17", err)
	}
}

// FuzzParse: the parser never panics, and what it accepts renders to a form that parses to the
// same rendering and the same verdicts.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"tag:env=prod", "tag:a=b,tag:c=d", "not (tag:a=b or tag:c=\"x y\")", "((tag:a=b))", "tag:a=b or not tag:a=c and tag:d=e"} {
		f.Add(s)
	}
	tagSets := []map[string]string{{}, {"a": "b"}, {"a": "c", "d": "e"}, {"env": "prod"}, {"c": "x y", "a": "b"}}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := Parse(s)
		if err != nil {
			return
		}
		c := e.String()
		e2, err := Parse(c)
		if err != nil {
			t.Fatalf("Parse(%q) accepted, its rendering %q refused: %v", s, c, err)
		}
		if c2 := e2.String(); c2 != c {
			t.Fatalf("rendering not stable: %q -> %q", c, c2)
		}
		for _, tags := range tagSets {
			if e.Match(tags) != e2.Match(tags) {
				t.Fatalf("%q and its rendering %q disagree on %v", s, c, tags)
			}
		}
	})
}
