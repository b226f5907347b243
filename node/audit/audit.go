// Package audit keeps the node's connection log and query log in a store.DB:
// the node's SQLite file (shared with its catalog, so the tables carry an
// audit_ prefix) or the fleet's PostgreSQL database, which every node of a
// deployment writes to. The schema is the store's "audit" migration sequence
// (schema.go).
//
// Every record carries a record ID the node chooses before the first write
// (a random 64-bit prefix per Log and a sequence number, 32 hex digits),
// unique in the database, and every insert is INSERT ... ON CONFLICT
// (record_id) DO NOTHING: a record written twice is stored once. Query records
// name their connection by its record ID, so they can be recorded while the
// connection has no row yet.
//
// While the database refuses records after their retries (it is unreachable,
// busy, or refuses writes; not when it refuses the record itself: refused),
// they go to a local spool (Options.SpoolPath, spool.go) whose writes are as
// durable as the node's SQLite commits, in order; a shipper goroutine ships
// them to the database when it takes writes again and removes them from the
// spool after the database's commit. While the spool holds records, new ones
// go to the spool too, behind them. Only when the spool cannot be written
// either does the log fail as described below.
//
// The log fails closed: a session that cannot be recorded does not run.
//
// Connection records: StartConnection and EndConnection write directly and
// synchronously (to the database, or to the spool), because a connection's
// start must be durable before its session runs and its end before its
// session is reported as over; neither runs while a session relays. A failed
// write is retried (Options.WriteAttempts tries, waits from Options.RetryWait
// doubling); when it still fails and cannot be spooled the error wraps
// ErrUnavailable and is counted (Stats.ConnectionWriteFailures). The proxy refuses a session whose start
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
// because a queue is full. One writer goroutine takes the queued records in
// batches of up to BatchSize rows per transaction, fairly across connections
// (each connection's oldest record first: see takeBatch), so a burst of
// statements costs one WAL commit instead of one each. An idle writer commits
// as soon as it has anything; a busy one (it wrote less than gatherWait, 2 ms,
// ago) waits gatherWait for more before a small batch, so a steady stream of
// sessions shares commits too (records reach the file within milliseconds),
// unless its callers wait for their records (Recorder.Durable, as the proxy
// does for every statement): then it commits at once. A batch that fails is retried like a connection record; if it
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
// connection's queries are on disk when its end time is. Recorder.Durable waits
// until every record its connection has queued so far is durable (committed
// to the database, or to the spool): the proxy holds a statement's answer
// back from the client until then, so the writer's batches are group commits
// that release every session waiting for them; once Durable has been called
// the writer no longer gathers (below). Flush waits for everything queued before it; Close drains
// the queue and stops the writer.
//
// OpenDB uses synchronous=NORMAL with WAL: commits survive a crash of the
// node process; a power loss of the VM may lose the last commits (SQLite
// documentation, "PRAGMA synchronous").
package audit

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ferryhq/ferry/node/store"
	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
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
	// the resource is no longer carried by this node: its egress filter or proxy cluster, or the
	// node's tags, changed so that the node is not one of its candidates (node/routing)
	OutcomeRerouted = "rerouted"
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
	DefaultAttemptTimeout    = 10 * time.Second
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
	// AttemptTimeout bounds one try of a write, so that a database that does not answer (a
	// network that drops its packets) counts as failing rather than holding sessions for as long
	// as their context lasts; then the record can go to the spool.
	AttemptTimeout time.Duration
	// SpoolPath is the file of the local spool (a SQLite file of its own, in the node's state
	// directory) that keeps records while the audit database refuses them after their retries, until
	// they are shipped to it. "" = no spool: such records fail as described in the package comment.
	SpoolPath string

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
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = DefaultAttemptTimeout
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
	// Spooled counts records written to the local spool because the database refused them,
	// Shipped those shipped from it to the database; SpoolDepth is how many are spooled now.
	Spooled, Shipped, SpoolDepth int64
}

