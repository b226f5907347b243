// Package audit keeps the node's connection log and query log in SQLite
// (modernc.org/sqlite, database/sql driver name "sqlite").
//
// The database file is shared with the node's catalog, so the tables carry an
// audit_ prefix and are created with CREATE TABLE IF NOT EXISTS.
//
// The log fails closed: a session that cannot be recorded does not run.
//
// Connection records: StartConnection and EndConnection write directly and
// synchronously, because the caller needs the row ID and because a
// connection's end must be durable before its session is reported as over;
// neither runs while a session relays. A failed write is retried
// (Options.WriteAttempts tries, waits from Options.RetryWait doubling); when
// it still fails the error wraps ErrUnavailable and is counted
// (Stats.ConnectionWriteFailures). The proxy refuses a session whose start
// cannot be recorded, before it logs in upstream.
//
// Query records go through a Recorder, one per connection. Each connection
// has an allowance of its own: at most Options.SessionQueue records and
// Options.SessionQueueBytes bytes of text waiting for the writer. Record
// queues a record at once while the connection is within its allowance and
// otherwise blocks that connection's caller (the proxy's relay of that
// session) until the writer has written some of its records, so a session
// that floods statements slows only itself: it can neither fill a queue
// other sessions need nor make their records be dropped. Nothing is dropped
// because a queue is full. One writer goroutine takes every queued record in
// turn, in batches of up to BatchSize rows per transaction, so a burst of
// statements costs one WAL commit instead of one each. An idle writer commits
// as soon as it has anything; a busy one (it wrote less than gatherWait, 2 ms,
// ago) waits gatherWait for more before a small batch, so a steady stream of
// sessions shares commits too (records reach the file within milliseconds). A batch that fails is retried like a connection record; if it
// still fails, each of its records is tried once on its own, so one bad
// record cannot take others with it. A query record that cannot be written
// then is counted (Stats.QueriesDropped, Stats.QueryWriteFailures, and the
// connection's Recorder.Close count, which the proxy stores in
// ConnectionEnd.QueriesDropped) and logged, and its connection's Recorder
// fails: the onFail function given to Recorder is called once (the proxy ends
// the session with FATAL 58030) and further Record calls return an error
// wrapping ErrUnavailable. Memory is bounded by the allowance times the
// number of open connections.
//
// Recorder.Close waits until every record of its connection has been written
// (only those: a flooding session does not hold up another's end), so a
// connection's queries are on disk when its end time is. Flush waits for
// everything queued before it; Close drains the queue and stops the writer.
//
// OpenDB uses synchronous=NORMAL with WAL: commits survive a crash of the
// node process; a power loss of the VM may lose the last commits (SQLite
// documentation, "PRAGMA synchronous").
package audit

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryhq/ferry/node/store"
)

// Outcomes of a connection as stored in Connection.Outcome.
const (
	OutcomeOK     = "ok"     // the login upstream succeeded and the session was relayed
	OutcomeDenied = "denied" // refused by policy: the proxy's own checks or the server's authentication (SQLSTATE class 28)
	OutcomeFailed = "failed" // could not be served: token source, network, TLS, protocol errors

	// A session relayed until the node ended it by policy (the login succeeded, as with ok).
	OutcomeRevoked   = "revoked"   // the user's access to the resource was revoked
	OutcomeSuspended = "suspended" // the user was suspended
	OutcomeRemoved   = "removed"   // the device or the user was removed
	OutcomeDeleted   = "deleted"   // the resource was deleted
)

// timeLayout is fixed-width so that the TEXT columns sort in time order.
const timeLayout = "2006-01-02T15:04:05.000000000Z"

// BatchSize is the most query rows written in one transaction.
const BatchSize = 1024

// Defaults of Options.
const (
	DefaultSessionQueue      = 1024    // query records of one connection waiting to be written
	DefaultSessionQueueBytes = 4 << 20 // bytes of text (SQL, parameters, error) of them
	DefaultWriteAttempts     = 5       // tries of one write before it counts as failed
	DefaultRetryWait         = 100 * time.Millisecond
)

// recordOverhead is what a queued record is counted for besides its text, in bytes.
const recordOverhead = 256

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("audit: log is closed")

