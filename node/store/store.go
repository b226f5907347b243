// Package store opens the database a node keeps its catalog and audit log in, and hides what differs
// between the two kinds it supports behind one *sql.DB: SQLite (a file in the node's state dir, the
// single-node default) and PostgreSQL (shared by the nodes of a fleet, through pgx's pool).
//
// What differs is small and lives here: placeholders (Rebind), constraint violations recognised by
// their codes (IsConflict, IsForeignKeyViolation; never by message text), schema migrations with one
// version table for every named sequence (Migrate; under an advisory lock on PostgreSQL, so several
// nodes may start at once), and a change feed (Watch and Notify: LISTEN/NOTIFY on PostgreSQL, in
// process on SQLite).
//
// A PostgreSQL URL without a password logs in with a token from Options.Password (the node's
// managed identity), asked for each new connection since tokens expire; such a login only ever goes
// over TLS verified against Options.RootCAs (sslmode=verify-full) to a host Options.AllowHost
// accepts.
package store

import (
	"context"
	"crypto/x509"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Dialect names the kind of database behind a DB.
type Dialect string

// The dialects a DB can have.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// Options say which database Open opens and how it logs in.
type Options struct {
	// URL is a file path or sqlite:PATH (SQLite), or a postgres:// or postgresql:// URL or a libpq
	// key=value string (PostgreSQL).
	URL string
	// Password, when set, gives the password of each new PostgreSQL connection whose URL has none
	// and whose host is not a Unix socket: the node's managed identity token. Such logins require
	// TLS verified against RootCAs (sslmode=verify-full is added when the URL names no sslmode; a
	// weaker one is refused).
	Password func(ctx context.Context) (string, error)
	// RootCAs verifies the PostgreSQL server's certificate (nil: the system's roots, or the URL's
	// sslrootcert).
	RootCAs *x509.CertPool
	// AllowHost, when set, is asked about every host of a token login before any connection is
	// made; an error refuses the URL (the node checks its allowed_server_hosts list).
	AllowHost func(host string) error
	// Lookup, when set, resolves a PostgreSQL host name to addresses ("ip", or "ip:port" to dial
	// another port): the node's host overrides and resolver. TLS still verifies the URL's host name.
	Lookup func(ctx context.Context, host string) ([]string, error)
	// MaxConns caps the PostgreSQL pool (0: pgxpool's default).
	MaxConns int32
	// Logger receives the change feed's reconnects (nil: slog.Default()).
	Logger *slog.Logger
	// FeedProbe is how long the change feed's connection may stay quiet before it is pinged, and
	// how long the ping may take: a connection that died without a word (a dropped route, a
	// peer that stopped answering) is noticed and replaced within twice this (0: 30 s).
	FeedProbe time.Duration
}

// DB is an open catalog/audit database: a *sql.DB for the queries (written with ? placeholders and
// passed through Rebind) plus what its dialect needs. Close it when done.
type DB struct {
	*sql.DB
	dialect Dialect
	pool    *pgxpool.Pool // PostgreSQL only
	logger  *slog.Logger
	probe   time.Duration // Options.FeedProbe

	closing context.Context // ends Watch loops on Close
	close   context.CancelFunc

	mu   sync.Mutex
	subs map[chan struct{}]struct{} // SQLite watchers
}

// Open opens the database opts.URL names. It does not create tables: callers run Migrate with
// their schema.
func Open(ctx context.Context, opts Options) (*DB, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	kind, rest := parseURL(opts.URL)
	var (
		db  *DB
		err error
	)
	switch kind {
	case Postgres:
		db, err = openPostgres(ctx, opts)
	default:
		var sdb *sql.DB
		sdb, err = OpenSQLite(rest)
		if err == nil {
			db = &DB{DB: sdb, dialect: SQLite}
		}
	}
	if err != nil {
		return nil, err
	}
	db.logger = opts.Logger
	db.probe = opts.FeedProbe
	if db.probe <= 0 {
		db.probe = defaultFeedProbe
	}
	db.subs = map[chan struct{}]struct{}{}
	db.closing, db.close = context.WithCancel(context.Background())
	return db, nil
}

// parseURL tells the dialect of a URL and, for SQLite, returns the file path.
func parseURL(u string) (Dialect, string) {
	lower := strings.ToLower(strings.TrimSpace(u))
	switch {
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"):
		return Postgres, u
	case strings.HasPrefix(lower, "sqlite:"):
		return SQLite, strings.TrimPrefix(u[len("sqlite:"):], "//")
	case isKeyValueDSN(u):
		return Postgres, u
	}
	return SQLite, u
}

// IsPostgres reports whether Open takes url for a PostgreSQL database (a postgres:// or
// postgresql:// URL, or a libpq key=value string with a key it recognises), not a SQLite file.
func IsPostgres(url string) bool {
	kind, _ := parseURL(url)
	return kind == Postgres
}

// isKeyValueDSN reports whether s looks like a libpq key=value string ("host=... dbname=...").
func isKeyValueDSN(s string) bool {
	for _, f := range strings.Fields(s) {
		for _, k := range []string{"host=", "hostaddr=", "dbname=", "user=", "port=", "service="} {
			if strings.HasPrefix(f, k) {
				return true
			}
		}
	}
	return false
}

// Dialect returns the kind of database.
func (db *DB) Dialect() Dialect { return db.dialect }

// Pool returns the PostgreSQL pool (nil on SQLite), for the few things database/sql cannot do.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// Close ends the change feeds and closes the database.
func (db *DB) Close() error {
	db.close()
	err := db.DB.Close()
	if db.pool != nil {
		db.pool.Close()
	}
	return err
}

// Rebind rewrites a query written with ? placeholders for the dialect: $1, $2, ... on PostgreSQL
// (question marks inside quoted strings, identifiers and comments are left alone).
func (db *DB) Rebind(query string) string {
	if db.dialect != Postgres {
		return query
	}
	return rebindDollar(query)
}

func rebindDollar(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 8)
	n := 0
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'' || c == '"':
			j := i + 1
			for j < len(q) && q[j] != c {
				j++
			}
			if j >= len(q) {
				j = len(q) - 1
			}
			b.WriteString(q[i : j+1])
			i = j
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			j := strings.IndexByte(q[i:], '\n')
			if j < 0 {
				j = len(q) - i - 1
			}
			b.WriteString(q[i : i+j+1])
			i += j
		case c == '?':
			n++
			fmt.Fprintf(&b, "$%d", n)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// IsConflict reports whether err is a unique or primary key violation: SQLite's extended result
// codes SQLITE_CONSTRAINT_UNIQUE and SQLITE_CONSTRAINT_PRIMARYKEY, PostgreSQL's SQLSTATE 23505.
func IsConflict(err error) bool {
	return sqliteCode(err, sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY) || pgCode(err, "23505")
}

// IsForeignKeyViolation reports whether err is a foreign key violation (a row refers to one that
// does not exist): SQLITE_CONSTRAINT_FOREIGNKEY, SQLSTATE 23503.
func IsForeignKeyViolation(err error) bool {
	return sqliteCode(err, sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY) || pgCode(err, "23503")
}

func sqliteCode(err error, codes ...int) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	for _, c := range codes {
		if se.Code() == c {
			return true
		}
	}
	return false
}