// Connection is one client connection through the proxy.
type Connection struct {
	ID int64
	// RecordID is the connection's idempotent record ID, chosen by the node before the first write
	// (32 hex digits: a random 64-bit prefix per Log and a sequence number). "" for connections
	// recorded before record IDs existed.
	RecordID   string
	Start, End time.Time // End is the zero time while the connection is open
	User       string    // the Ferry user (identified by the tunnel peer)
	Resource   string    // the resource name
	ClientAddr string    // the client's tunnel address, "ip:port"
	// NodeID is the node that carried the connection ("n-…"), which opened the session to the
	// server; "" for connections recorded before node IDs were.
	NodeID string
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
	RecordID         string        // the query record's idempotent record ID (see Connection.RecordID); set when written
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
	NodeID         string    // the node that carried the connection
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
	store  *store.DB // nil when opened on a plain *sql.DB (SQLite)
	pg     bool      // db is PostgreSQL
	logger *slog.Logger
	opts   Options
	insert *sql.Stmt // insertQuerySQL, prepared on db (SQLite); closed by Close

	mu      sync.Mutex // guards the fields below and every Recorder's counts
	pending []entry    // queued records the writer has not taken yet, oldest first
	closed  bool
	queued  uint64 // records queued since Open
	settled uint64 // of them, those written or failed
	flushes []flushWait
	lastErr error // the first write error since the previous Flush

	ranks, rankCount, rankBytes []int // the writer's scratch space for takeBatch (under mu)

	wake chan struct{} // capacity 1: something was queued, or Close
	// syncers counts the Recorder.Durable calls waiting; syncWake (capacity 1) tells a writer
	// gathering a small batch that one began to wait, so it writes at once.
	syncers  atomic.Int64
	syncWake chan struct{}
	// synced: Recorder.Durable has been called. From then on the writer never gathers: its
	// callers wait for every record they make (the proxy does, for every statement), so a
	// session cannot make a second record before its first is committed, batches are as large as
	// the number of sessions waiting whatever the writer does, and committing at once lets the
	// commit overlap the rest of the answer's relay instead of adding gatherWait to every statement.
	synced  atomic.Bool
	stopped chan struct{} // closed when the writer has returned

	depth                        atomic.Int64
	dropped, queryFailures       atomic.Int64
	connFailures, retries, waits atomic.Int64

	// Record IDs: idPrefix (16 hex digits, random per Log) and a sequence number.
	idPrefix string
	seq      atomic.Uint64

	connsMu sync.Mutex
	conns   map[int64]string // open connections: handle (StartConnection's ID) -> record ID
	handles int64            // handles given to spooled connections: -1, -2, ...

	spool    *spool      // nil without Options.SpoolPath
	spooling atomic.Bool // records go to the spool (it holds records not shipped yet)
	smu      sync.Mutex  // serialises spool writes with the shipper's decision that the spool is empty
	shipper  bool        // guarded by smu: the shipper runs
	stopShip chan struct{}
	shipDone sync.WaitGroup

	spooled, shipped, spoolDepth atomic.Int64
}

// entry is a queued query record.
type entry struct {
	q    Query
	rec  *Recorder
	size int
	seq  uint64 // the record ID's sequence number
}

// flushWait is a Flush waiting until every record with a sequence number up to seq is settled.
type flushWait struct {
	seq uint64
	ch  chan error
}

// OpenDB opens (creating if needed) the SQLite file at path with the node's settings; it is
// store.OpenSQLite, which says what they are.
func OpenDB(path string) (*sql.DB, error) { return store.OpenSQLite(path) }

// Open opens the audit log in the node's SQLite database db (OpenDB) with
// the default Options: see OpenWithOptions.
func Open(ctx context.Context, db *sql.DB) (*Log, error) {
	return OpenWithOptions(ctx, db, Options{})
}

// OpenWithLogger is Open with a logger for write failures (nil = slog.Default()).
func OpenWithLogger(ctx context.Context, db *sql.DB, logger *slog.Logger) (*Log, error) {
	return OpenWithOptions(ctx, db, Options{Logger: logger})
}

