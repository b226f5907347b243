// Package audit keeps the node's connection log and query log in SQLite
// (modernc.org/sqlite, database/sql driver name "sqlite").
//
// The database file is shared with the node's catalog, so the tables carry an
// audit_ prefix and are created with CREATE TABLE IF NOT EXISTS.
//
// Write path (the choice the proxy relies on): StartConnection and
// EndConnection write directly and synchronously, because the caller needs the
// row ID and because a connection's end must be durable before its session is
// reported as over; neither runs while a session relays. RecordQuery never
// blocks: it puts the record on a bounded queue (QueueSize records) that one
// writer goroutine drains in batches of up to BatchSize rows per transaction,
// so a burst of statements costs one WAL commit instead of one each, and the
// writer commits as soon as it has anything (records reach the file within
// milliseconds, not on a timer). When the queue is full RecordQuery drops the
// record and returns ErrQueueFull: a slow disk must never stall a database
// session. Drops are counted node-wide (Dropped) and per connection (the
// caller stores its count in ConnectionEnd.QueriesDropped, so the connection
// record says that its query list is incomplete). EndConnection first waits
// until every query queued before it has been written, so a connection's
// queries are always on disk when its end time is. Flush waits for the queue
// to drain; Close drains it and stops the writer.
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
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Outcomes of a connection as stored in Connection.Outcome.
const (
	OutcomeOK     = "ok"     // the login upstream succeeded and the session was relayed
	OutcomeDenied = "denied" // refused by policy: the proxy's own checks or the server's authentication (SQLSTATE class 28)
	OutcomeFailed = "failed" // could not be served: token source, network, TLS, protocol errors
)

// timeLayout is fixed-width so that the TEXT columns sort in time order.
const timeLayout = "2006-01-02T15:04:05.000000000Z"

// QueueSize is how many query records may wait for the writer; BatchSize is
// the most rows written in one transaction.
const (
	QueueSize = 16384
	BatchSize = 1024
)

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("audit: log is closed")

// ErrQueueFull is returned by RecordQuery when the record was dropped because
// the writer is behind by QueueSize records.
var ErrQueueFull = errors.New("audit: query queue is full; record dropped")

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
	Outcome  string // OutcomeOK, OutcomeDenied or OutcomeFailed; "" while open
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

	queue chan item
	done  chan struct{}

	mu      sync.RWMutex // guards closed against sends on queue
	closed  bool
	dropped atomic.Int64
	errMu   sync.Mutex
	lastErr error
}

// item is a queued query, or (when flushed != nil) a flush marker.
type item struct {
	q       Query
	flushed chan error
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

// OpenDB opens (creating if needed) the SQLite file at path with the settings
// the node uses for its shared database: WAL journal, busy_timeout 5000 ms,
// foreign keys on, and BEGIN IMMEDIATE for write transactions.
//
// The database holds every user, device and statement, so its files are 0600: a new file is created
// with that mode before SQLite opens it (SQLite would make it 0644 less the umask), and SQLite gives
// the -wal and -shm files it creates the main file's mode; any of the three that is looser after the
// open is restricted to 0600.
func OpenDB(path string) (*sql.DB, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		f.Close()
	} else if !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create sqlite database %s: %w", path, err)
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite database %s: %w", path, err)
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open sqlite database %s: %w", path, err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&^0o600 == 0 {
			continue
		}
		if err := os.Chmod(p, fi.Mode().Perm()&0o600); err != nil {
			db.Close()
			return nil, fmt.Errorf("open sqlite database: restrict %s to mode 0600: %w", p, err)
		}
	}
	return db, nil
}

// Open creates the audit tables in db if they are missing and starts the
// query writer. The caller keeps ownership of db; Close does not close it.
func Open(ctx context.Context, db *sql.DB) (*Log, error) {
	return OpenWithLogger(ctx, db, nil)
}

// OpenWithLogger is Open with a logger for write failures (nil = slog.Default()).
func OpenWithLogger(ctx context.Context, db *sql.DB, logger *slog.Logger) (*Log, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return nil, fmt.Errorf("create audit tables: %w", err)
	}
	if err := migrate(ctx, db); err != nil {
		return nil, fmt.Errorf("upgrade audit tables: %w", err)
	}
	l := &Log{db: db, logger: logger, queue: make(chan item, QueueSize), done: make(chan struct{})}
	go l.writer()
	return l, nil
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

