package pgproxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ferryhq/ferry/node/audit"
)

// The tracker pairs the client's requests with the server's responses to make
// one audit record per executed statement. The relay hands it what it reads;
// it never changes a relayed byte.
//
// PostgreSQL answers requests in order (protocol §55.2), so the client
// messages that get a response are kept in a FIFO: Query, Parse, Bind,
// Describe, Execute, Close, Sync and FunctionCall. Server messages are
// matched to the head:
//
//   - ParseComplete, BindComplete, CloseComplete, NoData, and RowDescription
//     after a Describe pop their request;
//   - CommandComplete, EmptyQueryResponse: one record per statement of a
//     Query (the Query stays until ReadyForQuery), or the end of an Execute;
//   - PortalSuspended: the Execute's rows so far are kept and the record is
//     made when a later Execute of the same portal completes (or the portal
//     is closed), so a cursor fetched in batches gives one record;
//   - ErrorResponse: a record with the SQLSTATE for the Query statement,
//     Parse, Bind or Execute at the head; in the extended protocol the server
//     then skips to Sync, and so does the tracker;
//   - ReadyForQuery pops through the Query, Sync or FunctionCall it ends.
//
// Messages the tracker cannot match are ignored; it never stops the relay.

// Limits of what the tracker keeps of a message, in bytes.
const (
	// DefaultMaxAuditSQL is the default of Config.MaxAuditSQL.
	DefaultMaxAuditSQL = 64 << 10
	bindKeep           = 64 << 10 // of a Bind message, for its parameters
	smallKeep          = 4 << 10  // of Execute, Describe, Close, FunctionCall
	paramShow          = 256      // of one parameter's value
	nameSlack          = 1 << 10  // room for a statement name before a Parse's SQL
)

// sqlCapture is the SQL text of a Query or Parse, cut to the audit limit.
type sqlCapture struct {
	text   string
	length int64  // original length in bytes when cut, else 0
	sha256 string // hex SHA-256 of the whole text when cut, else ""
}

// pending is a client request waiting for its response.
type pending struct {
	kind  byte // 'Q', 'P', 'B', 'D', 'E', 'C', 'S', 'F'
	at    time.Time
	ready chan struct{} // closed by the client side once the fields below are set

	sql     sqlCapture
	stmts   []string // Query: the statements of sql.text, when it could be split
	stmt    string   // Parse, Bind: statement name
	portal  string   // Bind, Execute, Close 'P', Describe 'P'
	params  string   // Bind
	closeOf byte     // Close, Describe: 'S' or 'P'

	results int   // Query: statement results seen
	rows    int64 // DataRows seen since the last result
}

// portalState is what an Execute needs of its portal.
type portalState struct {
	sql    sqlCapture
	stmt   string
	params string
	// A PortalSuspended Execute in progress: when it started and the rows so far.
	suspended bool
	start     time.Time
	rows      int64
}

// tracker builds query records for one session.
type tracker struct {
	record func(audit.Query) // called from the server side
	limit  int               // Config.MaxAuditSQL
	redact bool              // Target.RedactParams

	mu      sync.Mutex
	queue   []*pending
	stmts   map[string]sqlCapture   // client side only
	portals map[string]*portalState // server side only: made at BindComplete
	skip    bool                    // after an extended-protocol ErrorResponse, until ReadyForQuery
	last    time.Time               // when the previous response completed
	fatal   serverError             // the last FATAL or PANIC ErrorResponse from the server
}

type serverError struct{ severity, code, message string }

func newTracker(limit int, redact bool, record func(audit.Query)) *tracker {
	if limit <= 0 {
		limit = DefaultMaxAuditSQL
	}
	return &tracker{record: record, limit: limit, redact: redact, stmts: map[string]sqlCapture{}, portals: map[string]*portalState{}}
}

// tracked reports whether client message typ gets a response the tracker follows.
func tracked(typ byte) bool {
	switch typ {
	case 'Q', 'P', 'B', 'D', 'E', 'C', 'S', 'F':
		return true
	}
	return false
}

// keepOf is how many leading body bytes of a tracked message the client side keeps.
func (tr *tracker) keepOf(typ byte, body int64) int64 {
	switch typ {
	case 'Q', 'P':
		return min(body, int64(tr.limit)+nameSlack)
	case 'B':
		return min(body, bindKeep)
	default:
		return min(body, smallKeep)
	}
}