func pgCode(err error, code string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == code
}

// IsUnavailable reports whether err says the database could not be reached or went away (as
// opposed to refusing a statement): no connection, a connection lost, the server shutting down or
// out of connections.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03" || pe.Code == "53300"
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	var ne net.Error
	return errors.Is(err, sql.ErrConnDone) || errors.Is(err, driver.ErrBadConn) || errors.As(err, &ne)
}

var (
	kvPassword  = regexp.MustCompile(`((?:^|\s)(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)`)
	urlUserinfo = regexp.MustCompile(`^(\s*[A-Za-z][A-Za-z0-9+.-]*://[^:@/?]*:).*@`)
	urlPassword = regexp.MustCompile(`([?&](?:ssl)?password=)[^&]*`)
)

// Redact returns the connection string u (a URL, a libpq key=value string or a SQLite path) with
// every password masked (a URL's user password, password= and sslpassword= values), for messages
// that name the database.
func Redact(u string) string {
	if !strings.Contains(u, "://") {
		return kvPassword.ReplaceAllString(u, "${1}xxxxx")
	}
	p, err := url.Parse(strings.TrimSpace(u))
	if err != nil { // pgx also takes URLs Go's parser refuses (host1:5432,host2:5432)
		return urlPassword.ReplaceAllString(urlUserinfo.ReplaceAllString(u, "${1}xxxxx@"), "${1}xxxxx")
	}
	if q := p.Query(); q.Has("password") || q.Has("sslpassword") {
		for _, k := range []string{"password", "sslpassword"} {
			if q.Has(k) {
				q.Set(k, "xxxxx")
			}
		}
		p.RawQuery = q.Encode()
	}
	return p.Redacted()
}
