// Package tagexpr is the language of egress filters: which nodes, by their tags, may open
// connections to a resource's server.
//
// An expression is made of terms `tag:KEY=VALUE` (true when the node has the tag KEY with exactly
// VALUE), combined with `and` (also written `,`), `or` and `not`, and grouped with parentheses.
// Keywords are case-insensitive; `not` binds tighter than `and`, which binds tighter than `or`:
//
//	tag:env=prod
//	tag:env=prod, tag:region=westeurope          (both)
//	tag:env=prod and not tag:region=eastus
//	(tag:region=westeurope or tag:region=northeurope) and tag:env=prod
//	tag:env="prod"                               (a value may be quoted; it means the same)
//
// Anything else is refused with the position of what was not understood: a bare word, a term
// without `=`, a keyword where a term belongs, unbalanced parentheses. A term names a tag a node can
// have (api.ValidateNodeTags): a key of 1-63 ASCII letters, digits and `. _ / -`, a value of 1-63
// ASCII letters, digits and `. _ : / -`, each starting and ending with a letter or digit. A term no
// node can have is refused, not left to match nothing: under `not` it would silently admit every
// node (`not tag:еnv=dev` with a Cyrillic е reads as "not the dev nodes"). What an error echoes of
// the input is quoted in printable ASCII (strconv.QuoteToASCII), as it reaches logs and terminals.
package tagexpr

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits keep a hostile or mistaken expression from costing the parser (and every admission that
// evaluates it) more than a moment.
const (
	MaxLen   = 1024 // bytes
	MaxDepth = 16   // nested parentheses and nots
)

// Expr is a parsed expression.
type Expr struct {
	root node
}

type op int

const (
	opTerm op = iota
	opNot
	opAnd
	opOr
)

type node struct {
	op         op
	key, value string // opTerm
	kids       []node // opNot: one; opAnd, opOr: two or more
}

// Parse parses s. An empty expression is an error: a resource without a filter has none to parse.
func Parse(s string) (*Expr, error) {
	if len(s) > MaxLen {
		return nil, fmt.Errorf("egress filter: longer than %d bytes", MaxLen)
	}
	if !utf8.ValidString(s) {
		return nil, fmt.Errorf("egress filter: not valid UTF-8")
	}
	toks, err := lex(s)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return nil, fmt.Errorf("egress filter: empty; write terms like tag:env=prod")
	}
	p := &parser{toks: toks, src: s}
	root, err := p.or(0)
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tokEOF {
		if t.kind == tokRParen {
			return nil, p.errAt(t, "a ')' without its '('")
		}
		return nil, p.errAt(t, "expected and, or or the end after a term, found %s", t.describe())
	}
	return &Expr{root: root}, nil
}

// Match reports whether a node with these tags satisfies the expression.
func (e *Expr) Match(tags map[string]string) bool { return e.root.match(tags) }

func (n *node) match(tags map[string]string) bool {
	switch n.op {
	case opTerm:
		v, ok := tags[n.key]
		return ok && v == n.value
	case opNot:
		return !n.kids[0].match(tags)
	case opAnd:
		for i := range n.kids {
			if !n.kids[i].match(tags) {
				return false
			}
		}
		return true
	default: // opOr
		for i := range n.kids {
			if n.kids[i].match(tags) {
				return true
			}
		}
		return false
	}
}

// String renders the expression canonically: lower-case keywords, `and` for commas, parentheses
// only where precedence needs them, values quoted only when they must be. Parse(e.String()) gives
// an expression equal to e.
func (e *Expr) String() string {
	var b strings.Builder
	e.root.write(&b, opOr)
	return b.String()
}

func (n *node) write(b *strings.Builder, parent op) {
	switch n.op {
	case opTerm:
		b.WriteString("tag:")
		b.WriteString(n.key)
		b.WriteByte('=')
		if n.value != "" && plain(n.value) {
			b.WriteString(n.value)
		} else {
			b.WriteString(quote(n.value))
		}
	case opNot:
		b.WriteString("not ")
		n.kids[0].write(b, opNot)
	default:
		word := " and "
		if n.op == opOr {
			word = " or "
		}
		// A looser operator inside a tighter one needs parentheses (or inside and, and or or inside not).
		paren := n.op > parent || parent == opNot
		if paren {
			b.WriteByte('(')
		}
		for i := range n.kids {
			if i > 0 {
				b.WriteString(word)
			}
			n.kids[i].write(b, n.op)
		}
		if paren {
			b.WriteByte(')')
		}
	}
}