// ErrUnavailable is wrapped by the errors of writes that failed after their
// retries, and returned by a Recorder once one of its records could not be
// written: the audit log cannot record what the session does.
var ErrUnavailable = errors.New("audit: the audit log is unavailable")

// Options tune a Log; zero fields take the defaults.
type Options struct {
	Logger *slog.Logger // for write failures; nil = slog.Default()
	// SessionQueue and SessionQueueBytes are one connection's allowance of
	// records (and bytes of their text) waiting for the writer, beyond which
	// Recorder.Record waits. A record larger than SessionQueueBytes is
	// queued alone.
	SessionQueue      int
	SessionQueueBytes int
	// WriteAttempts is how many times a write is tried; RetryWait is the
	// wait after the first failed try, doubled after each further one.
	WriteAttempts int
	RetryWait     time.Duration

	// noGather turns the writer's gather window (gatherWait below) off, for the benchmark
	// that compares the two.
	noGather bool
}

// gatherWait: while the writer is busy (its previous batch was written less than gatherWait
// ago) and has taken fewer than gatherFew records, it waits gatherWait for more before writing
// them. Each transaction costs the same whatever its size (BEGIN IMMEDIATE, and at commit the
// WAL frames of the whole pages it changed: the table's and each index's last leaf), which under
// a steady stream of sessions was most of the writer's CPU with one record per transaction. An
// idle log writes at once; a busy one lets records wait at most about gatherWait more before
// they reach the file (Recorder.Close and Flush still wait for them, so no promise changes).
const (
	gatherWait = 2 * time.Millisecond
	gatherFew  = 64
)

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.SessionQueue <= 0 {
		o.SessionQueue = DefaultSessionQueue
	}
	if o.SessionQueueBytes <= 0 {
		o.SessionQueueBytes = DefaultSessionQueueBytes
	}
	if o.WriteAttempts <= 0 {
		o.WriteAttempts = DefaultWriteAttempts
	}
	if o.RetryWait <= 0 {
		o.RetryWait = DefaultRetryWait
	}
	return o
}

// Stats are the log's counters since Open.
type Stats struct {
	Queued         int64 // query records waiting to be written now
	QueriesDropped int64 // query records never written: their write failed, their session's log had failed, or the log was closed
	// QueryWriteFailures counts query records whose write failed after its
	// retries; ConnectionWriteFailures connection starts and ends.
	QueryWriteFailures, ConnectionWriteFailures int64
	WriteRetries                                int64 // failed tries of a write that were tried again
	SessionWaits                                int64 // times a Record waited for its session's allowance (backpressure)
}

// Connection is one client connection through the proxy.
type Connection struct {
	ID         int64
	Start, End time.Time // End is the zero time while the connection is open
	User       string    // the Ferry user (identified by the tunnel peer)
	Resource   string    // the resource name
	ClientAddr string    // the client's tunnel address, "ip:port"
	// OriginalUser and OriginalDatabase are the "user" and "database"
	// parameters of the client's StartupMessage, as sent.
	OriginalUser, OriginalDatabase string
	// Role and Database are what the proxy logged in upstream with (the
	// resource's username, formatted; the chosen database).
	Role     string
	Database string
	ConnectionEnd
}

// Duration is End - Start, or 0 while the connection is open.
func (c Connection) Duration() time.Duration {
	if c.End.IsZero() {
		return 0
	}
	return c.End.Sub(c.Start)
}

// ConnectionEnd is what is known when a connection ends.
type ConnectionEnd struct {
	Outcome  string // OutcomeOK, OutcomeDenied, OutcomeFailed, or why the node ended it (OutcomeRevoked ...); "" while open
	Error    string // why the connection was refused or ended abnormally; "" otherwise
	SQLState string // SQLSTATE of the refusal, or of the server's FATAL that ended the session; "" otherwise
	// UpstreamPID is the server's backend process ID (BackendKeyData), 0 if the login did not succeed.
	UpstreamPID uint32
	// BytesFromClient and BytesFromServer count the relayed protocol bytes
	// after login (client to server, server to client).
	BytesFromClient, BytesFromServer int64
	// QueriesDropped counts the query records of this connection lost to a full queue.
	QueriesDropped int64
}