// OpenWithOptions opens the audit log in the SQLite database db, for callers that hold a plain
// *sql.DB of the node's file (OpenDB): the schema is brought forward through a store.DB opened on
// the same file for that moment only, then the log runs on db. OpenStore is the same on a store.DB.
func OpenWithOptions(ctx context.Context, db *sql.DB, opts Options) (*Log, error) {
	var path string
	if err := db.QueryRowContext(ctx, `SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&path); err != nil {
		return nil, fmt.Errorf("open audit log: find the database file: %w", err)
	}
	if path == "" {
		return nil, errors.New("open audit log: the SQLite database has no file")
	}
	sdb, err := store.Open(ctx, store.Options{URL: "sqlite:" + path})
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	err = sdb.Migrate(ctx, migration(store.SQLite))
	sdb.Close()
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return open(ctx, db, nil, opts)
}

// OpenStore opens the audit log in db (the node's SQLite file or the fleet's PostgreSQL database),
// bringing its schema forward (store.DB.Migrate, sequence "audit"), and starts the query writer.
// The caller keeps ownership of db; Close does not close it.
func OpenStore(ctx context.Context, db *store.DB, opts Options) (*Log, error) {
	if err := db.Migrate(ctx, migration(db.Dialect())); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return open(ctx, db.DB, db, opts)
}

// open starts the log on db, whose schema is current; sdb is its store.DB when the caller gave one.
func open(ctx context.Context, db *sql.DB, sdb *store.DB, opts Options) (*Log, error) {
	opts = opts.withDefaults()
	pg := sdb != nil && sdb.Dialect() == store.Postgres
	var insert *sql.Stmt
	if !pg {
		var err error
		if insert, err = db.PrepareContext(ctx, insertQuerySQL); err != nil {
			return nil, fmt.Errorf("prepare query insert: %w", err)
		}
	}
	var prefix [8]byte
	if _, err := rand.Read(prefix[:]); err != nil {
		return nil, fmt.Errorf("open audit log: record ID prefix: %w", err)
	}
	l := &Log{db: db, store: sdb, pg: pg, logger: opts.Logger, opts: opts, insert: insert, wake: make(chan struct{}, 1), syncWake: make(chan struct{}, 1), stopped: make(chan struct{}),
		idPrefix: hex.EncodeToString(prefix[:]), conns: map[int64]string{}, stopShip: make(chan struct{})}
	if opts.SpoolPath != "" {
		var err error
		if l.spool, err = openSpool(ctx, opts.SpoolPath); err != nil {
			l.closeInsert()
			return nil, err
		}
		n, err := l.spool.count(ctx)
		if err != nil {
			l.closeInsert()
			l.spool.close()
			return nil, err
		}
		if n > 0 {
			l.spoolDepth.Store(n)
			l.logger.Warn("audit: the spool holds records from before; shipping them to the audit database", "count", n, "spool", opts.SpoolPath)
			l.smu.Lock()
			l.startSpooling()
			l.smu.Unlock()
		}
	}
	go l.writer()
	return l, nil
}

func (l *Log) closeInsert() {
	if l.insert != nil {
		l.insert.Close()
	}
}

// rb rewrites a query written with ? placeholders for the database's dialect.
func (l *Log) rb(q string) string {
	if l.store == nil {
		return q
	}
	return l.store.Rebind(q)
}

// txt is s as the database can store it. PostgreSQL's text holds neither NUL nor invalid UTF-8 (a
// statement cut to the proxy's limit may end inside a character, a client may send another
// encoding, the server sends the SQLSTATE it likes); those become U+FFFD there rather than failing
// the record. SQLite stores s as it is.
func (l *Log) txt(s string) string {
	if !l.pg || (utf8.ValidString(s) && strings.IndexByte(s, 0) < 0) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// recordID is the record ID of sequence number seq.
func (l *Log) recordID(seq uint64) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[8:], seq)
	return l.idPrefix + hex.EncodeToString(b[8:])
}

// insertQuerySQL writes one query record. The writer prepares it once (Log.insert) and runs it in
// each batch's transaction: SQLite compiles it again by itself should the schema change.
// The connection is named by its record ID (a spooled connection has no row ID yet when its queries
// are recorded): a record ID with no connection row gives connection_id NULL, which the NOT NULL
// constraint refuses. A record already written (shipped twice) is left as it is.
const insertQuerySQL = `INSERT INTO audit_queries
		(record_id, connection_id, "time", user_name, resource, protocol, sql, duration_us, sql_length, sql_sha256,
		 statement, params, command, rows, sqlstate, error)
		SELECT ?, (SELECT id FROM audit_connections WHERE record_id = ?), ?, ?, ?, ?, ?, CAST(? AS BIGINT), CAST(? AS BIGINT), ?, ?, ?, ?, CAST(? AS BIGINT), ?, ?
		WHERE true ON CONFLICT (record_id) DO NOTHING`

// retry runs write until it succeeds, up to Options.WriteAttempts times,
// waiting between tries (Options.RetryWait, doubled each time) unless ctx
// ends. It returns the last error.
func (l *Log) retry(ctx context.Context, what string, write func(context.Context) error) error {
	wait := l.opts.RetryWait
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, l.opts.AttemptTimeout)
		err := write(actx)
		cancel()
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

// StartConnection records the start of a connection and returns its ID: the
// row ID in the database, or, when the connection was spooled, a negative
// handle this Log knows it by until EndConnection (Recorder and EndConnection
// take either). A write that fails after its retries goes to the spool; when
// there is none, or the spool cannot be written either, StartConnection
// returns an error wrapping ErrUnavailable.
func (l *Log) StartConnection(ctx context.Context, c Connection) (int64, error) {
	if c.Start.IsZero() {
		c.Start = time.Now()
	}
	c.RecordID = l.recordID(l.seq.Add(1))
	var err error
	if !l.spooling.Load() {
		var id int64
		err = l.retry(ctx, "connection start", func(ctx context.Context) error {
			var err error
			id, err = l.insertConnection(ctx, c)
			return err
		})
		if err == nil {
			l.connsMu.Lock()
			l.conns[id] = c.RecordID
			l.connsMu.Unlock()
			return id, nil
		}
	}
	if l.spool != nil && !refused(err) {
		serr := l.toSpool(ctx, []spoolRecord{{Kind: spoolStart, RecordID: c.RecordID, Conn: &c}}, err)
		if serr == nil {
			l.connsMu.Lock()
			l.handles--
			h := l.handles
			l.conns[h] = c.RecordID
			l.connsMu.Unlock()
			return h, nil
		}
		err = errors.Join(err, serr)
	}
	l.connFailures.Add(1)
	return 0, fmt.Errorf("record connection start of %s to %s: %w (%w)", c.User, c.Resource, ErrUnavailable, err)
}

// insertConnection writes c (its RecordID set) and returns its row ID. A
// connection already written (shipped twice) is left as it is.
func (l *Log) insertConnection(ctx context.Context, c Connection) (int64, error) {
	var end any
	if !c.End.IsZero() {
		end = formatTime(c.End)
	}
	var id int64
	err := l.db.QueryRowContext(ctx, l.rb(`INSERT INTO audit_connections
		(record_id, start_time, end_time, user_name, resource, client_addr, database, outcome, error,
		 original_user, original_database, role, sqlstate, upstream_pid, bytes_from_client, bytes_from_server, queries_dropped, node_id)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (record_id) DO NOTHING RETURNING id`),
		c.RecordID, formatTime(c.Start), end, l.txt(c.User), l.txt(c.Resource), c.ClientAddr, l.txt(c.Database), c.Outcome, l.txt(c.Error),
		l.txt(c.OriginalUser), l.txt(c.OriginalDatabase), l.txt(c.Role), l.txt(c.SQLState), int64(c.UpstreamPID), c.BytesFromClient, c.BytesFromServer, c.QueriesDropped,
		l.txt(c.NodeID)).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		err = l.db.QueryRowContext(ctx, l.rb(`SELECT id FROM audit_connections WHERE record_id = ?`), c.RecordID).Scan(&id)
	}
	if err != nil {
		return 0, fmt.Errorf("insert connection %s: %w", c.RecordID, err)
	}
	return id, nil
}

// updateEnd writes the end of the connection with record ID rec; false when there is no such row.
func (l *Log) updateEnd(ctx context.Context, rec string, end time.Time, e ConnectionEnd) (bool, error) {
	res, err := l.db.ExecContext(ctx, l.rb(`UPDATE audit_connections SET end_time = ?, outcome = ?, error = ?,
		sqlstate = ?, upstream_pid = ?, bytes_from_client = ?, bytes_from_server = ?, queries_dropped = ? WHERE record_id = ?`),
		formatTime(end), e.Outcome, l.txt(e.Error), l.txt(e.SQLState), int64(e.UpstreamPID), e.BytesFromClient, e.BytesFromServer, e.QueriesDropped, rec)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// EndConnection records the end of connection id (StartConnection's ID) at
// time end. It does not wait for the connection's queries: close its Recorder
// first. A write that fails after its retries goes to the spool; without one,
// or when the spool fails too, it returns an error wrapping ErrUnavailable.
func (l *Log) EndConnection(ctx context.Context, id int64, end time.Time, e ConnectionEnd) error {
	l.connsMu.Lock()
	rec, ok := l.conns[id]
	delete(l.conns, id)
	l.connsMu.Unlock()
	if !ok {
		return fmt.Errorf("record end of connection %d: no such connection", id)
	}
	var err error
	if !l.spooling.Load() {
		found := false
		err = l.retry(ctx, "connection end", func(ctx context.Context) error {
			var err error
			found, err = l.updateEnd(ctx, rec, end, e)
			return err
		})
		if err == nil {
			if !found {
				return fmt.Errorf("record end of connection %d: no such connection", id)
			}
			return nil
		}
	}
	if l.spool != nil && !refused(err) {
		serr := l.toSpool(ctx, []spoolRecord{{Kind: spoolEnd, RecordID: rec, ConnRec: rec, End: &endRecord{Time: end, End: e}}}, err)
		if serr == nil {
			return nil
		}
		err = errors.Join(err, serr)
	}
	l.connFailures.Add(1)
	return fmt.Errorf("record end of connection %d: %w (%w)", id, ErrUnavailable, err)
}

// Recorder queues the query records of one connection. Record and Close may
// be called from several goroutines.
type Recorder struct {
	l      *Log
	id     int64
	conn   string // the connection's record ID
	onFail func(error)

	// Guarded by l.mu.
	n, bytes int           // records queued and not settled, and their size
	room     chan struct{} // closed when one settles; nil while nobody waits
	err      error         // why a record of this connection could not be written
	syncWait bool          // Durable waits for n to reach 0 (or err): settle signals synced
	rank     int           // takeBatch's count of this connection's queued records (0 between calls)

	synced chan struct{} // capacity 1, made with the Recorder: reused by every Durable, so a wait allocates nothing

	dropped atomic.Int64
}

// Recorder returns the recorder of connection id (the ID StartConnection
// gave). onFail, if not nil, is called once, from the writer, when a record
// of the connection could not be written: the caller should end the session,
// which now runs unaudited.
func (l *Log) Recorder(id int64, onFail func(error)) *Recorder {
	l.connsMu.Lock()
	conn := l.conns[id]
	l.connsMu.Unlock()
	return &Recorder{l: l, id: id, conn: conn, onFail: onFail, synced: make(chan struct{}, 1)}
}

// Durable waits until every record Record has queued for this connection is durable: committed
// to the audit database, or to the spool when the database refuses it (SQLite: the commit reached
// the OS, which survives a crash of the node process; PostgreSQL: its COMMIT returned). Records
// go in group commits: the writer commits what all connections have queued in one transaction and
// then releases every Durable waiting for them. It returns an error wrapping ErrUnavailable when a
// record of the connection could not be written (the connection must not go on: onFail has been
// or is being called), ErrClosed when the log closed with records of it unwritten, or ctx's error
// when ctx ends first. It allocates nothing.
func (r *Recorder) Durable(ctx context.Context) error {
	l := r.l
	if !l.synced.Load() {
		l.synced.Store(true)
	}
	l.mu.Lock()
	for r.n > 0 && r.err == nil {
		r.syncWait = true
		l.mu.Unlock()
		l.syncers.Add(1)
		select {
		case l.syncWake <- struct{}{}: // a writer gathering a small batch writes it now
		default:
		}
		select {
		case <-r.synced:
		case <-ctx.Done():
			l.syncers.Add(-1)
			return fmt.Errorf("audit: wait for the records of connection %d to be written: %w", r.id, context.Cause(ctx))
		}
		l.syncers.Add(-1)
		l.mu.Lock()
	}
	err := r.err
	l.mu.Unlock()
	return err
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
			l.pending = append(l.pending, entry{q: q, rec: r, size: size, seq: l.seq.Add(1)})
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
		Spooled: l.spooled.Load(), Shipped: l.shipped.Load(), SpoolDepth: l.spoolDepth.Load(),
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
	l.flushes = append(l.flushes, flushWait{seq: l.seq.Load(), ch: ch})
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
	l.closeInsert()
	l.smu.Lock()
	close(l.stopShip)
	l.smu.Unlock()
	l.shipDone.Wait()
	if l.spool != nil {
		if err := l.spool.close(); err != nil {
			l.logger.Error("audit: close the spool", "err", err)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastErr
}

// writer writes the queued records, one batch (takeBatch) per transaction, until Close.
func (l *Log) writer() {
	defer close(l.stopped)
	var batch []entry
	var qs []queryRow
	var failed []bool
	var lastWrite time.Time
	gather := time.NewTimer(time.Hour)
	gather.Stop()
	for {
		l.mu.Lock()
		n := len(l.pending)
		closed := l.closed
		l.mu.Unlock()
		select { // drained before syncers is read: a Durable adds itself to syncers, then signals
		case <-l.syncWake:
		default:
		}
		if n > 0 && n < gatherFew && !closed && !l.opts.noGather && !l.synced.Load() && l.syncers.Load() == 0 && time.Since(lastWrite) < gatherWait {
			// Nobody waits for these records to be durable (yet): gather more. A Recorder.Durable
			// that begins to wait ends the gathering, so a session held for its records is never
			// held gatherWait longer; sessions held together share the next commit anyway.
			gather.Reset(gatherWait)
			select {
			case <-gather.C:
			case <-l.syncWake:
				gather.Stop()
			}
		}
		l.mu.Lock()
		batch = l.takeBatch(batch[:0])
		l.mu.Unlock()
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
		qs = qs[:0]
		for _, e := range batch {
			qs = append(qs, queryRow{q: e.q, id: l.recordID(e.seq), conn: e.rec.conn})
		}
		var err error
		failed, err = l.write(qs, failed[:0])
		l.settle(batch, failed, err)
		lastWrite = time.Now()
		clear(qs)
		clear(batch)
	}
}

// batchBytes bounds the text of one batch (one transaction), as BatchSize bounds its records: a
// session's answer waits for at most two batches' commits however much other sessions queued.
const batchBytes = 1 << 20

// takeBatch moves the next batch of queued records from l.pending to dst (l.mu is held): at most
// BatchSize records and batchBytes bytes (at least one record), taken fairly across connections.
// Every connection with records queued gets its oldest record into the batch, then its second
// oldest, and so on while the batch has room, so a connection's records stay in order but a
// session with one record waiting (its answer held for it, see Recorder.Durable) is in the next
// batch, not behind the backlog of sessions that flood statements: every session's answers wait
// for at most the batch being written and the next one, however many records others queued.
func (l *Log) takeBatch(dst []entry) []entry {
	if len(l.pending) == 0 {
		return dst
	}
	// rank: the entry's place among its connection's queued records (0 for its oldest).
	ranks := l.ranks[:0]
	for i := range l.pending {
		r := l.pending[i].rec
		ranks = append(ranks, r.rank)
		r.rank++
	}
	for i := range l.pending {
		l.pending[i].rec.rank = 0
	}
	// Take every record of rank below take, for the largest take whose records fit.
	count, bytes := l.rankCount[:0], l.rankBytes[:0]
	for i, k := range ranks {
		for len(count) <= k {
			count, bytes = append(count, 0), append(bytes, 0)
		}
		count[k]++
		bytes[k] += l.pending[i].size
	}
	take, n, size := 0, 0, 0
	for take < len(count) && n+count[take] <= BatchSize && size+bytes[take] <= batchBytes {
		n, size = n+count[take], size+bytes[take]
		take++
	}
	kept := l.pending[:0]
	if take > 0 {
		for i, e := range l.pending {
			if ranks[i] < take {
				dst = append(dst, e)
			} else {
				kept = append(kept, e)
			}
		}
	} else {
		// Even the oldest record of each connection does not fit: as many of them as do, in order.
		n, size = 0, 0
		for i, e := range l.pending {
			if ranks[i] == 0 && (n == 0 || (n < BatchSize && size+e.size <= batchBytes)) {
				dst = append(dst, e)
				n, size = n+1, size+e.size
			} else {
				kept = append(kept, e)
			}
		}
	}
	clear(l.pending[len(kept):])
	l.pending = kept
	if len(l.pending) == 0 && cap(l.pending) > 4*BatchSize {
		l.pending = nil // after a burst, do not keep a large buffer
	}
	l.ranks, l.rankCount, l.rankBytes = ranks[:0], count[:0], bytes[:0]
	if cap(l.ranks) > 4*BatchSize {
		l.ranks = nil
	}
	return dst
}

// oneByOneBudget bounds the record-by-record tries after a batch failed, so
// that a hung store fails the batch in bounded time instead of once per record.
const oneByOneBudget = 10 * time.Second

// write writes qs in one transaction, with retries; when that fails it tries
// each record once on its own (for at most oneByOneBudget; records not tried
// by then fail). It returns, per record, whether it failed (appended to
// failed), and the last error; nil, nil when all were written.
//
// While the log spools (the database refused records and the spool still holds some), qs go to the
// spool; when the database refuses them after their retries, they go to the spool too. Only when
// there is no spool, or it fails as well, are records tried one by one and failed.
func (l *Log) write(qs []queryRow, failed []bool) ([]bool, error) {
	ctx := context.Background()
	if l.spooling.Load() {
		if l.spoolQueries(ctx, qs, nil) == nil {
			return nil, nil
		}
	}
	err := l.retry(ctx, "query records", func(ctx context.Context) error { return l.insertOnce(ctx, qs) })
	if err == nil {
		return nil, nil
	}
	if l.spool != nil && !refused(err) {
		serr := l.spoolQueries(ctx, qs, err)
		if serr == nil {
			return nil, nil
		}
		err = errors.Join(err, serr)
	}
	l.logger.Error("audit: write query records failed; writing them one by one", "count", len(qs), "err", err)
	var last error
	var spool []queryRow // failed, but not refused: the spool may keep them
	var spoolAt []int
	deadline := time.Now().Add(oneByOneBudget)
	for i := range qs {
		e := err
		if time.Now().Before(deadline) {
			actx, cancel := context.WithTimeout(ctx, l.opts.AttemptTimeout)
			e = l.insertOnce(actx, qs[i:i+1])
			cancel()
		}
		failed = append(failed, e != nil)
		if e != nil {
			last = e
			if l.spool != nil && !refused(e) {
				spool, spoolAt = append(spool, qs[i]), append(spoolAt, i)
			}
		}
	}
	if len(spool) > 0 && l.spoolQueries(ctx, spool, last) == nil {
		for _, i := range spoolAt {
			failed[i] = false
		}
		if !slices.Contains(failed, true) {
			return nil, nil
		}
	}
	if last == nil {
		return nil, nil
	}
	return failed, last
}

// refused reports whether err is the database refusing the record itself (its data: a value the
// column cannot hold, a missing connection, a constraint), which writing it again cannot mend, as
// opposed to the database being unreachable, busy, full or refusing writes for reasons of its
// own. Refused records are not spooled (they would hold up every record behind them): they fail
// as without a spool. PostgreSQL: SQLSTATE classes 22 (data exception) and 23 (integrity
// constraint violation). SQLite: constraint violations other than a trigger's RAISE, too big,
// datatype mismatch.
func refused(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23")
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_TRIGGER:
			return false
		case sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_MISMATCH:
			return true
		}
		return se.Code()&0xff == sqlite3.SQLITE_CONSTRAINT
	}
	return false
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
		if r.syncWait && (r.n == 0 || r.err != nil) {
			r.syncWait = false
			select {
			case r.synced <- struct{}{}:
			default:
			}
		}
	}
	l.settled += uint64(len(es))
	l.depth.Add(-int64(len(es)))
	// The writer takes records fairly across connections, not in the order they were queued: a
	// Flush is done once no record queued before it is still waiting (l.pending is oldest first,
	// and es was the only batch being written).
	unsettled := uint64(math.MaxUint64)
	if len(l.pending) > 0 {
		unsettled = l.pending[0].seq
	}
	kept := l.flushes[:0]
	for _, f := range l.flushes {
		if f.seq < unsettled {
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

// queryRow is a query record with its record ID and its connection's.
type queryRow struct {
	q        Query
	id, conn string
}

func (l *Log) spoolQueries(ctx context.Context, qs []queryRow, cause error) error {
	rs := make([]spoolRecord, len(qs))
	for i := range qs {
		rs[i] = spoolRecord{Kind: spoolQuery, RecordID: qs[i].id, ConnRec: qs[i].conn, Query: &qs[i].q}
	}
	return l.toSpool(ctx, rs, cause)
}

// toSpool writes rs to the spool and starts the shipper. cause is why (the database's error), for
// the log line when spooling starts.
func (l *Log) toSpool(ctx context.Context, rs []spoolRecord, cause error) error {
	// The caller's context may have run out waiting for the database; the spool is local.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.opts.AttemptTimeout)
	defer cancel()
	l.smu.Lock()
	defer l.smu.Unlock()
	if err := l.spool.add(ctx, rs); err != nil {
		l.logger.Error("audit: the spool cannot be written either", "count", len(rs), "err", err)
		return err
	}
	l.spooled.Add(int64(len(rs)))
	l.spoolDepth.Add(int64(len(rs)))
	if !l.spooling.Load() {
		l.logger.Warn("audit: the audit database refuses records; keeping them in the local spool until it takes them again",
			"spool", l.opts.SpoolPath, "err", cause)
	}
	l.startSpooling()
	return nil
}

// startSpooling sends records to the spool and starts the shipper if it is not running. l.smu is held.
func (l *Log) startSpooling() {
	l.spooling.Store(true)
	select {
	case <-l.stopShip:
		return // closed: the next Open ships
	default:
	}
	if !l.shipper {
		l.shipper = true
		l.shipDone.Add(1)
		go l.ship()
	}
}

// maxShipWait caps the shipper's wait between tries while the database is unreachable.
const maxShipWait = 5 * time.Second

// ship ships spooled records to the database, oldest first, until the spool is empty (then records
// go to the database again) or the log is closed.
func (l *Log) ship() {
	defer l.shipDone.Done()
	stop := func() {
		l.smu.Lock()
		l.shipper = false
		l.smu.Unlock()
	}
	wait := l.opts.RetryWait
	for {
		select {
		case <-l.stopShip:
			stop()
			return
		default:
		}
		n, err := l.shipSome()
		if err != nil {
			l.logger.Warn("audit: shipping spooled records to the audit database failed; trying again", "wait", wait, "spooled", l.spoolDepth.Load(), "err", err)
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-l.stopShip:
				t.Stop()
				stop()
				return
			}
			wait = min(wait*2, maxShipWait)
			continue
		}
		wait = l.opts.RetryWait
		if n > 0 {
			continue
		}
		l.smu.Lock()
		left, err := l.spool.count(context.Background())
		if err == nil && left == 0 {
			l.spooling.Store(false)
			l.shipper = false
			l.spoolDepth.Store(0)
			l.smu.Unlock()
			l.logger.Info("audit: the spool is drained; records go to the audit database again", "shipped", l.shipped.Load())
			return
		}
		l.smu.Unlock()
	}
}

// shipSome ships up to BatchSize of the oldest spooled records and removes them from the spool. It
// returns how many it shipped.
func (l *Log) shipSome() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.AttemptTimeout)
	defer cancel()
	rs, bad, err := l.spool.peek(ctx, BatchSize)
	if err != nil {
		return 0, err
	}
	for _, b := range bad {
		if err := l.spool.hold(ctx, b.seq); err != nil {
			return 0, err
		}
		if b.kind == spoolQuery {
			l.queryFailures.Add(1)
		} else {
			l.connFailures.Add(1)
		}
		l.spoolDepth.Add(-1)
		l.logger.Error("audit: a spooled record cannot be read; it stays in the spool file, held, and the records behind it are shipped",
			"seq", b.seq, "kind", b.kind, "spool", l.opts.SpoolPath, "err", b.err)
	}
	if len(rs) == 0 {
		return len(bad), nil
	}
	var done int64 = -1 // records up to this seq are in the database
	n := 0
	var qs []queryRow
	var qSeq int64
	shipQueries := func() error {
		if len(qs) == 0 {
			return nil
		}
		if err := l.insertOnce(ctx, qs); err != nil {
			if !refused(err) {
				return err
			}
			for i := range qs { // one refused record must not hold up the rest
				if err := l.insertOnce(ctx, qs[i:i+1]); err != nil {
					if !refused(err) {
						return err
					}
					l.refusedRecord(qs[i].id, true, err)
				}
			}
		}
		done, n, qs = qSeq, n+len(qs), qs[:0]
		return nil
	}
records:
	for _, r := range rs {
		if r.Kind == spoolQuery && r.Query != nil {
			qs = append(qs, queryRow{q: *r.Query, id: r.RecordID, conn: r.ConnRec})
			qSeq = r.Seq
			continue
		}
		if err = shipQueries(); err != nil {
			break
		}
		switch {
		case r.Kind == spoolStart && r.Conn != nil:
			_, err = l.insertConnection(ctx, *r.Conn)
		case r.Kind == spoolEnd && r.End != nil:
			var found bool
			if found, err = l.updateEnd(ctx, r.ConnRec, r.End.Time, r.End.End); err == nil && !found {
				l.refusedRecord(r.ConnRec, false, errors.New("no such connection"))
			}
		default:
			err = fmt.Errorf("spooled record %d: unknown kind %q", r.Seq, r.Kind)
		}
		if refused(err) {
			l.refusedRecord(r.RecordID, r.Kind == spoolQuery, err)
			err = nil
		}
		if err != nil {
			break records
		}
		done = r.Seq
		n++
	}
	if err == nil {
		err = shipQueries()
	}
	if done >= 0 {
		// Shipped but not removed (the remove fails, or the node stops first): shipped again
		// later, and written once (record IDs).
		if rerr := l.spool.remove(ctx, done); rerr != nil {
			return 0, errors.Join(err, rerr)
		}
		l.shipped.Add(int64(n))
		l.spoolDepth.Add(-int64(n))
	}
	return n, err
}

// refusedRecord logs and counts a spooled record the database refuses (refused): it is removed
// from the spool, lost, rather than holding up every record behind it.
func (l *Log) refusedRecord(id string, query bool, err error) {
	if query {
		l.queryFailures.Add(1)
		l.dropped.Add(1)
	} else {
		l.connFailures.Add(1)
	}
	l.logger.Error("audit: the audit database refuses a spooled record; it is lost", "record", id, "err", err)
}

func (l *Log) insertOnce(ctx context.Context, batch []queryRow) error {
	if l.pg {
		return l.insertMany(ctx, batch)
	}
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin query insert: %w", err)
	}
	defer tx.Rollback()
	// Prepared once per pooled connection (database/sql keeps it), not once per batch.
	stmt := tx.StmtContext(ctx, l.insert)
	defer stmt.Close()
	for _, r := range batch {
		q := &r.q
		if _, err := stmt.ExecContext(ctx, r.id, r.conn, formatTime(q.Time), q.User, q.Resource, q.Protocol, q.SQL,
			q.Duration.Microseconds(), q.SQLLength, q.SQLSHA256, q.Statement, q.Params, q.Command, q.Rows, q.SQLState, q.Error); err != nil {
			return fmt.Errorf("insert query %s of connection %s: %w", r.id, r.conn, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit query insert: %w", err)
	}
	return nil
}

// insertMany writes batch in one multi-row INSERT (PostgreSQL: one round trip for the batch). Like
// insertQuerySQL, a connection record ID with no row refuses the whole statement (NOT NULL).
func (l *Log) insertMany(ctx context.Context, batch []queryRow) error {
	var b strings.Builder
	b.WriteString(`INSERT INTO audit_queries
		(record_id, connection_id, "time", user_name, resource, protocol, sql, duration_us, sql_length, sql_sha256,
		 statement, params, command, rows, sqlstate, error)
		SELECT v.column1, (SELECT c.id FROM audit_connections c WHERE c.record_id = v.column2), v.column3, v.column4, v.column5,
		 v.column6, v.column7, v.column8, v.column9, v.column10, v.column11, v.column12, v.column13, v.column14, v.column15, v.column16
		FROM (VALUES `)
	args := make([]any, 0, 16*len(batch))
	for i, r := range batch {
		if i > 0 {
			b.WriteByte(',')
		}
		n := len(args)
		b.WriteByte('(')
		for j := 1; j <= 16; j++ {
			if j > 1 {
				b.WriteByte(',')
			}
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n + j))
			if j == 8 || j == 9 || j == 14 { // duration_us, sql_length, rows
				b.WriteString("::bigint")
			}
		}
		b.WriteByte(')')
		q := &r.q
		args = append(args, r.id, r.conn, formatTime(q.Time), l.txt(q.User), l.txt(q.Resource), q.Protocol, l.txt(q.SQL),
			q.Duration.Microseconds(), q.SQLLength, q.SQLSHA256, l.txt(q.Statement), l.txt(q.Params), l.txt(q.Command), q.Rows, l.txt(q.SQLState), l.txt(q.Error))
	}
	b.WriteString(`) AS v ON CONFLICT (record_id) DO NOTHING`)
	if _, err := l.db.ExecContext(ctx, b.String(), args...); err != nil {
		return fmt.Errorf("insert %d query records: %w", len(batch), err)
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
	q := `SELECT id, COALESCE(record_id, ''), start_time, end_time, user_name, resource, client_addr, database, outcome, error,
		original_user, original_database, role, sqlstate, upstream_pid, bytes_from_client, bytes_from_server, queries_dropped, node_id
		FROM audit_connections WHERE 1=1`
	q, args := where(q, filter.User, filter.Resource, "start_time", filter.Since, filter.Until)
	if filter.NodeID != "" {
		q += ` AND node_id = ?`
		args = append(args, filter.NodeID)
	}
	q = l.rb(q + ` ORDER BY id DESC LIMIT ?`)
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
		if err := rows.Scan(&c.ID, &c.RecordID, &start, &end, &c.User, &c.Resource, &c.ClientAddr, &c.Database, &c.Outcome, &c.Error,
			&c.OriginalUser, &c.OriginalDatabase, &c.Role, &c.SQLState, &pid, &c.BytesFromClient, &c.BytesFromServer, &c.QueriesDropped, &c.NodeID); err != nil {
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
	q := `SELECT id, COALESCE(record_id, ''), connection_id, "time", user_name, resource, protocol, sql, duration_us, sql_length, sql_sha256,
		statement, params, command, rows, sqlstate, error FROM audit_queries WHERE 1=1`
	q, args := where(q, filter.User, filter.Resource, `"time"`, filter.Since, filter.Until)
	if filter.ConnectionID != 0 {
		q += ` AND connection_id = ?`
		args = append(args, filter.ConnectionID)
	}
	q = l.rb(q + ` ORDER BY id DESC LIMIT ?`)
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
		if err := rows.Scan(&r.ID, &r.RecordID, &r.ConnectionID, &t, &r.User, &r.Resource, &r.Protocol, &r.SQL, &us, &r.SQLLength, &r.SQLSHA256,
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