// push queues a request as its header is read, before any of it reaches the
// server, so its response can never arrive first.
func (tr *tracker) push(typ byte) *pending {
	p := &pending{kind: typ, at: time.Now(), ready: make(chan struct{})}
	tr.mu.Lock()
	tr.queue = append(tr.queue, p)
	tr.mu.Unlock()
	return p
}

// sqlTail hashes the rest of an SQL text longer than the audit limit as it
// streams past, up to its terminating NUL.
type sqlTail struct {
	h    hash.Hash
	n    int64
	done bool
}

func newSQLTail(prefix []byte) *sqlTail {
	t := &sqlTail{h: sha256.New()}
	t.h.Write(prefix)
	t.n = int64(len(prefix))
	return t
}

func (t *sqlTail) Write(b []byte) (int, error) {
	if t.done {
		return len(b), nil
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		t.h.Write(b[:i])
		t.n += int64(i)
		t.done = true
		return len(b), nil
	}
	t.h.Write(b)
	t.n += int64(len(b))
	return len(b), nil
}

// sqlStart is where the SQL text begins in a kept Query or Parse body, or -1.
func sqlStart(typ byte, kept []byte) int {
	if typ == 'Q' {
		return 0
	}
	i := bytes.IndexByte(kept, 0)
	if i < 0 {
		return -1
	}
	return i + 1
}

// tailFor returns the hasher that must see the rest of a Query or Parse body
// whose SQL text does not end within kept, or nil.
func tailFor(typ byte, kept []byte) *sqlTail {
	if typ != 'Q' && typ != 'P' {
		return nil
	}
	s := sqlStart(typ, kept)
	if s < 0 || bytes.IndexByte(kept[s:], 0) >= 0 {
		return nil
	}
	return newSQLTail(kept[s:])
}

// capture makes the logged form of an SQL text: whole when it fits the limit,
// else cut at a UTF-8 boundary with its length and SHA-256.
func (tr *tracker) capture(sql []byte, tail *sqlTail) sqlCapture {
	if tail == nil && len(sql) <= tr.limit {
		return sqlCapture{text: validUTF8(sql)}
	}
	var c sqlCapture
	if tail != nil {
		c.length = tail.n
		c.sha256 = hex.EncodeToString(tail.h.Sum(nil))
	} else {
		c.length = int64(len(sql))
		sum := sha256.Sum256(sql)
		c.sha256 = hex.EncodeToString(sum[:])
	}
	cut := min(len(sql), tr.limit)
	for cut > 0 && cut < len(sql) && !utf8.RuneStart(sql[cut]) {
		cut--
	}
	c.text = validUTF8(sql[:cut])
	return c
}

func validUTF8(b []byte) string {
	s := string(b)
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return s
}