// Query is one executed statement: one result of a simple-protocol Query
// message (a string of several statements gives one record each), one
// extended-protocol Execute run to completion (all its PortalSuspended
// batches included), one failed Parse or Bind, or one FunctionCall
// (PostgreSQL protocol §55.2.2, §55.2.3, §55.2.6).
type Query struct {
	ID, ConnectionID int64
	Time             time.Time     // when the statement started (the later of its message's arrival and the previous statement's end)
	Duration         time.Duration // until CommandComplete, EmptyQueryResponse, ErrorResponse or the final PortalSuspended/CommandComplete
	User, Resource   string
	// SQL is the statement text, cut to the proxy's configured limit. When it
	// was cut, SQLLength is the original length in bytes and SQLSHA256 the
	// hex SHA-256 of the whole original text; both are 0/"" otherwise.
	SQL       string
	SQLLength int64
	SQLSHA256 string
	Protocol  string // "simple" (Query 'Q'), "extended" (Parse/Bind/Execute) or "function" (FunctionCall 'F'); "" is stored as "simple"
	Statement string // extended protocol: the prepared statement's name ("" = unnamed)
	Params    string // extended protocol: the Bind parameters, e.g. `$1='abc' $2=NULL $3='\x00ff'`, or "[redacted]"
	Command   string // the command tag's verb (SELECT, INSERT, COPY, ...); "" on error
	Rows      int64  // rows from the command tag (SELECT n, INSERT 0 n, COPY n, ...); -1 when the tag has none
	SQLState  string // SQLSTATE of the ErrorResponse; "" on success
	Error     string // the ErrorResponse's message; "" on success
}

// ConnectionFilter selects connections; zero fields match everything.
type ConnectionFilter struct {
	User, Resource string
	Since, Until   time.Time // start time in [Since, Until)
	Limit          int       // at most this many rows, newest first; 0 = 1000
}

// QueryFilter selects queries; zero fields match everything.
type QueryFilter struct {
	User, Resource string
	ConnectionID   int64
	Since, Until   time.Time // start time in [Since, Until)
	Limit          int       // at most this many rows, newest first; 0 = 1000
}

// Log is the audit log. It is safe for concurrent use.
type Log struct {
	db     *sql.DB
	logger *slog.Logger
	opts   Options
	insert *sql.Stmt // insertQuerySQL, prepared on db; closed by Close

	mu      sync.Mutex // guards the fields below and every Recorder's counts
	pending []entry    // queued records the writer has not taken yet
	closed  bool
	queued  uint64 // records queued since Open
	settled uint64 // of them, those written or failed
	flushes []flushWait
	lastErr error // the first write error since the previous Flush

	wake    chan struct{} // capacity 1: something was queued, or Close
	stopped chan struct{} // closed when the writer has returned

	depth                        atomic.Int64
	dropped, queryFailures       atomic.Int64
	connFailures, retries, waits atomic.Int64
}

// entry is a queued query record.
type entry struct {
	q    Query
	rec  *Recorder
	size int
}

// flushWait is a Flush waiting until the first seq records are settled.
type flushWait struct {
	seq uint64
	ch  chan error
}

const schema = `
CREATE TABLE IF NOT EXISTS audit_connections (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	start_time  TEXT NOT NULL,
	end_time    TEXT,
	user_name   TEXT NOT NULL,
	resource    TEXT NOT NULL,
	client_addr TEXT NOT NULL,
	database    TEXT NOT NULL,
	outcome     TEXT NOT NULL DEFAULT '',
	error       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_connections_user ON audit_connections(user_name, id);
CREATE INDEX IF NOT EXISTS audit_connections_resource ON audit_connections(resource, id);
CREATE TABLE IF NOT EXISTS audit_queries (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	connection_id INTEGER NOT NULL REFERENCES audit_connections(id) ON DELETE CASCADE,
	time          TEXT NOT NULL,
	user_name     TEXT NOT NULL,
	resource      TEXT NOT NULL,
	protocol      TEXT NOT NULL DEFAULT 'simple',
	sql           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_queries_connection ON audit_queries(connection_id, id);
CREATE INDEX IF NOT EXISTS audit_queries_user ON audit_queries(user_name, id);
CREATE INDEX IF NOT EXISTS audit_queries_resource ON audit_queries(resource, id);
`

