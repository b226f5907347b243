// Package audit keeps the node's connection log and query log in SQLite
// (modernc.org/sqlite, database/sql driver name "sqlite").
//
// The database file is shared with the node's catalog, so the tables carry an
// audit_ prefix and are created with CREATE TABLE IF NOT EXISTS.
//
// Write path (the choice the proxy relies on): StartConnection and
// EndConnection write directly and synchronously, because the caller needs the
// row ID and because a connection's end must be durable before its session is
// reported as over. RecordQuery only enqueues: one writer goroutine drains a
// bounded queue and inserts in batches of up to 256 rows per transaction, so a
// burst of statements costs one WAL commit instead of one each. When
// the queue is full RecordQuery blocks (back-pressure on the client that sends
// the statements) rather than drop a record; it never drops one. EndConnection
// first waits until every query queued before it has been written, so a
// connection's queries are always on disk when its end time is. Flush waits
// for the queue to drain; Close drains it and stops the writer.
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
	"strings"
	"sync"
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

const queueSize = 1024
const batchSize = 256

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("audit: log is closed")

// Connection is one client connection through the proxy.
type Connection struct {
	ID         int64
	Start, End time.Time // End is the zero time while the connection is open
	User       string    // the Ferry user (identified by the tunnel peer)
	Resource   string    // the resource name
	ClientAddr string    // the client's tunnel address, "ip:port"
	Database   string    // the database the session was opened on
	Outcome    string    // OutcomeOK, OutcomeDenied or OutcomeFailed; "" while open
	Error      string    // why the connection was refused or ended abnormally; "" otherwise
}

// Query is one SQL text sent by a client: a simple-protocol Query message or
// the statement of an extended-protocol Parse message (PostgreSQL protocol §55.2.1, §55.2.3).
type Query struct {
	ID, ConnectionID int64
	Time             time.Time
	User, Resource   string
	SQL              string
	Protocol         string // "simple" (Query 'Q') or "extended" (Parse 'P'); "" is stored as "simple"
}

// ConnectionFilter selects connections; zero fields match everything.
type ConnectionFilter struct {
	User, Resource string
	Limit          int // at most this many rows, newest first; 0 = 1000
}

// QueryFilter selects queries; zero fields match everything.
type QueryFilter struct {
	User, Resource string
	ConnectionID   int64
	Limit          int // at most this many rows, newest first; 0 = 1000
}

// Log is the audit log. It is safe for concurrent use.
type Log struct {
	db     *sql.DB
	logger *slog.Logger

	queue chan item
	done  chan struct{}

	mu      sync.RWMutex // guards closed against sends on queue
	closed  bool
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

// OpenDB opens (creating if needed) the SQLite file at path with the settings
// the node uses for its shared database: WAL journal, busy_timeout 5000 ms,
// foreign keys on, and BEGIN IMMEDIATE for write transactions.
func OpenDB(path string) (*sql.DB, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite database %s: %w", path, err)
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open sqlite database %s: %w", path, err)
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
	l := &Log{db: db, logger: logger, queue: make(chan item, queueSize), done: make(chan struct{})}
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
		(start_time, end_time, user_name, resource, client_addr, database, outcome, error)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		formatTime(c.Start), end, c.User, c.Resource, c.ClientAddr, c.Database, c.Outcome, c.Error)
	if err != nil {
		return 0, fmt.Errorf("record connection start of %s to %s: %w", c.User, c.Resource, err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("record connection start of %s to %s: %w", c.User, c.Resource, err)
	}
	return id, nil
}

// EndConnection records the end of connection id, after writing every query
// queued before the call.
func (l *Log) EndConnection(ctx context.Context, id int64, end time.Time, outcome, errText string) error {
	if err := l.Flush(ctx); err != nil && !errors.Is(err, ErrClosed) {
		l.logger.Warn("audit: queries before connection end not all written", "connection", id, "err", err)
	}
	res, err := l.db.ExecContext(ctx, `UPDATE audit_connections SET end_time = ?, outcome = ?, error = ? WHERE id = ?`,
		formatTime(end), outcome, errText, id)
	if err != nil {
		return fmt.Errorf("record end of connection %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("record end of connection %d: no such connection", id)
	}
	return nil
}

// RecordQuery queues q for writing. It blocks while the queue is full, and
// returns ErrClosed after Close or ctx's error if ctx ends first.
func (l *Log) RecordQuery(ctx context.Context, q Query) error {
	if q.Time.IsZero() {
		q.Time = time.Now()
	}
	if q.Protocol == "" {
		q.Protocol = "simple"
	}
	return l.send(ctx, item{q: q})
}

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
		return fmt.Errorf("audit: queue query: %w", ctx.Err())
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
	batch := make([]Query, 0, batchSize)
	for it := range l.queue {
		var flushes []chan error
		if it.flushed != nil {
			flushes = append(flushes, it.flushed)
		} else {
			batch = append(batch, it.q)
		}
		// Take whatever else is already queued, up to a batch.
	more:
		for len(batch) < batchSize {
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
		(connection_id, time, user_name, resource, protocol, sql) VALUES (?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("prepare query insert: %w", err)
	}
	defer stmt.Close()
	for _, q := range batch {
		if _, err := stmt.ExecContext(ctx, q.ConnectionID, formatTime(q.Time), q.User, q.Resource, q.Protocol, q.SQL); err != nil {
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
	q := `SELECT id, start_time, end_time, user_name, resource, client_addr, database, outcome, error
		FROM audit_connections WHERE 1=1`
	var args []any
	if filter.User != "" {
		q += ` AND user_name = ?`
		args = append(args, filter.User)
	}
	if filter.Resource != "" {
		q += ` AND resource = ?`
		args = append(args, filter.Resource)
	}
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
		if err := rows.Scan(&c.ID, &start, &end, &c.User, &c.Resource, &c.ClientAddr, &c.Database, &c.Outcome, &c.Error); err != nil {
			return nil, fmt.Errorf("list audit connections: %w", err)
		}
		c.Start, c.End = parseTime(start), parseTime(end)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list audit connections: %w", err)
	}
	return out, nil
}

// Queries returns the queries matching filter, newest first. Queries still in
// the write queue are not included; call Flush first to see them.
func (l *Log) Queries(ctx context.Context, filter QueryFilter) ([]Query, error) {
	q := `SELECT id, connection_id, time, user_name, resource, protocol, sql FROM audit_queries WHERE 1=1`
	var args []any
	if filter.User != "" {
		q += ` AND user_name = ?`
		args = append(args, filter.User)
	}
	if filter.Resource != "" {
		q += ` AND resource = ?`
		args = append(args, filter.Resource)
	}
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
		if err := rows.Scan(&r.ID, &r.ConnectionID, &t, &r.User, &r.Resource, &r.Protocol, &r.SQL); err != nil {
			return nil, fmt.Errorf("list audit queries: %w", err)
		}
		r.Time = parseTime(t)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list audit queries: %w", err)
	}
	return out, nil
}