// StartConnection records the start of a connection and returns its ID.
func (l *Log) StartConnection(ctx context.Context, c Connection) (int64, error) {
	if c.Start.IsZero() {
		c.Start = time.Now()
	}
	var end any
	if !c.End.IsZero() {
		end = formatTime(c.End)
	}
	res, err := l.db.ExecContext(ctx, `INSERT INTO audit_connections
		(start_time, end_time, user_name, resource, client_addr, database, outcome, error,
		 original_user, original_database, role, sqlstate, upstream_pid, bytes_from_client, bytes_from_server, queries_dropped)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		formatTime(c.Start), end, c.User, c.Resource, c.ClientAddr, c.Database, c.Outcome, c.Error,
		c.OriginalUser, c.OriginalDatabase, c.Role, c.SQLState, int64(c.UpstreamPID), c.BytesFromClient, c.BytesFromServer, c.QueriesDropped)
	if err != nil {
		return 0, fmt.Errorf("record connection start of %s to %s: %w", c.User, c.Resource, err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("record connection start of %s to %s: %w", c.User, c.Resource, err)
	}
	return id, nil
}

// EndConnection records the end of connection id at time end, after writing
// every query queued before the call.
func (l *Log) EndConnection(ctx context.Context, id int64, end time.Time, e ConnectionEnd) error {
	if err := l.Flush(ctx); err != nil && !errors.Is(err, ErrClosed) {
		l.logger.Warn("audit: queries before connection end not all written", "connection", id, "err", err)
	}
	res, err := l.db.ExecContext(ctx, `UPDATE audit_connections SET end_time = ?, outcome = ?, error = ?,
		sqlstate = ?, upstream_pid = ?, bytes_from_client = ?, bytes_from_server = ?, queries_dropped = ? WHERE id = ?`,
		formatTime(end), e.Outcome, e.Error, e.SQLState, int64(e.UpstreamPID), e.BytesFromClient, e.BytesFromServer, e.QueriesDropped, id)
	if err != nil {
		return fmt.Errorf("record end of connection %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("record end of connection %d: no such connection", id)
	}
	return nil
}

// RecordQuery queues q for writing without waiting. It returns ErrQueueFull
// (and counts the drop) when the queue is full, ErrClosed after Close.
func (l *Log) RecordQuery(q Query) error {
	if q.Time.IsZero() {
		q.Time = time.Now()
	}
	if q.Protocol == "" {
		q.Protocol = "simple"
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	select {
	case l.queue <- item{q: q}:
		return nil
	default:
		l.dropped.Add(1)
		return ErrQueueFull
	}
}

// Dropped is how many query records RecordQuery has dropped since Open.
func (l *Log) Dropped() int64 { return l.dropped.Load() }

func (l *Log) send(ctx context.Context, it item) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	select {
	case l.queue <- it:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("audit: queue flush marker: %w", ctx.Err())
	}
}

// QueueDepth is the number of queries waiting to be written.
func (l *Log) QueueDepth() int { return len(l.queue) }

// Flush waits until every query queued before the call has been written. It
// returns the first write error seen since the previous Flush, if any.
func (l *Log) Flush(ctx context.Context) error {
	ch := make(chan error, 1)
	if err := l.send(ctx, item{flushed: ch}); err != nil {
		return err
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return fmt.Errorf("audit: flush: %w", ctx.Err())
	}
}

// Close writes every queued query and stops the writer. It does not close the
// shared *sql.DB. Further writes return ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.queue)
	l.mu.Unlock()
	<-l.done
	l.errMu.Lock()
	defer l.errMu.Unlock()
	return l.lastErr
}

func (l *Log) writer() {
	defer close(l.done)
	batch := make([]Query, 0, BatchSize)
	for it := range l.queue {
		var flushes []chan error
		if it.flushed != nil {
			flushes = append(flushes, it.flushed)
		} else {
			batch = append(batch, it.q)
		}
		// Take whatever else is already queued, up to a batch.
	more:
		for len(batch) < BatchSize {
			select {
			case next, ok := <-l.queue:
				if !ok {
					break more
				}
				if next.flushed != nil {
					flushes = append(flushes, next.flushed)
				} else {
					batch = append(batch, next.q)
				}
			default:
				break more
			}
		}
		if len(batch) > 0 {
			if err := l.insert(batch); err != nil {
				l.logger.Error("audit: write queries", "count", len(batch), "err", err)
				l.errMu.Lock()
				if l.lastErr == nil {
					l.lastErr = err
				}
				l.errMu.Unlock()
			}
			batch = batch[:0]
		}
		if len(flushes) > 0 {
			l.errMu.Lock()
			err := l.lastErr
			l.lastErr = nil
			l.errMu.Unlock()
			for _, ch := range flushes {
				ch <- err
				err = nil
			}
		}
	}
}

// insert writes batch in one transaction, retrying a few times when SQLite
// reports the database as busy or locked beyond busy_timeout.
func (l *Log) insert(batch []Query) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = l.insertOnce(batch); err == nil {
			return nil
		}
		msg := err.Error()
		if !strings.Contains(msg, "SQLITE_BUSY") && !strings.Contains(msg, "locked") && !strings.Contains(msg, "busy") {
			return err
		}
		time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
	}
	return err
}

func (l *Log) insertOnce(batch []Query) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin query insert: %w", err)
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO audit_queries
		(connection_id, time, user_name, resource, protocol, sql, duration_us, sql_length, sql_sha256,
		 statement, params, command, rows, sqlstate, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("prepare query insert: %w", err)
	}
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