// addedColumns are columns added after the first release; Open adds those a
// database lacks (ALTER TABLE ... ADD COLUMN).
var addedColumns = []struct{ table, column, def string }{
	{"audit_connections", "original_user", "TEXT NOT NULL DEFAULT ''"},
	{"audit_connections", "original_database", "TEXT NOT NULL DEFAULT ''"},
	{"audit_connections", "role", "TEXT NOT NULL DEFAULT ''"},
	{"audit_connections", "sqlstate", "TEXT NOT NULL DEFAULT ''"},
	{"audit_connections", "upstream_pid", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_connections", "bytes_from_client", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_connections", "bytes_from_server", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_connections", "queries_dropped", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_queries", "duration_us", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_queries", "sql_length", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_queries", "sql_sha256", "TEXT NOT NULL DEFAULT ''"},
	{"audit_queries", "statement", "TEXT NOT NULL DEFAULT ''"},
	{"audit_queries", "params", "TEXT NOT NULL DEFAULT ''"},
	{"audit_queries", "command", "TEXT NOT NULL DEFAULT ''"},
	{"audit_queries", "rows", "INTEGER NOT NULL DEFAULT -1"},
	{"audit_queries", "sqlstate", "TEXT NOT NULL DEFAULT ''"},
	{"audit_queries", "error", "TEXT NOT NULL DEFAULT ''"},
}

func migrate(ctx context.Context, db *sql.DB) error {
	have := map[string]bool{}
	for _, table := range []string{"audit_connections", "audit_queries"} {
		rows, err := db.QueryContext(ctx, `SELECT name FROM pragma_table_info(?)`, table)
		if err != nil {
			return fmt.Errorf("read columns of %s: %w", table, err)
		}
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				rows.Close()
				return fmt.Errorf("read columns of %s: %w", table, err)
			}
			have[table+"."+name] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read columns of %s: %w", table, err)
		}
	}
	for _, c := range addedColumns {
		if have[c.table+"."+c.column] {
			continue
		}
		if _, err := db.ExecContext(ctx, `ALTER TABLE `+c.table+` ADD COLUMN `+c.column+` `+c.def); err != nil {
			return fmt.Errorf("add column %s.%s: %w", c.table, c.column, err)
		}
	}
	return nil
}

// OpenDB opens (creating if needed) the SQLite file at path with the node's settings; it is
// store.OpenSQLite, which says what they are.
func OpenDB(path string) (*sql.DB, error) { return store.OpenSQLite(path) }

// Open creates the audit tables in db if they are missing and starts the
// query writer, with the default Options. The caller keeps ownership of db;
// Close does not close it.
func Open(ctx context.Context, db *sql.DB) (*Log, error) {
	return OpenWithOptions(ctx, db, Options{})
}

// OpenWithLogger is Open with a logger for write failures (nil = slog.Default()).
func OpenWithLogger(ctx context.Context, db *sql.DB, logger *slog.Logger) (*Log, error) {
	return OpenWithOptions(ctx, db, Options{Logger: logger})
}

// OpenWithOptions is Open with Options.
func OpenWithOptions(ctx context.Context, db *sql.DB, opts Options) (*Log, error) {
	opts = opts.withDefaults()
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return nil, fmt.Errorf("create audit tables: %w", err)
	}
	if err := migrate(ctx, db); err != nil {
		return nil, fmt.Errorf("upgrade audit tables: %w", err)
	}
	insert, err := db.PrepareContext(ctx, insertQuerySQL)
	if err != nil {
		return nil, fmt.Errorf("prepare query insert: %w", err)
	}
	l := &Log{db: db, logger: opts.Logger, opts: opts, insert: insert, wake: make(chan struct{}, 1), stopped: make(chan struct{})}
	go l.writer()
	return l, nil
}