func quote(v string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range v {
		if r == '"' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

// plain reports whether a key or an unquoted value may be written as is.
func plain(s string) bool {
	for _, r := range s {
		if !plainRune(r) {
			return false
		}
	}
	return true
}

func plainRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("_-./:@", r)
}

type tokKind int

const (
	tokEOF tokKind = iota
	tokTerm
	tokAnd
	tokOr
	tokNot
	tokLParen
	tokRParen
)

type token struct {
	kind       tokKind
	pos        int    // byte offset in the source
	text       string // as written
	key, value string // tokTerm
}

func (t token) describe() string {
	switch t.kind {
	case tokEOF:
		return "the end"
	case tokTerm:
		return strconv.QuoteToASCII(t.text)
	default:
		return "'" + t.text + "'" // a keyword or a parenthesis: ASCII
	}
}

func lex(s string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case unicode.IsSpace(r):
			i += size
		case r == '(':
			toks = append(toks, token{kind: tokLParen, pos: i, text: "("})
			i++
		case r == ')':
			toks = append(toks, token{kind: tokRParen, pos: i, text: ")"})
			i++
		case r == ',':
			toks = append(toks, token{kind: tokAnd, pos: i, text: ","})
			i++
		default:
			t, n, err := lexWord(s, i)
			if err != nil {
				return nil, err
			}
			toks = append(toks, t)
			i = n
		}
	}
	return toks, nil
}

// lexWord reads a keyword or a term starting at i and returns it with the offset after it.
func lexWord(s string, i int) (token, int, error) {
	start := i
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if !plainRune(r) {
			break
		}
		i += size
	}
	word := s[start:i]
	if word == "" {
		r, _ := utf8.DecodeRuneInString(s[start:])
		return token{}, 0, fmt.Errorf("egress filter: unexpected %+q at position %d", r, start+1)
	}
	if i >= len(s) || s[i] != '=' {
		switch strings.ToLower(word) {
		case "and":
			return token{kind: tokAnd, pos: start, text: word}, i, nil
		case "or":
			return token{kind: tokOr, pos: start, text: word}, i, nil
		case "not":
			return token{kind: tokNot, pos: start, text: word}, i, nil
		}
		return token{}, 0, fmt.Errorf("egress filter: %+q at position %d is not a term: write tag:key=value", word, start+1)
	}
	key, ok := strings.CutPrefix(word, "tag:")
	if !ok {
		return token{}, 0, fmt.Errorf("egress filter: %+q at position %d is not a term: terms start with tag: (tag:key=value)", word, start+1)
	}
	if key == "" {
		return token{}, 0, fmt.Errorf("egress filter: the term at position %d has no key: write tag:key=value", start+1)
	}
	if !validTagPart(key, "._/-") {
		return token{}, 0, fmt.Errorf("egress filter: tag key %+q at position %d can never match a node: node tag keys are 1-63 ASCII letters, digits and . _ / -, starting and ending with a letter or digit", key, start+1)
	}
	i++ // '='
	if i < len(s) && s[i] == '"' {
		v, n, err := lexQuoted(s, i)
		if err != nil {
			return token{}, 0, err
		}
		if err := checkValue(key, v, start); err != nil {
			return token{}, 0, err
		}
		return token{kind: tokTerm, pos: start, text: s[start:n], key: key, value: v}, n, nil
	}
	vstart := i
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if !plainRune(r) {
			break
		}
		i += size
	}
	if i < len(s) {
		r, _ := utf8.DecodeRuneInString(s[i:])
		if !unicode.IsSpace(r) && r != '(' && r != ')' && r != ',' {
			return token{}, 0, fmt.Errorf("egress filter: unexpected %+q at position %d in the value of tag:%s (node tag values are ASCII letters, digits and . _ : / -)", r, i+1, key)
		}
	}
	if i == vstart {
		return token{}, 0, fmt.Errorf("egress filter: tag:%s= at position %d has no value: write tag:%s=VALUE", key, start+1, key)
	}
	if err := checkValue(key, s[vstart:i], start); err != nil {
		return token{}, 0, err
	}
	return token{kind: tokTerm, pos: start, text: s[start:i], key: key, value: s[vstart:i]}, i, nil
}

