package pgproxy

import (
	"context"
	"time"

	"github.com/ferryhq/ferry/node/audit"
)

// AuditLog is what the proxy needs of the audit log: a connection's record opened and closed, and a
// recorder for its statements. The proxy depends on this, not on how or where the records are
// stored; the node adapts node/audit's *Log to it.
type AuditLog interface {
	// StartConnection records a connection's start and returns its record's ID. An error refuses
	// the session (fail closed).
	StartConnection(ctx context.Context, c audit.Connection) (int64, error)
	// EndConnection records how connection id ended.
	EndConnection(ctx context.Context, id int64, end time.Time, e audit.ConnectionEnd) error
	// QueryRecorder returns the statement recorder of connection id; onFail is called when a record
	// cannot be written, and ends the session.
	QueryRecorder(id int64, onFail func(error)) QueryRecorder
}

// QueryRecorder records one session's statements.
type QueryRecorder interface {
	// Record hands q to the audit log; it may wait while the session is over its allowance of
	// unwritten records.
	Record(ctx context.Context, q audit.Query) error
	// Durable waits until every record handed to Record so far is durable (committed to the audit
	// database, or to the node's spool when the database refuses it); an error says one never
	// will be (the session must end) or ctx ended first. The relay calls it before the server's
	// answers that follow a record reach the client (heldWriter), so a client never learns that
	// a statement completed before its record would survive a crash of the node.
	Durable(ctx context.Context) error
	// Close waits until the session's records are written and returns how many were not.
	Close(ctx context.Context) int64
}