// insertQuerySQL writes one query record. The writer prepares it once (Log.insert) and runs it in
// each batch's transaction: SQLite compiles it again by itself should the schema change.
const insertQuerySQL = `INSERT INTO audit_queries
		(connection_id, time, user_name, resource, protocol, sql, duration_us, sql_length, sql_sha256,
		 statement, params, command, rows, sqlstate, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// retry runs write until it succeeds, up to Options.WriteAttempts times,
// waiting between tries (Options.RetryWait, doubled each time) unless ctx
// ends. It returns the last error.
func (l *Log) retry(ctx context.Context, what string, write func(context.Context) error) error {
	wait := l.opts.RetryWait
	for attempt := 1; ; attempt++ {
		err := write(ctx)
		if err == nil || attempt >= l.opts.WriteAttempts || ctx.Err() != nil {
			return err
		}
		l.retries.Add(1)
		l.logger.Warn("audit: write failed; trying again", "what", what, "attempt", attempt, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		wait *= 2
	}
}

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func parseTime(s sql.NullString) time.Time {
	if !s.Valid || s.String == "" {
		return time.Time{}
	}
	t, err := time.Parse(timeLayout, s.String)
	if err != nil {
		return time.Time{}
	}
	return t
}

// StartConnection records the start of a connection and returns its ID. A
// write that fails after its retries returns an error wrapping ErrUnavailable.
func (l *Log) StartConnection(ctx context.Context, c Connection) (int64, error) {
	if c.Start.IsZero() {
		c.Start = time.Now()
	}
	var end any
	if !c.End.IsZero() {
		end = formatTime(c.End)
	}
	var id int64
	err := l.retry(ctx, "connection start", func(ctx context.Context) error {
		res, err := l.db.ExecContext(ctx, `INSERT INTO audit_connections
		(start_time, end_time, user_name, resource, client_addr, database, outcome, error,
		 original_user, original_database, role, sqlstate, upstream_pid, bytes_from_client, bytes_from_server, queries_dropped)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			formatTime(c.Start), end, c.User, c.Resource, c.ClientAddr, c.Database, c.Outcome, c.Error,
			c.OriginalUser, c.OriginalDatabase, c.Role, c.SQLState, int64(c.UpstreamPID), c.BytesFromClient, c.BytesFromServer, c.QueriesDropped)
		if err != nil {
			return err
		}
		id, err = res.LastInsertId()
		return err
	})
	if err != nil {
		l.connFailures.Add(1)
		return 0, fmt.Errorf("record connection start of %s to %s: %w (%w)", c.User, c.Resource, ErrUnavailable, err)
	}
	return id, nil
}

