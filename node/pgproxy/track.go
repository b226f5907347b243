package pgproxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"slices"
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
//   - ReadyForQuery pops through the Query, Sync or FunctionCall it ends; a
//     Query, Execute or FunctionCall it passes unanswered is still recorded;
//   - CopyInResponse starts a COPY FROM STDIN: at its end the Syncs the COPY
//     read (and a message that ended it) leave the queue (endCopy), found
//     by the CopyDone/CopyFail markers the client side queues.
//
// Server state (prepared statement texts, portals, standard_conforming_strings)
// is taken from the server's answers, never from the client's requests.
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
	ready bool // set (under tracker.mu) by the client side once the fields below are set

	sql     sqlCapture
	stmt    string // Parse, Bind: statement name
	portal  string // Bind, Execute, Close 'P', Describe 'P'
	params  string // Bind, FunctionCall
	closeOf byte   // Close, Describe: 'S' or 'P'
	// abandoned: the message never reached the server whole, so the server
	// never ran it.
	abandoned bool

	// Query, server side: split says it was split (at its first response,
	// with the standard_conforming_strings then in force) into nstmts
	// statements; errored says a statement failed; run holds the rest, for
	// the few Queries that need it.
	split   bool
	errored bool
	nstmts  int32
	run     *queryRun

	results int   // Query: statement results seen
	rows    int64 // DataRows seen since the last result
}

// queryRun is what a Query of several statements, or one that ran PREPARE
// or DEALLOCATE, keeps until it ends.
type queryRun struct {
	stmts []string // the statements of sql.text, when there are several
	// recs are the records held until ReadyForQuery shows whether the
	// server ran as many statements as the split found.
	recs []audit.Query
	// sqlCmds are applied to the statement map at the Query's end.
	sqlCmds []sqlCmd
}

// sqlCmd is a PREPARE, DEALLOCATE or DISCARD ALL that a Query ran: result
// is its index among the Query's results.
type sqlCmd struct {
	tag    string
	result int
}

// portalState is what an Execute needs of its portal.
type portalState struct {
	sql    sqlCapture
	stmt   string
	params string
	// A PortalSuspended Execute in progress: when it started and the rows so far.
	suspended bool
	// bound: made by a Bind (not an SQL DECLARE, whose text has its own
	// record); executed: an Execute of it has been answered.
	bound, executed bool
	start           time.Time
	rows            int64
}

// tracker builds query records for one session.
type tracker struct {
	record func(audit.Query) // called from the server side
	// hold, when not nil, waits until every record made so far is durable (see heldWriter); held
	// says records were made since it last returned (both: the server side of the relay only).
	hold   func() error
	held   bool
	limit  int  // Config.MaxAuditSQL
	redact bool // Target.RedactParams

	mu    sync.Mutex
	queue []*pending
	// The server's prepared statements and portals as the server has
	// confirmed them, server side only: a statement's text is taken at its
	// ParseComplete and dropped at its CloseComplete (a Parse the server
	// refused, e.g. 42P05 for a name in use, or skipped after an earlier
	// error in the pipeline, changes nothing); a portal is made at BindComplete.
	stmts   map[string]sqlCapture
	portals map[string]*portalState
	skip    bool        // after an extended-protocol ErrorResponse, until ReadyForQuery
	last    time.Time   // when the previous response completed
	fatal   serverError // the last FATAL or PANIC ErrorResponse from the server
	// scsOff: the server's standard_conforming_strings is off (backslash
	// escapes in '' strings), as its ParameterStatus last said.
	scsOff bool
	// scsUnsure: an Execute completed since the last ReadyForQuery. It may
	// have changed standard_conforming_strings (SET, set_config), which the
	// server reports only at its next ReadyForQuery, after a Query pipelined
	// behind it has already been parsed with the new setting.
	scsUnsure bool
	// early are records made on the way (startQuery) for the caller to send.
	early []audit.Query
	// copyIn is the request whose COPY FROM STDIN is running (after its
	// CopyInResponse), or nil.
	copyIn *pending
	// copySyncsOnly: while copyIn is set, every request queued after it is a Sync, which the COPY
	// reads and ignores (see endCopy); so is a Sync that comes next.
	copySyncsOnly bool

	// maxPending, above 0, is the most requests queued unanswered: push then waits until the
	// server side has answered some (or has ended), so a client that pipelines requests without
	// reading the answers holds a bounded amount of the node's memory, as it holds a bounded part of
	// the server's (which stops reading when its answers are not read).
	maxPending int
	room       sync.Cond // on mu; push waits on it while the queue is full
	waiting    bool      // push is waiting on room
	serverDone bool      // the server side has ended: push no longer waits
	// syncAhead: while skip, a Sync is queued, so the server will answer again. Without one it
	// answers nothing until the client's next Sync, which push must not wait in front of.
	syncAhead bool

	filled sync.Cond // on mu; broadcast when a request becomes ready
	// popped are the requests taken off the queue during one server message, recycled into free
	// when it is done with them; free holds a few for push to reuse, so a request costs no
	// allocation of its own.
	popped, free []*pending
}

// maxFree is the most recycled requests a tracker keeps: enough for a pipeline of a few, while a
// burst of thousands is not held after it ends.
const maxFree = 8

// maxPendingRequests is the tracker's maxPending in a session: far above what any response a
// PostgreSQL server holds back in its output buffer (8 KiB, at least 5 bytes per response) can
// leave unanswered, so a pipeline waits only on a client that does not read.
const maxPendingRequests = 16 << 10

type serverError struct{ severity, code, message string }