// checkValue refuses a value no node tag can have (the term at start could never match).
func checkValue(key, v string, start int) error {
	if v == "" {
		return fmt.Errorf("egress filter: tag:%s at position %d has an empty value, and can never match a node: node tags have none", key, start+1)
	}
	if !validTagPart(v, "._:/-") {
		return fmt.Errorf("egress filter: value %+q of tag:%s at position %d can never match a node: node tag values are 1-63 ASCII letters, digits and . _ : / -, starting and ending with a letter or digit", v, key, start+1)
	}
	return nil
}

// validTagPart reports whether s is a node tag key (extra "._/-") or value (extra "._:/-"): 1-63
// ASCII letters and digits, and the extra characters inside (api.ValidateNodeTags).
func validTagPart(s, extra string) bool {
	if len(s) < 1 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || i == len(s)-1 || strings.IndexByte(extra, c) < 0) {
			return false
		}
	}
	return true
}

func lexQuoted(s string, i int) (string, int, error) {
	start := i
	i++ // opening quote
	var b strings.Builder
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == '"':
			return b.String(), i + 1, nil
		case r == '\\':
			if i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
				b.WriteByte(s[i+1])
				i += 2
				continue
			}
			return "", 0, fmt.Errorf("egress filter: unknown escape at position %d (only \\\" and \\\\)", i+1)
		case unicode.IsControl(r):
			return "", 0, fmt.Errorf("egress filter: control character at position %d", i+1)
		}
		b.WriteRune(r)
		i += size
	}
	return "", 0, fmt.Errorf("egress filter: the quote at position %d is not closed", start+1)
}

type parser struct {
	toks []token
	i    int
	src  string
}

func (p *parser) peek() token {
	if p.i < len(p.toks) {
		return p.toks[p.i]
	}
	return token{kind: tokEOF, pos: len(p.src)}
}

func (p *parser) next() token {
	t := p.peek()
	if p.i < len(p.toks) {
		p.i++
	}
	return t
}

func (p *parser) errAt(t token, format string, args ...any) error {
	return fmt.Errorf("egress filter: %s at position %d", fmt.Sprintf(format, args...), t.pos+1)
}

func (p *parser) or(depth int) (node, error) {
	first, err := p.and(depth)
	if err != nil {
		return node{}, err
	}
	kids := []node{first}
	for p.peek().kind == tokOr {
		p.next()
		n, err := p.and(depth)
		if err != nil {
			return node{}, err
		}
		kids = append(kids, n)
	}
	if len(kids) == 1 {
		return first, nil
	}
	return node{op: opOr, kids: kids}, nil
}

func (p *parser) and(depth int) (node, error) {
	first, err := p.unary(depth)
	if err != nil {
		return node{}, err
	}
	kids := []node{first}
	for p.peek().kind == tokAnd {
		p.next()
		n, err := p.unary(depth)
		if err != nil {
			return node{}, err
		}
		kids = append(kids, n)
	}
	if len(kids) == 1 {
		return first, nil
	}
	return node{op: opAnd, kids: kids}, nil
}

func (p *parser) unary(depth int) (node, error) {
	t := p.next()
	switch t.kind {
	case tokTerm:
		return node{op: opTerm, key: t.key, value: t.value}, nil
	case tokNot:
		if depth >= MaxDepth {
			return node{}, p.errAt(t, "nested deeper than %d", MaxDepth)
		}
		n, err := p.unary(depth + 1)
		if err != nil {
			return node{}, err
		}
		return node{op: opNot, kids: []node{n}}, nil
	case tokLParen:
		if depth >= MaxDepth {
			return node{}, p.errAt(t, "nested deeper than %d", MaxDepth)
		}
		n, err := p.or(depth + 1)
		if err != nil {
			return node{}, err
		}
		if c := p.next(); c.kind != tokRParen {
			return node{}, p.errAt(c, "expected ')' to close the '(' at position %d, found %s", t.pos+1, c.describe())
		}
		return n, nil
	default:
		return node{}, p.errAt(t, "expected a term (tag:key=value), 'not' or '(', found %s", t.describe())
	}
}
