package tagexpr

import (
	"strings"
	"testing"
)

func TestParseAndMatch(t *testing.T) {
	prodEU := map[string]string{"env": "prod", "region": "westeurope"}
	prodUS := map[string]string{"env": "prod", "region": "eastus"}
	dev := map[string]string{"env": "dev", "region": "westeurope", "team": "data-eng"}
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
		{`tag:team="data-eng"`, `tag:team=data-eng`, []map[string]string{dev}, []map[string]string{prodEU}},
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
		{`tag:env="a\"b"`, "never match"},
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
	for _, s := range []string{"tag:env=prod", "tag:a=b,tag:c=d", "not (tag:a=b or tag:c=\"x-y\")", "((tag:a=b))", "tag:a=b or not tag:a=c and tag:d=e", "tag:\u0435nv=\"x\u202e\"", "t\u0430g:a=b"} {
		f.Add(s)
	}
	tagSets := []map[string]string{{}, {"a": "b"}, {"a": "c", "d": "e"}, {"env": "prod"}, {"c": "x-y", "a": "b"}}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := Parse(s)
		if err != nil {
			for _, r := range err.Error() {
				if r < 0x20 || r > 0x7e {
					t.Fatalf("Parse(%q): error %q echoes %U raw", s, err, r)
				}
			}
			return
		}
		var terms func(n *node)
		terms = func(n *node) {
			if n.op == opTerm && (!validTagPart(n.key, "._/-") || !validTagPart(n.value, "._:/-")) {
				t.Fatalf("Parse(%q) accepted a term no node tag can have: %q=%q", s, n.key, n.value)
			}
			for i := range n.kids {
				terms(&n.kids[i])
			}
		}
		terms(&e.root)
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

// TestTermsAreNodeTags: a term names a tag a node can have (node tag syntax, api.ValidateNodeTags),
// or it is refused. A term no node can match is always a mistake, and under `not` it silently
// makes the filter admit every node: `not tag:еnv=dev` (a Cyrillic е) reads as "not the dev nodes"
// and lets the dev nodes carry the resource.
func TestTermsAreNodeTags(t *testing.T) {
	tests := []struct {
		expr, want string
	}{
		{"not tag:\u0435nv=dev", `tag key "\u0435nv"`},        // Cyrillic е
		{"tag:env=pr\u043ed", `value "pr\u043ed" of tag:env`}, // Cyrillic о
		{"tag:env=\uff50rod", `value "\uff50rod"`},            // fullwidth p
		{`tag:team="data eng"`, `value "data eng"`},           // node tag values have no spaces
		{`tag:env=""`, "empty value"},                         // node tags have no empty value
		{`not tag:env="prod "`, `value "prod "`},              // trailing space
		{"tag:env=\"prod\u202e\"", `value "prod\u202e"`},      // right-to-left override
		{"tag:env=\"pr\u200bod\"", `value "pr\u200bod"`},      // zero-width space
		{"tag:a@b=c", `tag key "a@b"`},                        // '@' is no tag key character
		{"tag:a:b=c", `tag key "a:b"`},                        // nor ':'
		{"tag:-env=prod", `tag key "-env"`},                   // starts with a dash
		{"tag:env=prod-", `value "prod-"`},                    // ends with a dash
		{"tag:" + strings.Repeat("k", 64) + "=v", "tag key"},  // longer than 63
		{"tag:k=" + strings.Repeat("v", 64), "value"},         // longer than 63
		{`tag:env="a=b"`, `value "a=b"`},                      // '=' in a value
		{`tag:env="\"prod\""`, `value "\"prod\""`},            // quotes in a value
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			e, err := Parse(tt.expr)
			if err == nil {
				t.Fatalf("Parse accepted it as %q", e.String())
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "never match") {
				t.Errorf("error %q, want one containing %q and saying it can never match", err, tt.want)
			}
		})
	}
	// What nodes can have still parses, quoted or not.
	for _, s := range []string{`tag:env="prod"`, "tag:k8s.io/zone=eu-1:a", "tag:A.b_c/d-E=x:Y.z_1/2-3", "tag:" + strings.Repeat("k", 63) + "=" + strings.Repeat("v", 63)} {
		if _, err := Parse(s); err != nil {
			t.Errorf("Parse(%q): %v", s, err)
		}
	}
}

// TestErrorsEchoNoHostileText: what a refusal echoes of the input (it reaches logs, HTTP errors and
// terminals) is printable ASCII: control characters, bidi overrides and confusable letters are
// escaped, never written raw.
func TestErrorsEchoNoHostileText(t *testing.T) {
	for _, s := range []string{
		"t\u0430g:env=prod",                    // Cyrillic а in "tag"
		"tag:env=prod \u0430nd tag:a=b",        // Cyrillic а in "and"
		"tag:env=prod\x1b[31m",                 // an escape sequence
		"tag:env=\"\x1b]0;title\x07\"",         // OSC in a quoted value
		"tag:env=prod\u202e or tag:a=b",        // bidi override after a term
		"\u202etag:env=prod",                   // bidi override first
		"tag:\u0435nv=prod",                    // Cyrillic е in a key
		"tag:env=\u0440rod",                    // Cyrillic р in a value
		"tag:\u0435nv",                         // a key without '='
		"tag:\u0435nv=",                        // a key without value
		"(tag:a=b \u00e9t tag:c=d)",            // a non-ASCII word
		"tag:a=b\r\nFAKE LOG LINE level=ERROR", // a forged log line
	} {
		_, err := Parse(s)
		if err == nil {
			t.Errorf("Parse(%q) accepted", s)
			continue
		}
		for _, r := range err.Error() {
			if r < 0x20 || r > 0x7e {
				t.Errorf("Parse(%q): error %q echoes %U raw", s, err, r)
				break
			}
		}
	}
}

// TestLongChains: `and` and `or` chains are flat (no recursion per term), so the longest filter
// parses and is evaluated without nesting; nesting through parentheses and `not` together is bounded.
func TestLongChains(t *testing.T) {
	for _, sep := range []string{" and ", ",", " or ", " AND not "} {
		s := "tag:a=b"
		for len(s)+len(sep)+len("tag:a=b") <= MaxLen {
			s += sep + "tag:a=b"
		}
		e, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(a %d-byte chain of %q): %v", len(s), sep, err)
		}
		if e.root.op == opTerm || len(e.root.kids) < 50 {
			t.Errorf("a chain of %q is not flat: %d kids", sep, len(e.root.kids))
		}
		_ = e.Match(map[string]string{"a": "b"})
	}
	if _, err := Parse(strings.Repeat("not (", 9) + "tag:a=b" + strings.Repeat(")", 9)); err == nil || !strings.Contains(err.Error(), "nested deeper") {
		t.Errorf("parentheses and nots 18 deep: %v, want nested deeper", err)
	}
}