func newTracker(limit int, redact bool, record func(audit.Query)) *tracker {
	if limit <= 0 {
		limit = DefaultMaxAuditSQL
	}
	tr := &tracker{record: record, limit: limit, redact: redact, stmts: map[string]sqlCapture{}, portals: map[string]*portalState{}}
	tr.room.L = &tr.mu
	tr.filled.L = &tr.mu
	return tr
}

// serverEnded is called once the server side of the relay has stopped: a push waiting for room
// goes on (the session is ending).
func (tr *tracker) serverEnded() {
	tr.mu.Lock()
	tr.serverDone = true
	tr.room.Broadcast()
	tr.mu.Unlock()
}

// mustWait says whether push must wait for answers before queuing more; mu is held. It does not
// while the server will answer nothing until a message still to come: after an extended-protocol
// error with no Sync queued, or during a COPY FROM STDIN (the server reads on, so the client is not
// held back either way).
func (tr *tracker) mustWait() bool {
	return len(tr.queue) >= tr.maxPending && !tr.serverDone && tr.copyIn == nil && (!tr.skip || tr.syncAhead)
}

// wake lets a waiting push go on once the queue has room; mu is held.
func (tr *tracker) wake() {
	if tr.waiting && !tr.mustWait() {
		tr.waiting = false
		tr.room.Broadcast()
	}
}

// setParameter follows a ParameterStatus of the server (at login and during
// the session): standard_conforming_strings decides how the server splits a
// multi-statement Query.
func (tr *tracker) setParameter(name, value string) {
	if name == "standard_conforming_strings" {
		tr.scsOff = value == "off"
	}
}

// tracked reports whether client message typ gets a response the tracker follows.
func tracked(typ byte) bool {
	switch typ {
	case 'Q', 'P', 'B', 'D', 'E', 'C', 'S', 'F':
		return true
	case 'c', 'f':
		// CopyDone and CopyFail get no response of their own: they mark
		// where a COPY's data ends in the client's stream (see endCopy).
		return true
	}
	return false
}

// keepOf is how many leading body bytes of a tracked message the client side keeps.
func (tr *tracker) keepOf(typ byte, body int64) int64 {
	switch typ {
	case 'Q', 'P':
		return min(body, int64(tr.limit)+nameSlack)
	case 'B', 'F':
		return min(body, bindKeep)
	default:
		return min(body, smallKeep)
	}
}

// push queues a request as its header is read, before any of it reaches the
// server, so its response can never arrive first. When maxPending requests are
// queued it first calls flush (so that all of them reach the server) and waits
// until the server side has answered some or has ended.
//
// A COPY end marker right after another one is not queued (nil): the first
// ends the COPY, if any, and the server ignores the next (protocol §55.2.6),
// so it gets no answer of its own and would stay queued until the next
// answer; a stream of them outside COPY would hold the node's memory without
// bound.
func (tr *tracker) push(typ byte, flush func()) *pending {
	tr.mu.Lock()
	if isCopyEnd(typ) && len(tr.queue) > 0 && isCopyEnd(tr.queue[len(tr.queue)-1].kind) {
		tr.mu.Unlock()
		return nil
	}
	p := tr.newPending(typ)
	if tr.maxPending > 0 && tr.mustWait() {
		tr.mu.Unlock()
		if flush != nil {
			flush()
		}
		tr.mu.Lock()
		for tr.mustWait() {
			tr.waiting = true
			tr.room.Wait()
		}
	}
	if tr.skip && !tr.syncAhead && typ != 'S' {
		// After an extended-protocol error the server discards everything up to the next Sync
		// unanswered, as skipToSync drops what was queued when the error came; queuing what comes
		// after it would hold the node's memory without bound while the server reads on.
		tr.mu.Unlock()
		return nil
	}
	if tr.copyIn != nil {
		if typ == 'S' && tr.copySyncsOnly {
			// Read and ignored by the running COPY FROM STDIN, unanswered: queuing each would hold
			// the node's memory without bound while the server reads on.
			tr.mu.Unlock()
			return nil
		}
		tr.copySyncsOnly = false // this message ends the COPY; the Syncs after it are answered
	}
	if typ == 'S' && tr.skip {
		tr.syncAhead = true
	}
	tr.queue = append(tr.queue, p)
	tr.mu.Unlock()
	return p
}

// sqlTail hashes the rest of an SQL text longer than the audit limit as it
// streams past, up to its terminating NUL, and keeps its last tailKeep bytes.
type sqlTail struct {
	h    hash.Hash
	n    int64
	done bool
	last []byte // the end of what was written, at least its last tailKeep bytes
}

// tailKeep is the most of the end of a long SQL text that a streamed
// message keeps for the record (see capture).
const tailKeep = DefaultMaxAuditSQL / 2

func newSQLTail(prefix []byte) *sqlTail {
	t := &sqlTail{h: sha256.New()}
	t.write(prefix)
	return t
}

func (t *sqlTail) write(b []byte) {
	t.h.Write(b)
	t.n += int64(len(b))
	if len(b) >= tailKeep {
		t.last = append(t.last[:0], b[len(b)-tailKeep:]...)
		return
	}
	t.last = append(t.last, b...)
	if len(t.last) > 2*tailKeep {
		t.last = t.last[:copy(t.last, t.last[len(t.last)-tailKeep:])]
	}
}

// end is the last n bytes written (fewer if fewer were).
func (t *sqlTail) end(n int) []byte {
	return t.last[max(len(t.last)-n, 0):]
}

