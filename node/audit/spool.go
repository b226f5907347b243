package audit

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// The spool keeps audit records while the audit database cannot take them: a small SQLite file of
// its own in the node's state directory (Options.SpoolPath), WAL with synchronous=NORMAL like the
// node's database, so a record the spool accepted survives a crash of the node process. Records
// keep their order (seq) and are shipped to the database in that order, so a connection's start is
// there before its queries and its end; each carries its record ID, so shipping one twice (a crash
// between the database's commit and the spool's delete) writes it once.

const spoolSchema = `
CREATE TABLE IF NOT EXISTS audit_spool (
	seq    INTEGER PRIMARY KEY AUTOINCREMENT,
	kind   TEXT NOT NULL,
	record TEXT NOT NULL
);`

// Kinds of spooled records.
const (
	spoolStart = "start" // a connection's start (spoolRecord.Conn)
	spoolEnd   = "end"   // a connection's end (spoolRecord.End)
	spoolQuery = "query" // a query record (spoolRecord.Query)
)

// spoolRecord is one spooled record, stored as JSON.
type spoolRecord struct {
	Kind     string      `json:"-"`
	Seq      int64       `json:"-"`
	RecordID string      `json:"record_id"`      // the record's own ID (connection or query)
	ConnRec  string      `json:"conn,omitempty"` // end and query: the connection's record ID
	Conn     *Connection `json:"connection,omitempty"`
	End      *endRecord  `json:"end,omitempty"`
	Query    *Query      `json:"query,omitempty"`
}

// endRecord is a connection's end as spooled.
type endRecord struct {
	Time time.Time     `json:"time"`
	End  ConnectionEnd `json:"end"`
}

type spool struct {
	db *sql.DB
}

// openSpool opens (creating if needed) the spool file at path.
func openSpool(ctx context.Context, path string) (*spool, error) {
	db, err := OpenDB(path)
	if err != nil {
		return nil, fmt.Errorf("open audit spool: %w", err)
	}
	if _, err := db.ExecContext(ctx, spoolSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("open audit spool %s: %w", path, err)
	}
	return &spool{db: db}, nil
}

func (s *spool) close() error { return s.db.Close() }

// add appends rs in one transaction: all of them are durable, or none.
func (s *spool) add(ctx context.Context, rs []spoolRecord) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("spool audit records: %w", err)
	}
	defer tx.Rollback()
	for _, r := range rs {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("spool audit records: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_spool (kind, record) VALUES (?, ?)`, r.Kind, string(b)); err != nil {
			return fmt.Errorf("spool audit records: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("spool audit records: %w", err)
	}
	return nil
}

// heldKind prefixes the kind of a spooled record this binary cannot ship (it does not decode, or its
// kind is unknown: written by a newer ferry-node, or damaged): it stays in the file for the operator
// (sqlite3 audit-spool.db "SELECT * FROM audit_spool WHERE kind LIKE 'held:%'") instead of holding
// up every record behind it.
const heldKind = "held:"

// unreadable is a spooled record peek could not use.
type unreadable struct {
	seq  int64
	kind string
	err  error
}

// peek returns the oldest n records not held, in order, and those among them it cannot ship.
func (s *spool) peek(ctx context.Context, n int) ([]spoolRecord, []unreadable, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, kind, record FROM audit_spool WHERE substr(kind, 1, 5) != ? ORDER BY seq LIMIT ?`, heldKind, n)
	if err != nil {
		return nil, nil, fmt.Errorf("read audit spool: %w", err)
	}
	defer rows.Close()
	var out []spoolRecord
	var bad []unreadable
	for rows.Next() {
		var r spoolRecord
		var kind, b string
		var seq int64
		if err := rows.Scan(&seq, &kind, &b); err != nil {
			return nil, nil, fmt.Errorf("read audit spool: %w", err)
		}
		if err := json.Unmarshal([]byte(b), &r); err != nil {
			bad = append(bad, unreadable{seq, kind, err})
			continue
		}
		r.Kind, r.Seq = kind, seq
		if !r.complete() {
			bad = append(bad, unreadable{seq, kind, fmt.Errorf("a record of kind %q this ferry-node does not know, or without its content", kind)})
			continue
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read audit spool: %w", err)
	}
	return out, bad, nil
}

// complete reports whether r is of a known kind and carries that kind's content.
func (r spoolRecord) complete() bool {
	switch r.Kind {
	case spoolStart:
		return r.Conn != nil
	case spoolEnd:
		return r.End != nil && r.ConnRec != ""
	case spoolQuery:
		return r.Query != nil
	}
	return false
}

// hold marks the record seq as held: it stays in the file and is no longer shipped or counted.
func (s *spool) hold(ctx context.Context, seq int64) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE audit_spool SET kind = ? || kind WHERE seq = ?`, heldKind, seq); err != nil {
		return fmt.Errorf("hold unreadable audit spool record %d: %w", seq, err)
	}
	return nil
}

// remove deletes the records up to and including seq (held ones stay).
func (s *spool) remove(ctx context.Context, seq int64) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM audit_spool WHERE seq <= ? AND substr(kind, 1, 5) != ?`, seq, heldKind); err != nil {
		return fmt.Errorf("remove shipped records from the audit spool: %w", err)
	}
	return nil
}

// count is how many records are spooled (held ones aside).
func (s *spool) count(ctx context.Context) (int64, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM audit_spool WHERE substr(kind, 1, 5) != ?`, heldKind).Scan(&n); err != nil {
		return 0, fmt.Errorf("count audit spool: %w", err)
	}
	return n, nil
}