// EndConnection records the end of connection id at time end. It does not
// wait for the connection's queries: close its Recorder first. A write that
// fails after its retries returns an error wrapping ErrUnavailable.
func (l *Log) EndConnection(ctx context.Context, id int64, end time.Time, e ConnectionEnd) error {
	var n int64
	err := l.retry(ctx, "connection end", func(ctx context.Context) error {
		res, err := l.db.ExecContext(ctx, `UPDATE audit_connections SET end_time = ?, outcome = ?, error = ?,
		sqlstate = ?, upstream_pid = ?, bytes_from_client = ?, bytes_from_server = ?, queries_dropped = ? WHERE id = ?`,
			formatTime(end), e.Outcome, e.Error, e.SQLState, int64(e.UpstreamPID), e.BytesFromClient, e.BytesFromServer, e.QueriesDropped, id)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		l.connFailures.Add(1)
		return fmt.Errorf("record end of connection %d: %w (%w)", id, ErrUnavailable, err)
	}
	if n == 0 {
		return fmt.Errorf("record end of connection %d: no such connection", id)
	}
	return nil
}

// Recorder queues the query records of one connection. Record and Close may
// be called from several goroutines.
type Recorder struct {
	l      *Log
	id     int64
	onFail func(error)

	// Guarded by l.mu.
	n, bytes int           // records queued and not settled, and their size
	room     chan struct{} // closed when one settles; nil while nobody waits
	err      error         // why a record of this connection could not be written

	dropped atomic.Int64
}

// Recorder returns the recorder of connection id (the ID StartConnection
// gave). onFail, if not nil, is called once, from the writer, when a record
// of the connection could not be written: the caller should end the session,
// which now runs unaudited.
func (l *Log) Recorder(id int64, onFail func(error)) *Recorder {
	return &Recorder{l: l, id: id, onFail: onFail}
}

// Record queues q (its ConnectionID set to the recorder's). While the
// connection is over its allowance it waits until the writer has written
// some of its records; once ctx is done it stops waiting and queues q anyway
// (the session is ending, and its last records must not be lost). It returns
// an error, and counts q as dropped, when the recorder has failed (wrapping
// ErrUnavailable) or the log is closed (ErrClosed). It does not allocate
// unless it has to wait.
func (r *Recorder) Record(ctx context.Context, q Query) error {
	if q.Time.IsZero() {
		q.Time = time.Now()
	}
	if q.Protocol == "" {
		q.Protocol = "simple"
	}
	q.ConnectionID = r.id
	size := recordOverhead + len(q.SQL) + len(q.Params) + len(q.Error) + len(q.SQLSHA256) + len(q.Statement)
	l := r.l
	waited := false
	l.mu.Lock()
	for {
		var err error
		switch {
		case l.closed:
			err = ErrClosed
		case r.err != nil:
			err = r.err
		case r.n == 0 || (r.n < l.opts.SessionQueue && r.bytes+size <= l.opts.SessionQueueBytes) || ctx.Err() != nil:
			l.pending = append(l.pending, entry{q: q, rec: r, size: size})
			l.queued++
			r.n++
			r.bytes += size
			l.depth.Add(1)
			l.mu.Unlock()
			select {
			case l.wake <- struct{}{}:
			default:
			}
			return nil
		default:
			if r.room == nil {
				r.room = make(chan struct{})
			}
			room := r.room
			l.mu.Unlock()
			if !waited {
				waited = true
				l.waits.Add(1)
			}
			select {
			case <-room:
			case <-ctx.Done():
			}
			l.mu.Lock()
			continue
		}
		l.mu.Unlock()
		r.dropped.Add(1)
		l.dropped.Add(1)
		return err
	}
}

// Close waits until every record queued by r has been written or has failed,
// or until ctx is done, and returns how many of the connection's records were
// not written: dropped, or (when ctx ended first) still waiting.
func (r *Recorder) Close(ctx context.Context) int64 {
	l := r.l
	l.mu.Lock()
	for r.n > 0 {
		if r.room == nil {
			r.room = make(chan struct{})
		}
		room := r.room
		l.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			l.mu.Lock()
			waiting := r.n
			l.mu.Unlock()
			l.logger.Error("audit: connection ended with query records still unwritten", "connection", r.id, "count", waiting, "err", ctx.Err())
			return r.dropped.Load() + int64(waiting)
		}
		l.mu.Lock()
	}
	l.mu.Unlock()
	return r.dropped.Load()
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	return Stats{
		Queued: l.depth.Load(), QueriesDropped: l.dropped.Load(),
		QueryWriteFailures: l.queryFailures.Load(), ConnectionWriteFailures: l.connFailures.Load(),
		WriteRetries: l.retries.Load(), SessionWaits: l.waits.Load(),
	}
}

// Dropped is how many query records were never written since Open.
func (l *Log) Dropped() int64 { return l.dropped.Load() }

// QueueDepth is the number of queries waiting to be written.
func (l *Log) QueueDepth() int { return int(l.depth.Load()) }

// Flush waits until every query queued before the call has been written or
// has failed. It returns the first write error seen since the previous Flush,
// if any.
func (l *Log) Flush(ctx context.Context) error {
	ch := make(chan error, 1)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	if l.settled == l.queued {
		err := l.lastErr
		l.lastErr = nil
		l.mu.Unlock()
		return err
	}
	l.flushes = append(l.flushes, flushWait{seq: l.queued, ch: ch})
	l.mu.Unlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return fmt.Errorf("audit: flush: %w", ctx.Err())
	}
}

// Close writes every queued query and stops the writer. It does not close the
// shared *sql.DB. Further writes return ErrClosed. It returns the first write
// error since the last Flush, if any.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	<-l.stopped
	l.insert.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastErr
}