// Write is safe on a nil *sqlTail (no text to follow), as the relay may
// hand one over as an io.Writer.
func (t *sqlTail) Write(b []byte) (int, error) {
	if t == nil || t.done {
		return len(b), nil
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		t.write(b[:i])
		t.done = true
		return len(b), nil
	}
	t.write(b)
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

// capture makes the logged form of an SQL text: whole when it fits the
// limit, else its head and its tail (cut at UTF-8 boundaries, at most the
// limit together) around a marker that says how many bytes between them are
// not recorded, with the whole text's length and SHA-256. Keeping the tail
// means padding cannot push the end of a statement out of the record.
func (tr *tracker) capture(sql []byte, tail *sqlTail) sqlCapture {
	if tail == nil && len(sql) <= tr.limit {
		return sqlCapture{text: validUTF8(sql)}
	}
	var c sqlCapture
	var end []byte
	tailN := min(tr.limit/2, tailKeep)
	if tail != nil {
		c.length = tail.n
		c.sha256 = hex.EncodeToString(tail.h.Sum(nil))
		end = tail.end(tailN)
	} else {
		c.length = int64(len(sql))
		sum := sha256.Sum256(sql)
		c.sha256 = hex.EncodeToString(sum[:])
		end = sql[len(sql)-tailN:]
	}
	for len(end) > 0 && !utf8.RuneStart(end[0]) {
		end = end[1:]
	}
	cut := min(len(sql), tr.limit-tailN)
	for cut > 0 && cut < len(sql) && !utf8.RuneStart(sql[cut]) {
		cut--
	}
	omitted := c.length - int64(cut) - int64(len(end))
	c.text = validUTF8(sql[:cut]) + fmt.Sprintf(elision, omitted) + validUTF8(end)
	return c
}

// elision stands between the head and the tail of a long SQL text in its record.
const elision = "\n…[%d bytes not recorded]…\n"

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

// nameMax is how many bytes of a prepared statement's or portal's name
// PostgreSQL compares (NAMEDATALEN-1 of a default build): its hash tables of
// them (prepare.c, portalmem.c) cut longer names, so names alike in their
// first nameMax bytes are one statement or portal on the server.
const nameMax = 63

// serverName is name as the server keys it.
func serverName(name string) string {
	if len(name) > nameMax {
		return name[:nameMax]
	}
	return name
}

// lostName stands for a statement name that was not kept (it cannot be a
// real name, which never holds a NUL).
const lostName = "\x00(name not kept)"

// cname splits a NUL-terminated statement or portal name off b, cut as the
// server cuts it; without a NUL (a name longer than what was kept) it
// returns what the server would make of the name's start, and ok false.
func cname(b []byte) (string, []byte, bool) {
	name, rest, ok := cstr(b)
	if !ok {
		return serverName(string(b)), nil, false
	}
	return serverName(name), rest, true
}

// fill sets a request's fields from its kept body (total bytes long) and
// releases it to the server side. Malformed bodies leave fields empty: the
// server will answer them with an ErrorResponse. It changes no state of the
// server's: what a request does there is taken from the server's answer.
func (tr *tracker) fill(p *pending, kept []byte, total int64, tail *sqlTail) {
	defer tr.release(p)
	switch p.kind {
	case 'Q':
		sql := kept
		if i := bytes.IndexByte(sql, 0); i >= 0 {
			sql = sql[:i]
		}
		p.sql = tr.capture(sql, tail)
	case 'P':
		name, rest, ok := cname(kept)
		if !ok {
			if len(kept) > 0 {
				p.stmt = name
				p.sql = sqlCapture{text: "[statement text not kept: its name is longer than the proxy keeps of a Parse]"}
			}
			return
		}
		sql := rest
		if i := bytes.IndexByte(sql, 0); i >= 0 {
			sql = sql[:i]
		}
		p.stmt = name
		p.sql = tr.capture(sql, tail)
	case 'B':
		portal, rest, ok := cname(kept)
		if !ok {
			p.portal, p.stmt = portal, lostName
			return
		}
		stmt, rest, ok := cname(rest)
		if !ok {
			p.portal, p.stmt = portal, stmt
			return
		}
		p.portal, p.stmt = portal, stmt
		p.params = tr.params(rest, int64(len(kept)) < total)
	case 'E':
		p.portal, _, _ = cname(kept)
	case 'D', 'C':
		if len(kept) > 0 {
			p.closeOf = kept[0]
			name, _, _ := cname(kept[1:])
			p.portal, p.stmt = name, name
		}
	case 'F':
		// Function OID, then argument formats and values laid out as a
		// Bind's parameters (protocol §55.7, FunctionCall).
		if len(kept) >= 4 {
			p.sql = sqlCapture{text: fmt.Sprintf("function call: OID %d", binary.BigEndian.Uint32(kept))}
			p.params = tr.params(kept[4:], int64(len(kept)) < total)
		}
	}
}

// params renders the parameter part of a Bind or FunctionCall body, or only
// their count under RedactParams.
func (tr *tracker) params(b []byte, cut bool) string {
	if tr.redact {
		return redactedParams(b)
	}
	return formatParams(b, cut)
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
// CopyDone and CopyFail markers at the head are dropped: outside a COPY the
// server ignores them.
func (tr *tracker) head() *pending {
	for len(tr.queue) > 0 {
		p := tr.queue[0]
		if isCopyEnd(p.kind) {
			tr.pop()
			continue
		}
		for !p.ready {
			tr.filled.Wait()
		}
		if len(tr.queue) > 0 && tr.queue[0] == p {
			return p
		}
	}
	return nil
}

func isCopyEnd(kind byte) bool { return kind == 'c' || kind == 'f' }

// first is the oldest request that is not a COPY end marker, without
// waiting for it to be filled, or nil.
func (tr *tracker) first() *pending {
	for _, p := range tr.queue {
		if !isCopyEnd(p.kind) {
			return p
		}
	}
	return nil
}

// endCopy follows the end of a COPY FROM STDIN that request p started
// (protocol §55.2.6): the server read the client's messages up to CopyDone
// or CopyFail as part of the COPY, ignoring Flush and Sync, and a message of
// any other type ended the COPY with an error (08P01) having been read. Those
// Syncs (libpq sends one right after an extended-protocol COPY's Execute)
// and that message get no answer of their own, so they leave the queue.
func (tr *tracker) endCopy(p *pending, e serverError) {
	tr.copyIn = nil
	if len(tr.queue) == 0 || tr.queue[0] != p {
		return
	}
	i := 1
	for i < len(tr.queue) {
		k := tr.queue[i].kind
		switch {
		case k == 'S':
			tr.queue = slices.Delete(tr.queue, i, i+1)
		case isCopyEnd(k):
			tr.queue = slices.Delete(tr.queue, i, i+1)
			return
		default:
			if e.code == "08P01" {
				tr.queue = slices.Delete(tr.queue, i, i+1)
			}
			return
		}
	}
}

func (tr *tracker) pop() {
	if len(tr.queue) > 0 {
		tr.popped = append(tr.popped, tr.queue[0])
		tr.queue[0] = nil
		if len(tr.queue) == 1 {
			tr.queue = tr.queue[:0] // keeps the array's room: one request at a time allocates nothing
		} else {
			tr.queue = tr.queue[1:]
		}
	}
}

// newPending returns a request of kind typ, recycled when one is free. Called with tr.mu held.
func (tr *tracker) newPending(typ byte) *pending {
	var p *pending
	if n := len(tr.free); n > 0 {
		p = tr.free[n-1]
		tr.free[n-1] = nil
		tr.free = tr.free[:n-1]
	} else {
		p = &pending{}
	}
	p.kind, p.at = typ, time.Now()
	return p
}

// recycle keeps the requests popped while handling one server message for reuse, once the
// handling is done with them. The client side is done with a request once it is ready, and only
// a ready request is ever popped (tr.head waits), so nothing else refers to one but tr.copyIn,
// which keeps its request out of the free list. Called with tr.mu held.
func (tr *tracker) recycle() {
	for i, p := range tr.popped {
		tr.popped[i] = nil
		if p == tr.copyIn || !p.ready || len(tr.free) >= maxFree {
			continue
		}
		*p = pending{}
		tr.free = append(tr.free, p)
	}
	tr.popped = tr.popped[:0]
}

// release marks p ready, for the server side waiting on it in tr.head.
func (tr *tracker) release(p *pending) {
	tr.mu.Lock()
	p.ready = true
	tr.filled.Broadcast()
	tr.mu.Unlock()
}

// server takes one server message: its type and (for CommandComplete,
// ErrorResponse, ReadyForQuery and ParameterStatus) its kept body.
func (tr *tracker) server(typ byte, body []byte) {
	if typ == 'D' {
		tr.mu.Lock()
		if p := tr.first(); p != nil {
			p.rows++
		}
		tr.mu.Unlock()
		return
	}
	switch typ {
	case '1', '2', '3', 'n', 'T', 'C', 'I', 's', 'E', 'V', 'Z', 'S', 'G':
	default:
		return // notices, notifications, COPY, row data, descriptions
	}
	now := time.Now()
	tr.mu.Lock()
	var out []audit.Query
	defer func() {
		if tr.early != nil {
			out = append(tr.early, out...)
			tr.early = nil
		}
		tr.recycle()
		tr.wake()
		tr.mu.Unlock()
		for _, q := range out {
			tr.record(q)
		}
		if len(out) > 0 {
			tr.held = true
		}
	}()
	if typ == 'S' {
		// A Query the server has begun was parsed with the setting in force
		// before; a change it makes itself (SET) is reported after.
		if p := tr.first(); p != nil && p.ready { // not whole yet: the server has not begun it
			tr.startQuery(p)
		}
		if name, rest, ok := cstr(body); ok {
			value, _, _ := cstr(rest)
			tr.setParameter(name, value)
		}
		return
	}
	if typ == 'E' {
		e := parseError(body)
		if e.severity == "FATAL" || e.severity == "PANIC" {
			tr.fatal = e
			if p := tr.first(); p != nil && !p.ready {
				// The server ends the session (pg_terminate_backend) while the oldest request is
				// still arriving: it never got that request whole, so the FATAL answers nothing.
				// Waiting for the client to finish it would hold the FATAL back from the client,
				// and keep the session open, for as long as the client stalls.
				return
			}
		}
		p := tr.head()
		if p == nil || tr.skip {
			return
		}
		if tr.copyIn == p {
			tr.endCopy(p, e)
		}
		switch p.kind {
		case 'Q':
			tr.startQuery(p)
			if p.errored {
				break // a Query stops at its first error; a FATAL after it ends the session
			}
			p.errored = true
			out = tr.queryResult(out, p, now, "", e)
		case 'F':
			p.results++
			out = append(out, tr.make(p.sql, "function", "", p.params, tr.startOf(p), now, "", e))
		case 'P':
			out = append(out, tr.make(p.sql, "extended", p.stmt, "", tr.startOf(p), now, "", e))
			tr.skipToSync()
		case 'B':
			out = append(out, tr.make(tr.stmtText(p.stmt), "extended", p.stmt, p.params, tr.startOf(p), now, "", e))
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
	if p.kind == 'Q' {
		tr.startQuery(p)
	}
	switch typ {
	case 'G':
		if p.kind == 'Q' || p.kind == 'E' {
			tr.copyIn = p
			tr.copySyncsOnly = true // p is the head (tr.head)
			for _, q := range tr.queue[1:] {
				if q.kind != 'S' {
					tr.copySyncsOnly = false
					break
				}
			}
		}
		return
	case '1':
		if p.kind == 'P' {
			tr.stmts[p.stmt] = p.sql
			tr.pop()
		}
	case '2':
		if p.kind == 'B' {
			if old := tr.portals[p.portal]; old != nil && old.suspended {
				out = append(out, tr.unfinished(p.portal, old, now))
			}
			tr.portals[p.portal] = &portalState{sql: tr.stmtText(p.stmt), stmt: p.stmt, params: p.params, bound: true}
			tr.pop()
		}
	case '3':
		if p.kind == 'C' {
			switch p.closeOf {
			case 'S':
				delete(tr.stmts, p.stmt)
			case 'P':
				if old := tr.portals[p.portal]; old != nil {
					out = tr.closed(out, p.portal, old, now)
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
		if tr.copyIn == p {
			tr.endCopy(p, serverError{})
		}
		switch p.kind {
		case 'Q':
			if changesStatements(tag) {
				if p.run == nil {
					p.run = &queryRun{}
				}
				p.run.sqlCmds = append(p.run.sqlCmds, sqlCmd{tag: tag, result: p.results})
			}
			out = tr.queryResult(out, p, now, tag, serverError{})
		case 'E':
			tr.scsUnsure = true
			q := tr.execResult(p, now, tag, serverError{})
			if changesStatements(tag) {
				// One statement per Parse: its text is exactly what ran.
				tr.applySQLCmd(tag, q.SQL, q.SQLLength == 0)
			}
			out = append(out, q)
			tr.pop()
		}
	case 's':
		if p.kind == 'E' {
			tr.scsUnsure = true
			ps := tr.portals[p.portal]
			if ps != nil {
				ps.executed = true
				if !ps.suspended {
					ps.suspended, ps.start, ps.rows = true, tr.startOf(p), 0
				}
				ps.rows += p.rows
			}
			tr.pop()
		}
	case 'V':
		if p.kind == 'F' {
			p.results++
			out = append(out, tr.make(p.sql, "function", "", p.params, tr.startOf(p), now, "", serverError{}))
		}
	case 'Z':
		for {
			p := tr.head()
			if p == nil {
				break
			}
			if p.kind == 'Q' {
				tr.startQuery(p)
				out = tr.endQuery(out, p)
			}
			if p.results == 0 && (p.kind == 'Q' || p.kind == 'E' || p.kind == 'F') {
				// The server's answers and the tracker's queue disagree
				// (a protocol corner the tracker does not follow): the
				// request is still recorded, never dropped unseen.
				out = append(out, tr.unmatched(p, now))
			}
			tr.pop()
			if p.kind == 'Q' || p.kind == 'S' || p.kind == 'F' {
				break
			}
		}
		tr.skip = false
		tr.copyIn = nil
		tr.scsUnsure = false
		if len(body) > 0 && body[0] == 'I' {
			// Outside a transaction block no portal survives.
			for name, ps := range tr.portals {
				out = tr.closed(out, name, ps, now)
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
	tr.syncAhead = len(tr.queue) > 0
}

// stmtText is the text of prepared statement name as the server has it.
func (tr *tracker) stmtText(name string) sqlCapture {
	if c, ok := tr.stmts[name]; ok {
		return c
	}
	return sqlCapture{text: fmt.Sprintf("[prepared statement %q: no text known to the proxy (not prepared by a Parse it saw complete, or replaced by SQL PREPARE/DEALLOCATE)]", name)}
}

// unknownPortal stands for a portal the proxy saw no Bind or DECLARE make
// (e.g. a WITH HOLD cursor kept past its transaction): its record says so
// rather than carry no text.
func unknownPortal(name string) *portalState {
	return &portalState{sql: sqlCapture{text: fmt.Sprintf("[portal %q: no text known to the proxy (not made by a Bind or an SQL DECLARE it saw complete)]", name)}}
}

// startQuery is called when the server begins on Query p: the server has
// parsed the whole string with the standard_conforming_strings in force
// now, so it is split now; and a Query destroys the unnamed prepared
// statement (protocol §55.2.3).
func (tr *tracker) startQuery(p *pending) {
	if p.kind != 'Q' || p.split {
		return
	}
	p.split = true
	if p.sql.length == 0 {
		stmts := splitStatements(p.sql.text, !tr.scsOff)
		if tr.scsUnsure && !slices.Equal(stmts, splitStatements(p.sql.text, tr.scsOff)) {
			// The server may have parsed it with the other setting, which
			// splits it differently: every record keeps the whole text.
			stmts = nil
		}
		p.nstmts = int32(len(stmts))
		if len(stmts) > 1 {
			p.run = &queryRun{stmts: stmts}
		}
	}
	delete(tr.stmts, "")
	// It destroys the unnamed portal too.
	if ps := tr.portals[""]; ps != nil {
		if ps.suspended {
			tr.early = append(tr.early, tr.unfinished("", ps, time.Now()))
		}
		delete(tr.portals, "")
	}
}

// queryResult adds the record of one statement result of a simple Query to
// out, or holds it until the Query ends when the Query has several statements.
func (tr *tracker) queryResult(out []audit.Query, p *pending, now time.Time, tag string, e serverError) []audit.Query {
	q := tr.make(p.sql, "simple", "", "", tr.startOf(p), now, tag, e)
	p.results++
	p.rows = 0
	if p.nstmts > 1 {
		p.run.recs = append(p.run.recs, q)
		return out
	}
	return append(out, q)
}

// endQuery adds the held records of Query p to out. Each gets its own
// statement's text only when the server ran, without error, as many
// statements as the split found; otherwise the split cannot be trusted to
// match the server's and every record keeps the whole text. The PREPARE and
// DEALLOCATE the Query ran are applied to the statement map.
func (tr *tracker) endQuery(out []audit.Query, p *pending) []audit.Query {
	if p.run == nil {
		return out
	}
	matched := !p.errored && p.results == int(p.nstmts)
	stmt := func(i int) string {
		if p.nstmts > 1 {
			return p.run.stmts[i]
		}
		return p.sql.text // split, so whole
	}
	if matched && p.nstmts > 1 {
		for i := range p.run.recs {
			p.run.recs[i].SQL = p.run.stmts[i]
		}
	}
	for _, c := range p.run.sqlCmds {
		if matched {
			tr.applySQLCmd(c.tag, stmt(c.result), true)
		} else {
			tr.applySQLCmd(c.tag, "", false)
		}
	}
	out = append(out, p.run.recs...)
	p.run = nil
	return out
}

// changesStatements reports whether a command tag is of an SQL command that
// creates or drops prepared statements (which share the protocol's names).
func changesStatements(tag string) bool {
	switch tag {
	case "PREPARE", "DEALLOCATE", "DEALLOCATE ALL", "DISCARD ALL",
		"DECLARE CURSOR", "CLOSE CURSOR", "CLOSE CURSOR ALL":
		return true
	}
	return false
}

// applySQLCmd follows a PREPARE, DEALLOCATE or DISCARD ALL that ran as text
// (known says text is exactly that statement). A statement whose name cannot
// be read drops every known text, so a later Bind is never attributed stale SQL.
func (tr *tracker) applySQLCmd(tag, text string, known bool) {
	switch tag {
	case "DISCARD ALL":
		clear(tr.stmts)
		tr.dropPortals("")
	case "DEALLOCATE ALL":
		clear(tr.stmts)
	case "CLOSE CURSOR ALL":
		tr.dropPortals("")
	case "CLOSE CURSOR":
		// SQL cursors and protocol portals share one namespace.
		if name, ok := stmtNameAfter(text, "CLOSE"); known && ok {
			tr.dropPortals(name)
		} else {
			tr.dropPortals("")
		}
	case "DECLARE CURSOR":
		if name, ok := stmtNameAfter(text, "DECLARE"); known && ok {
			tr.dropPortals(name)
			tr.portals[name] = &portalState{sql: sqlCapture{text: text}}
		} else {
			tr.dropPortals("")
		}
	case "DEALLOCATE":
		if name, ok := stmtNameAfter(text, "DEALLOCATE"); known && ok {
			delete(tr.stmts, name)
		} else {
			clear(tr.stmts)
		}
	case "PREPARE":
		if name, ok := stmtNameAfter(text, "PREPARE"); known && ok {
			tr.stmts[name] = sqlCapture{text: text}
		} else {
			clear(tr.stmts) // a name the proxy cannot read may be one it has a text for
		}
	}
}

// dropPortals forgets portal name, or every portal when name is "" (the
// unnamed portal is never an SQL cursor), recording the rows of a suspended one.
func (tr *tracker) dropPortals(name string) {
	for n, ps := range tr.portals {
		if name != "" && n != name {
			continue
		}
		tr.early = tr.closed(tr.early, n, ps, time.Now())
		delete(tr.portals, n)
	}
}

// stmtNameAfter reads the statement name of "PREPARE name ..." or
// "DEALLOCATE [PREPARE] name" as the server would (unquoted names folded to
// lower case), after leading blanks and comments.
func stmtNameAfter(s, verb string) (string, bool) {
	word := func() (string, bool) {
		s = skipBlank(s)
		if strings.HasPrefix(s, `"`) {
			var b strings.Builder
			for i := 1; i < len(s); i++ {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						b.WriteByte('"')
						i++
						continue
					}
					s = s[i+1:]
					return b.String(), b.Len() > 0
				}
				b.WriteByte(s[i])
			}
			return "", false
		}
		i := 0
		for i < len(s) && (isIdentCont(s[i]) && s[i] != '$' || i > 0 && s[i] == '$') {
			i++
		}
		w := s[:i]
		s = s[i:]
		if strings.HasPrefix(s, "&") {
			return "", false // U&"…": a name with Unicode escapes is not guessed
		}
		if w == "" || w[0] >= '0' && w[0] <= '9' || strings.IndexFunc(w, func(r rune) bool { return r >= utf8.RuneSelf }) >= 0 {
			// The server folds only ASCII letters in UTF-8 but every
			// letter in a single-byte encoding: not guessed.
			return "", false
		}
		return strings.ToLower(w), true
	}
	if w, ok := word(); !ok || w != strings.ToLower(verb) {
		return "", false
	}
	name, ok := word()
	if ok && verb == "DEALLOCATE" && name == "prepare" {
		rest := s
		if n, ok := word(); ok {
			name = n
		}
		s = rest
	}
	if !ok {
		return "", false
	}
	if len(name) > nameMax && strings.IndexFunc(name, func(r rune) bool { return r >= utf8.RuneSelf }) >= 0 {
		return "", false // the lexer cuts a long identifier at a character boundary, by encoding: not guessed
	}
	return serverName(name), true
}

// skipBlank skips white space and comments.
func skipBlank(s string) string {
	for {
		t := strings.TrimLeft(s, " \t\n\r\f\v")
		switch {
		case strings.HasPrefix(t, "--"):
			i := strings.IndexAny(t, "\n\r")
			if i < 0 {
				return ""
			}
			t = t[i:]
		case strings.HasPrefix(t, "/*"):
			depth, i := 0, 0
			for i < len(t) {
				if strings.HasPrefix(t[i:], "/*") {
					depth++
					i += 2
				} else if strings.HasPrefix(t[i:], "*/") {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
			t = t[i:]
		default:
			return t
		}
		s = t
	}
}

// execResult is the record of an Execute that completed (or failed),
// including the batches of earlier suspended Executes of its portal.
func (tr *tracker) execResult(p *pending, now time.Time, tag string, e serverError) audit.Query {
	ps := tr.portals[p.portal]
	switch {
	case ps == nil && e.code != "":
		ps = &portalState{} // refused (34000 for a portal that does not exist): nothing ran
	case ps == nil:
		ps = unknownPortal(p.portal)
	}
	ps.executed = true
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

// unmatched is the record of request p when the server's answers skipped
// it: the tracker lost step with the server somewhere, so it says so rather
// than drop the request.
func (tr *tracker) unmatched(p *pending, now time.Time) audit.Query {
	var q audit.Query
	switch p.kind {
	case 'Q':
		q = tr.make(p.sql, "simple", "", "", tr.startOf(p), now, "", serverError{})
	case 'E':
		ps := tr.portals[p.portal]
		if ps == nil {
			ps = unknownPortal(p.portal)
		}
		q = tr.make(ps.sql, "extended", ps.stmt, ps.params, tr.startOf(p), now, "", serverError{})
	default:
		q = tr.make(p.sql, "function", "", p.params, tr.startOf(p), now, "", serverError{})
	}
	q.Command, q.Rows, q.Error = Unanswered, -1, "no answer of the server could be matched to this request"
	return q
}

// NotExecuted is the Command of the record of a named portal made by a Bind
// and gone (closed, its transaction ended, the session ended) without an
// Execute of it: SQL FETCH or MOVE, or server-side code (a DO block, a
// function using a refcursor of that name), may have run it unseen.
const (
	NotExecuted        = "PORTAL NOT EXECUTED"
	notExecutedMessage = "a portal made by Bind was closed without an Execute: an SQL FETCH or MOVE, or server-side code, may have run it"
)

// closed adds to out what must be recorded of portal name as it goes: the
// rows of a suspended one, or the text of a named one made by a Bind and
// never executed by the protocol.
func (tr *tracker) closed(out []audit.Query, name string, ps *portalState, now time.Time) []audit.Query {
	switch {
	case ps.suspended:
		out = append(out, tr.unfinished(name, ps, now))
	case name != "" && ps.bound && !ps.executed:
		q := tr.make(ps.sql, "extended", ps.stmt, ps.params, now, now, "", serverError{})
		q.Command, q.Error = NotExecuted, notExecutedMessage
		out = append(out, q)
	}
	return out
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
		if lead := leadingVerb(sql.text); protocol == "extended" && lead != "" && rowVerbs[q.Command] && q.Command != "COPY" && q.Command != "FETCH" && q.Command != "MOVE" && lead != q.Command {
			// The server ran another kind of statement than the text recorded for it:
			// server-side code (a DO block, a function) replaced a prepared statement
			// unseen. The record keeps the server's command and says so.
			q.Error = fmt.Sprintf("ferry: the server ran a %s, but the recorded text is a %s: the statement was changed where the proxy cannot see it (e.g. by server-side code); the text may not be what ran", q.Command, lead)
		}
	}
	return q
}

// leadingVerb is the DML verb a statement text starts with (after white space,
// comments and opening parentheses), as its CommandComplete tag would name it:
// SELECT (also for VALUES and TABLE), INSERT, UPDATE, DELETE or MERGE; "" for
// any other start (WITH, EXPLAIN, CREATE, ...), whose tag can be anything.
func leadingVerb(sql string) string {
	for {
		sql = strings.TrimLeft(sql, " \t\r\n\f(")
		switch {
		case strings.HasPrefix(sql, "--"):
			i := strings.IndexAny(sql, "\r\n")
			if i < 0 {
				return ""
			}
			sql = sql[i:]
			continue
		case strings.HasPrefix(sql, "/*"):
			depth, i := 0, 0
			for i < len(sql) {
				switch {
				case strings.HasPrefix(sql[i:], "/*"):
					depth, i = depth+1, i+2
				case strings.HasPrefix(sql[i:], "*/"):
					depth, i = depth-1, i+2
				default:
					i++
				}
				if depth == 0 {
					break
				}
			}
			if depth != 0 {
				return ""
			}
			sql = sql[i:]
			continue
		}
		break
	}
	end := 0
	for end < len(sql) && (sql[end] >= 'a' && sql[end] <= 'z' || sql[end] >= 'A' && sql[end] <= 'Z') {
		end++
	}
	if end < len(sql) && sql[end] != ' ' && sql[end] != '\t' && sql[end] != '\r' && sql[end] != '\n' && sql[end] != '(' && sql[end] != '/' && sql[end] != '-' && sql[end] != ';' {
		return ""
	}
	switch w := strings.ToUpper(sql[:end]); w {
	case "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE":
		return w
	case "VALUES", "TABLE":
		return "SELECT"
	}
	return ""
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
// the server's lexer does, dropping empty and comment-only pieces; the server
// gives one result per piece. It follows string constants ('...'), with
// backslash escapes in E'...' and, when standard_conforming_strings is off
// (scs false), in plain and N'...' ones too; string continuation across a
// newline, which keeps the escape rule of the first part; B'...', X'...' and
// U&'...' strings; quoted identifiers; dollar quoting; -- comments (ended by
// a newline or carriage return) and nested /* */ comments. It does not know
// SQL-standard function bodies (BEGIN ATOMIC ... END); the records of such a
// string keep the whole text, as the counts then disagree.
func splitStatements(s string, scs bool) []string {
	var out []string
	start, code := 0, false
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == '\'':
			esc := !scs
			if i > 0 && (i < 2 || !isIdentCont(s[i-2])) {
				switch s[i-1] {
				case 'E', 'e':
					esc = true
				case 'B', 'b', 'X', 'x':
					esc = false
				}
			}
			if i > 1 && s[i-1] == '&' && (s[i-2] == 'U' || s[i-2] == 'u') && (i < 3 || !isIdentCont(s[i-3])) {
				esc = false // U&'' (refused by the server when standard_conforming_strings is off)
			}
			i = skipString(s, i, esc)
			code = true
		case c == '"':
			i++
			for i < len(s) && s[i] != '"' {
				i++
			}
			i++
			code = true
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' && s[i] != '\r' {
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
		case c == '$' && (i == 0 || !isIdentCont(s[i-1])):
			j := i + 1
			for j < len(s) && isIdentCont(s[j]) && s[j] != '$' && !(j == i+1 && s[j] >= '0' && s[j] <= '9') {
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
			if c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f' && c != '\v' {
				code = true
			}
			if isIdentCont(c) {
				// An identifier, keyword or number runs on through '$' and
				// letters, so a quote or '$' inside it starts nothing.
				for i < len(s) && isIdentCont(s[i]) {
					i++
				}
				if i < len(s) && s[i] == '\'' && i > 0 {
					// E'' B'' X'' N'': the prefix is the last letter alone only
					// when it is the whole word; handled by the quote case.
					w := i - 1
					for w > 0 && isIdentCont(s[w-1]) {
						w--
					}
					if i-w == 1 {
						continue
					}
					// A longer word before a quote (e.g. a type name as in
					// date '2025-01-01'): the quote opens a plain string.
					i = skipString(s, i, !scs)
				}
				continue
			}
			i++
		}
	}
	if code {
		out = append(out, strings.TrimSpace(s[start:]))
	}
	return out
}

// isIdentCont reports whether c can continue an identifier or keyword.
func isIdentCont(c byte) bool {
	return c == '_' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

// skipString returns the index after the string literal that opens at s[i]
// (a quote), with its continuations: a quote after white space holding a
// newline (and -- comments) continues the string (the lexer's quotecontinue).
// esc says a backslash escapes the next byte.
func skipString(s string, i int, esc bool) int {
	for {
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
		if i >= len(s) {
			return len(s)
		}
		i++ // past the closing quote
		j, newline := i, false
	blank:
		for j < len(s) {
			switch {
			case s[j] == '\n' || s[j] == '\r':
				newline = true
				j++
			case s[j] == ' ' || s[j] == '\t' || s[j] == '\f' || s[j] == '\v':
				j++
			case s[j] == '-' && j+1 < len(s) && s[j+1] == '-':
				for j < len(s) && s[j] != '\n' && s[j] != '\r' {
					j++
				}
			default:
				break blank
			}
		}
		if !newline || j >= len(s) || s[j] != '\'' {
			return i
		}
		i = j
	}
}

// abandon releases a request whose message never reached the server whole
// (the session is ending).
func (tr *tracker) abandon(p *pending) {
	if p != nil {
		p.abandoned = true
		tr.release(p)
	}
}

// Unanswered is the Command of the record of a request the server got but
// did not answer before the session ended: it may have run.
const (
	Unanswered        = "UNANSWERED"
	unansweredMessage = "the session ended before the server answered; the server may have run it"
)

// finish records what is left when the session ends, once both relay halves
// have stopped: every Query, Execute and FunctionCall that reached the server
// without an answer (a client can send a statement and hang up at once; the
// server still runs it), with Command Unanswered and the text the server
// would have run; the held records of a Query; and the rows of suspended
// portals. It returns the number of unanswered requests.
func (tr *tracker) finish() int {
	now := time.Now()
	tr.mu.Lock()
	var out []audit.Query
	// Parses and Binds still queued would have gone before a queued Execute.
	var stmts map[string]sqlCapture
	var portals map[string]*portalState
	text := func(name string) sqlCapture {
		if c, ok := stmts[name]; ok {
			return c
		}
		return tr.stmtText(name)
	}
	unanswered := 0
	add := func(q audit.Query) {
		q.Command, q.Rows, q.Error = Unanswered, -1, unansweredMessage
		out = append(out, q)
		unanswered++
	}
	for _, p := range tr.queue {
		for !p.ready {
			tr.filled.Wait()
		}
		if p.abandoned {
			continue
		}
		switch p.kind {
		case 'Q':
			tr.startQuery(p)
			answered := p.errored // the server stops a Query at its first error
			p.errored = true      // its statement count is unknown: whole texts
			out = tr.endQuery(out, p)
			if answered {
				continue
			}
			add(tr.make(p.sql, "simple", "", "", tr.startOf(p), now, "", serverError{}))
		case 'P':
			if _, exists := tr.stmts[p.stmt]; !exists || p.stmt == "" {
				if stmts == nil {
					stmts = map[string]sqlCapture{}
				}
				stmts[p.stmt] = p.sql
			}
		case 'B':
			if portals == nil {
				portals = map[string]*portalState{}
			}
			portals[p.portal] = &portalState{sql: text(p.stmt), stmt: p.stmt, params: p.params}
		case 'E':
			ps := portals[p.portal]
			if ps == nil {
				ps = tr.portals[p.portal]
			}
			if ps == nil {
				ps = unknownPortal(p.portal)
			}
			add(tr.make(ps.sql, "extended", ps.stmt, ps.params, tr.startOf(p), now, "", serverError{}))
		case 'F':
			add(tr.make(p.sql, "function", "", p.params, tr.startOf(p), now, "", serverError{}))
		}
	}
	clear(tr.queue)
	tr.queue = tr.queue[:0]
	out = append(tr.early, out...)
	tr.early = nil
	for name, ps := range tr.portals {
		out = tr.closed(out, name, ps, now)
		delete(tr.portals, name)
	}
	tr.mu.Unlock()
	for _, q := range out {
		tr.record(q)
	}
	return unanswered
}