// cstr splits a NUL-terminated string off b.
func cstr(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// fill sets a request's fields from its kept body (total bytes long) and
// releases it to the server side. Malformed bodies leave fields empty: the
// server will answer them with an ErrorResponse.
func (tr *tracker) fill(p *pending, kept []byte, total int64, tail *sqlTail) {
	defer close(p.ready)
	switch p.kind {
	case 'Q':
		sql := kept
		if i := bytes.IndexByte(sql, 0); i >= 0 {
			sql = sql[:i]
		}
		p.sql = tr.capture(sql, tail)
		if p.sql.length == 0 {
			p.stmts = splitStatements(p.sql.text)
		}
	case 'P':
		name, rest, ok := cstr(kept)
		if !ok {
			return
		}
		sql := rest
		if i := bytes.IndexByte(sql, 0); i >= 0 {
			sql = sql[:i]
		}
		p.stmt = name
		p.sql = tr.capture(sql, tail)
		tr.mu.Lock()
		tr.stmts[name] = p.sql
		tr.mu.Unlock()
	case 'B':
		portal, rest, ok := cstr(kept)
		if !ok {
			return
		}
		stmt, rest, ok := cstr(rest)
		if !ok {
			return
		}
		p.portal, p.stmt = portal, stmt
		if tr.redact {
			p.params = redactedParams(rest)
		} else {
			p.params = formatParams(rest, int64(len(kept)) < total)
		}
		tr.mu.Lock()
		p.sql = tr.stmts[stmt]
		tr.mu.Unlock()
	case 'E':
		p.portal, _, _ = cstr(kept)
	case 'D', 'C':
		if len(kept) > 0 {
			p.closeOf = kept[0]
			name, _, _ := cstr(kept[1:])
			p.portal, p.stmt = name, name
			if p.kind == 'C' && p.closeOf == 'S' {
				tr.mu.Lock()
				delete(tr.stmts, name)
				tr.mu.Unlock()
			}
		}
	case 'F':
		if len(kept) >= 4 {
			p.sql = sqlCapture{text: fmt.Sprintf("function call: OID %d", binary.BigEndian.Uint32(kept))}
		}
	}
}

// redactedParams says how many parameters a Bind had, without their values.
func redactedParams(b []byte) string {
	if len(b) < 2 {
		return ""
	}
	nf := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < 2*nf+2 {
		return ""
	}
	n := binary.BigEndian.Uint16(b[2*nf:])
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("[redacted: %d parameters]", n)
}

// formatParams renders the parameters of a Bind body (after the portal and
// statement names) as `$1='text' $2=NULL $3='\x00ff'`: text-format values
// quoted, binary ones as hex, each cut to paramShow bytes with its length.
// cut says the body was not kept whole.
func formatParams(b []byte, cut bool) string {
	if len(b) < 2 {
		return ""
	}
	nf := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < 2*nf+2 {
		return ""
	}
	formats := make([]uint16, nf)
	for i := range nf {
		formats[i] = binary.BigEndian.Uint16(b[2*i:])
	}
	b = b[2*nf:]
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	var sb strings.Builder
	for i := range n {
		if i > 0 {
			sb.WriteByte(' ')
		}
		fmt.Fprintf(&sb, "$%d=", i+1)
		if len(b) < 4 {
			sb.WriteString("…")
			if !cut {
				sb.WriteString("[malformed]")
			}
			break
		}
		l := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if l < 0 {
			sb.WriteString("NULL")
			continue
		}
		format := uint16(0)
		switch {
		case nf == 1:
			format = formats[0]
		case i < nf:
			format = formats[i]
		}
		have := min(int(l), len(b))
		show := b[:min(have, paramShow)]
		if format == 1 {
			sb.WriteString(`'\x` + hex.EncodeToString(show) + `'`)
		} else {
			sb.WriteString("'" + strings.ReplaceAll(validUTF8(show), "'", "''") + "'")
		}
		if int(l) > len(show) {
			fmt.Fprintf(&sb, "…(%d bytes)", l)
		}
		if have < int(l) {
			break
		}
		b = b[l:]
	}
	return sb.String()
}

// head returns the oldest request, waiting until the client side has filled it.
// Called with tr.mu held; releases it while waiting.
func (tr *tracker) head() *pending {
	if len(tr.queue) == 0 {
		return nil
	}
	p := tr.queue[0]
	select {
	case <-p.ready:
	default:
		tr.mu.Unlock()
		<-p.ready
		tr.mu.Lock()
	}
	return p
}

func (tr *tracker) pop() {
	if len(tr.queue) > 0 {
		tr.queue[0] = nil
		tr.queue = tr.queue[1:]
	}
}

// server takes one server message: its type and (for CommandComplete,
// ErrorResponse and ReadyForQuery) its kept body.
func (tr *tracker) server(typ byte, body []byte) {
	if typ == 'D' {
		tr.mu.Lock()
		if len(tr.queue) > 0 {
			tr.queue[0].rows++
		}
		tr.mu.Unlock()
		return
	}
	switch typ {
	case '1', '2', '3', 'n', 'T', 'C', 'I', 's', 'E', 'V', 'Z':
	default:
		return // notices, notifications, ParameterStatus, COPY, row data, descriptions
	}
	now := time.Now()
	tr.mu.Lock()
	var out []audit.Query
	defer func() {
		tr.mu.Unlock()
		for _, q := range out {
			tr.record(q)
		}
	}()
	if typ == 'E' {
		e := parseError(body)
		if e.severity == "FATAL" || e.severity == "PANIC" {
			tr.fatal = e
		}
		p := tr.head()
		if p == nil || tr.skip {
			return
		}
		switch p.kind {
		case 'Q':
			out = append(out, tr.queryResult(p, now, "", e))
		case 'F':
			out = append(out, tr.make(p.sql, "function", "", "", tr.startOf(p), now, "", e))
		case 'P':
			out = append(out, tr.make(p.sql, "extended", p.stmt, "", tr.startOf(p), now, "", e))
			tr.skipToSync()
		case 'B':
			out = append(out, tr.make(p.sql, "extended", p.stmt, p.params, tr.startOf(p), now, "", e))
			tr.skipToSync()
		case 'E':
			out = append(out, tr.execResult(p, now, "", e))
			tr.skipToSync()
		case 'D', 'C':
			tr.skipToSync()
		}
		tr.last = now
		return
	}
	p := tr.head()
	if p == nil {
		return
	}
	switch typ {
	case '1':
		if p.kind == 'P' {
			tr.pop()
		}
	case '2':
		if p.kind == 'B' {
			if old := tr.portals[p.portal]; old != nil && old.suspended {
				out = append(out, tr.unfinished(p.portal, old, now))
			}
			tr.portals[p.portal] = &portalState{sql: p.sql, stmt: p.stmt, params: p.params}
			tr.pop()
		}
	case '3':
		if p.kind == 'C' {
			if p.closeOf == 'P' {
				if old := tr.portals[p.portal]; old != nil {
					if old.suspended {
						out = append(out, tr.unfinished(p.portal, old, now))
					}
					delete(tr.portals, p.portal)
				}
			}
			tr.pop()
		}
	case 'n', 'T':
		if p.kind != 'D' {
			return // a Query's RowDescription: the statement is still running
		}
		tr.pop()
	case 'C', 'I':
		tag := ""
		if typ == 'C' {
			tag, _, _ = cstr(body)
		}
		switch p.kind {
		case 'Q':
			out = append(out, tr.queryResult(p, now, tag, serverError{}))
		case 'E':
			out = append(out, tr.execResult(p, now, tag, serverError{}))
			tr.pop()
		}
	case 's':
		if p.kind == 'E' {
			ps := tr.portals[p.portal]
			if ps != nil {
				if !ps.suspended {
					ps.suspended, ps.start, ps.rows = true, tr.startOf(p), 0
				}
				ps.rows += p.rows
			}
			tr.pop()
		}
	case 'V':
		if p.kind == 'F' {
			out = append(out, tr.make(p.sql, "function", "", "", tr.startOf(p), now, "", serverError{}))
		}
	case 'Z':
		for len(tr.queue) > 0 {
			k := tr.head().kind
			tr.pop()
			if k == 'Q' || k == 'S' || k == 'F' {
				break
			}
		}
		tr.skip = false
		if len(body) > 0 && body[0] == 'I' {
			// Outside a transaction block no portal survives.
			for name, ps := range tr.portals {
				if ps.suspended {
					out = append(out, tr.unfinished(name, ps, now))
				}
				delete(tr.portals, name)
			}
		}
	}
	tr.last = now
}

// skipToSync drops the requests the server discards after an error in the
// extended protocol (everything up to the next Sync).
func (tr *tracker) skipToSync() {
	for len(tr.queue) > 0 && tr.queue[0].kind != 'S' {
		tr.pop()
	}
	tr.skip = true
}

// queryResult is the record of one statement result of a simple Query.
func (tr *tracker) queryResult(p *pending, now time.Time, tag string, e serverError) audit.Query {
	sql := p.sql
	if p.results < len(p.stmts) && len(p.stmts) > 1 {
		sql = sqlCapture{text: p.stmts[p.results]}
	}
	p.results++
	q := tr.make(sql, "simple", "", "", tr.startOf(p), now, tag, e)
	p.rows = 0
	return q
}

// execResult is the record of an Execute that completed (or failed),
// including the batches of earlier suspended Executes of its portal.
func (tr *tracker) execResult(p *pending, now time.Time, tag string, e serverError) audit.Query {
	ps := tr.portals[p.portal]
	if ps == nil {
		ps = &portalState{}
	}
	if !ps.suspended {
		return tr.make(ps.sql, "extended", ps.stmt, ps.params, tr.startOf(p), now, tag, e)
	}
	rows := ps.rows + p.rows
	q := tr.make(ps.sql, "extended", ps.stmt, ps.params, ps.start, now, tag, e)
	ps.suspended, ps.rows = false, 0
	if e.code == "" {
		// The tag of a resumed portal counts only its last batch (PostgreSQL's
		// PortalRun); the DataRows of all batches are the statement's rows.
		q.Rows = rows
	}
	return q
}

// unfinished is the record of a portal closed while suspended: the rows it returned.
func (tr *tracker) unfinished(name string, ps *portalState, now time.Time) audit.Query {
	q := tr.make(ps.sql, "extended", ps.stmt, ps.params, ps.start, now, "", serverError{})
	q.Command, q.Rows = "FETCH", ps.rows
	ps.suspended = false
	return q
}

// startOf is when the server began on request p: its arrival, or the end of
// the previous response if later, since the server runs one request at a
// time and a pipelined request waits for the one before it.
func (tr *tracker) startOf(p *pending) time.Time {
	if p.at.Before(tr.last) {
		return tr.last
	}
	return p.at
}

// make builds a record.
func (tr *tracker) make(sql sqlCapture, protocol, stmt, params string, start, end time.Time, tag string, e serverError) audit.Query {
	q := audit.Query{Time: start, Duration: max(end.Sub(start), 0), SQL: sql.text, SQLLength: sql.length, SQLSHA256: sql.sha256,
		Protocol: protocol, Statement: stmt, Params: params, Rows: -1, SQLState: e.code, Error: e.message}
	if e.code == "" {
		q.Command, q.Rows = parseTag(tag)
		if tag == "" && protocol != "function" {
			q.Command = "EMPTY"
		}
	}
	return q
}

// rowVerbs are the command tags that end in a row count (protocol §55.7, CommandComplete).
var rowVerbs = map[string]bool{"SELECT": true, "INSERT": true, "UPDATE": true, "DELETE": true, "MERGE": true, "COPY": true, "FETCH": true, "MOVE": true}

// parseTag splits a CommandComplete tag into its command and row count (-1 when it has none).
func parseTag(tag string) (string, int64) {
	f := strings.Fields(tag)
	if len(f) >= 2 && rowVerbs[f[0]] {
		if n, err := strconv.ParseInt(f[len(f)-1], 10, 64); err == nil {
			return f[0], n
		}
	}
	return tag, -1
}

// parseError reads the fields of an ErrorResponse body (protocol §55.8).
func parseError(b []byte) serverError {
	var e serverError
	for len(b) > 0 && b[0] != 0 {
		code := b[0]
		v, rest, ok := cstr(b[1:])
		if !ok {
			break
		}
		switch code {
		case 'V':
			e.severity = v
		case 'S':
			if e.severity == "" {
				e.severity = v
			}
		case 'C':
			e.code = v
		case 'M':
			e.message = v
		}
		b = rest
	}
	if e.code == "" {
		e.code = "XX000"
	}
	return e
}

// fatalSeen returns the last FATAL or PANIC the server sent.
func (tr *tracker) fatalSeen() serverError {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.fatal
}

// splitStatements splits a simple Query string at top-level semicolons as
// the server does (quotes, E” escapes, quoted identifiers, dollar quoting,
// -- and nested /* */ comments), dropping empty and comment-only pieces. The
// server gives one result per piece. It does not know SQL-standard function
// bodies (BEGIN ATOMIC ... END); the records of such a string fall back to
// the whole text when the counts disagree.
func splitStatements(s string) []string {
	var out []string
	start, code := 0, false
	isIdent := func(c byte) bool {
		return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
	}
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == '\'':
			esc := i > 0 && (s[i-1] == 'E' || s[i-1] == 'e') && (i < 2 || !isIdent(s[i-2]))
			i++
			for i < len(s) {
				if esc && s[i] == '\\' {
					i += 2
					continue
				}
				if s[i] == '\'' {
					if i+1 < len(s) && s[i+1] == '\'' {
						i += 2
						continue
					}
					break
				}
				i++
			}
			i++
			code = true
		case c == '"':
			i++
			for i < len(s) && s[i] != '"' {
				i++
			}
			i++
			code = true
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			depth := 0
			for i < len(s) {
				if s[i] == '/' && i+1 < len(s) && s[i+1] == '*' {
					depth++
					i += 2
				} else if s[i] == '*' && i+1 < len(s) && s[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		case c == '$' && (i == 0 || !isIdent(s[i-1])):
			j := i + 1
			for j < len(s) && isIdent(s[j]) && !(j == i+1 && s[j] >= '0' && s[j] <= '9') {
				j++
			}
			if j < len(s) && s[j] == '$' {
				tag := s[i : j+1]
				if k := strings.Index(s[j+1:], tag); k >= 0 {
					i = j + 1 + k + len(tag)
				} else {
					i = len(s)
				}
			} else {
				i = j
			}
			code = true
		case c == ';':
			if code {
				out = append(out, strings.TrimSpace(s[start:i]))
			}
			i++
			start, code = i, false
		default:
			if c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f' {
				code = true
			}
			i++
		}
	}
	if code {
		out = append(out, strings.TrimSpace(s[start:]))
	}
	return out
}

// abandon releases a request whose message never reached the server whole
// (the session is ending).
func (tr *tracker) abandon(p *pending) {
	if p != nil {
		close(p.ready)
	}
}