// writer takes every queued record in turn and writes it, BatchSize rows per
// transaction, until Close.
func (l *Log) writer() {
	defer close(l.stopped)
	var batch []entry
	var qs []Query
	var failed []bool
	var lastWrite time.Time
	for {
		l.mu.Lock()
		batch, l.pending = l.pending, batch[:0]
		closed := l.closed
		l.mu.Unlock()
		if n := len(batch); n > 0 && n < gatherFew && !closed && !l.opts.noGather && time.Since(lastWrite) < gatherWait {
			time.Sleep(gatherWait)
			l.mu.Lock()
			batch = append(batch, l.pending...)
			clear(l.pending)
			l.pending = l.pending[:0]
			l.mu.Unlock()
		}
		if len(batch) == 0 {
			if closed {
				l.mu.Lock()
				for _, f := range l.flushes {
					f.ch <- ErrClosed
				}
				l.flushes = nil
				l.mu.Unlock()
				return
			}
			<-l.wake
			continue
		}
		for i := 0; i < len(batch); i += BatchSize {
			chunk := batch[i:min(len(batch), i+BatchSize)]
			qs = qs[:0]
			for _, e := range chunk {
				qs = append(qs, e.q)
			}
			var err error
			failed, err = l.write(qs, failed[:0])
			l.settle(chunk, failed, err)
			lastWrite = time.Now()
			clear(qs)
			clear(chunk)
		}
		batch = batch[:0]
		if cap(batch) > 4*BatchSize {
			batch = nil // after a burst, do not keep a large buffer
		}
	}
}

// oneByOneBudget bounds the record-by-record tries after a batch failed, so
// that a hung store fails the batch in bounded time instead of once per record.
const oneByOneBudget = 10 * time.Second

// write writes qs in one transaction, with retries; when that fails it tries
// each record once on its own (for at most oneByOneBudget; records not tried
// by then fail). It returns, per record, whether it failed (appended to
// failed), and the last error; nil, nil when all were written.
func (l *Log) write(qs []Query, failed []bool) ([]bool, error) {
	ctx := context.Background()
	err := l.retry(ctx, "query records", func(context.Context) error { return l.insertOnce(qs) })
	if err == nil {
		return nil, nil
	}
	l.logger.Error("audit: write query records failed; writing them one by one", "count", len(qs), "err", err)
	var last error
	deadline := time.Now().Add(oneByOneBudget)
	for i := range qs {
		e := err
		if time.Now().Before(deadline) {
			e = l.insertOnce(qs[i : i+1])
		}
		failed = append(failed, e != nil)
		if e != nil {
			last = e
		}
	}
	if last == nil {
		return nil, nil
	}
	return failed, last
}

// settle accounts for written (failed[i] false, or failed nil) and failed
// records: their recorders' allowances, drops, Flush waiters.
func (l *Log) settle(es []entry, failed []bool, err error) {
	var broken []*Recorder
	l.mu.Lock()
	if err != nil && l.lastErr == nil {
		l.lastErr = err
	}
	lost := 0
	for i, e := range es {
		r := e.rec
		r.n--
		r.bytes -= e.size
		if failed != nil && failed[i] {
			lost++
			r.dropped.Add(1)
			if r.err == nil {
				r.err = fmt.Errorf("record query of connection %d: %w (%w)", r.id, ErrUnavailable, err)
				broken = append(broken, r)
			}
		}
		if r.room != nil {
			close(r.room)
			r.room = nil
		}
	}
	l.settled += uint64(len(es))
	l.depth.Add(-int64(len(es)))
	kept := l.flushes[:0]
	for _, f := range l.flushes {
		if f.seq <= l.settled {
			f.ch <- l.lastErr
			l.lastErr = nil
		} else {
			kept = append(kept, f)
		}
	}
	l.flushes = kept
	l.mu.Unlock()
	if lost > 0 {
		l.dropped.Add(int64(lost))
		l.queryFailures.Add(int64(lost))
		l.logger.Error("audit: query records could not be written and are lost", "count", lost, "err", err)
	}
	for _, r := range broken {
		if r.onFail != nil {
			r.onFail(r.err)
		}
	}
}

