package pgproxy

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/ferryhq/ferry/node/audit"
)

// testAudit adapts node/audit's *Log to AuditLog, as the node does.
type testAudit struct{ *audit.Log }

func (a testAudit) QueryRecorder(id int64, onFail func(error)) QueryRecorder {
	return a.Log.Recorder(id, onFail)
}

// openTestAudit opens an audit log in a new database file under tb's temporary directory, closed at
// cleanup: after the cleanups registered later (the sessions that write to it) have run.
func openTestAudit(tb testing.TB) (log *audit.Log, db *sql.DB, path string) {
	tb.Helper()
	path = filepath.Join(tb.TempDir(), "ferry.db")
	db, err := audit.OpenDB(path)
	if err != nil {
		tb.Fatal(err)
	}
	log, err = audit.Open(context.Background(), db)
	if err != nil {
		db.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		log.Close()
		db.Close()
	})
	return log, db, path
}