func (l *Log) insertOnce(batch []Query) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin query insert: %w", err)
	}
	defer tx.Rollback()
	// Prepared once per pooled connection (database/sql keeps it), not once per batch.
	stmt := tx.StmtContext(ctx, l.insert)
	defer stmt.Close()
	for _, q := range batch {
		if _, err := stmt.ExecContext(ctx, q.ConnectionID, formatTime(q.Time), q.User, q.Resource, q.Protocol, q.SQL,
			q.Duration.Microseconds(), q.SQLLength, q.SQLSHA256, q.Statement, q.Params, q.Command, q.Rows, q.SQLState, q.Error); err != nil {
			return fmt.Errorf("insert query of connection %d: %w", q.ConnectionID, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit query insert: %w", err)
	}
	return nil
}

func limitOf(n int) int {
	if n <= 0 {
		return 1000
	}
	return n
}

// Connections returns the connections matching filter, newest first.
func (l *Log) Connections(ctx context.Context, filter ConnectionFilter) ([]Connection, error) {
	q := `SELECT id, start_time, end_time, user_name, resource, client_addr, database, outcome, error,
		original_user, original_database, role, sqlstate, upstream_pid, bytes_from_client, bytes_from_server, queries_dropped
		FROM audit_connections WHERE 1=1`
	q, args := where(q, filter.User, filter.Resource, "start_time", filter.Since, filter.Until)
	q += ` ORDER BY id DESC LIMIT ?`
	args = append(args, limitOf(filter.Limit))
	rows, err := l.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list audit connections: %w", err)
	}
	defer rows.Close()
	var out []Connection
	for rows.Next() {
		var c Connection
		var start, end sql.NullString
		var pid int64
		if err := rows.Scan(&c.ID, &start, &end, &c.User, &c.Resource, &c.ClientAddr, &c.Database, &c.Outcome, &c.Error,
			&c.OriginalUser, &c.OriginalDatabase, &c.Role, &c.SQLState, &pid, &c.BytesFromClient, &c.BytesFromServer, &c.QueriesDropped); err != nil {
			return nil, fmt.Errorf("list audit connections: %w", err)
		}
		c.Start, c.End = parseTime(start), parseTime(end)
		c.UpstreamPID = uint32(pid)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list audit connections: %w", err)
	}
	return out, nil
}

// where appends the common filter conditions to q.
func where(q, user, resource, timeCol string, since, until time.Time) (string, []any) {
	var args []any
	if user != "" {
		q += ` AND user_name = ?`
		args = append(args, user)
	}
	if resource != "" {
		q += ` AND resource = ?`
		args = append(args, resource)
	}
	if !since.IsZero() {
		q += ` AND ` + timeCol + ` >= ?`
		args = append(args, formatTime(since))
	}
	if !until.IsZero() {
		q += ` AND ` + timeCol + ` < ?`
		args = append(args, formatTime(until))
	}
	return q, args
}

// Queries returns the queries matching filter, newest first. Queries still in
// the write queue are not included; call Flush first to see them.
func (l *Log) Queries(ctx context.Context, filter QueryFilter) ([]Query, error) {
	q := `SELECT id, connection_id, time, user_name, resource, protocol, sql, duration_us, sql_length, sql_sha256,
		statement, params, command, rows, sqlstate, error FROM audit_queries WHERE 1=1`
	q, args := where(q, filter.User, filter.Resource, "time", filter.Since, filter.Until)
	if filter.ConnectionID != 0 {
		q += ` AND connection_id = ?`
		args = append(args, filter.ConnectionID)
	}
	q += ` ORDER BY id DESC LIMIT ?`
	args = append(args, limitOf(filter.Limit))
	rows, err := l.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list audit queries: %w", err)
	}
	defer rows.Close()
	var out []Query
	for rows.Next() {
		var r Query
		var t sql.NullString
		var us int64
		if err := rows.Scan(&r.ID, &r.ConnectionID, &t, &r.User, &r.Resource, &r.Protocol, &r.SQL, &us, &r.SQLLength, &r.SQLSHA256,
			&r.Statement, &r.Params, &r.Command, &r.Rows, &r.SQLState, &r.Error); err != nil {
			return nil, fmt.Errorf("list audit queries: %w", err)
		}
		r.Time = parseTime(t)
		r.Duration = time.Duration(us) * time.Microsecond
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list audit queries: %w", err)
	}
	return out, nil
}
