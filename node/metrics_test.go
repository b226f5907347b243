package node

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferryhq/ferry/node/audit"
)

// TestAuditFailureMetrics breaks a real audit log's SQLite file (a trigger that aborts writes, as a
// failing disk would) and reads the node's /metrics: the write failures, retries and dropped query
// records are there.
func TestAuditFailureMetrics(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ferry.db")
	db, err := audit.OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l, err := audit.OpenWithOptions(ctx, db, audit.Options{Logger: slog.New(slog.DiscardHandler), WriteAttempts: 2, RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	id, err := l.StartConnection(ctx, audit.Connection{User: "alice", Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	for _, trigger := range []string{
		`CREATE TRIGGER fail_conn BEFORE INSERT ON audit_connections BEGIN SELECT RAISE(ABORT, 'disk I/O error (test)'); END`,
		`CREATE TRIGGER fail_query BEFORE INSERT ON audit_queries BEGIN SELECT RAISE(ABORT, 'disk I/O error (test)'); END`,
	} {
		mustExec(t, db, trigger)
	}
	if _, err := l.StartConnection(ctx, audit.Connection{User: "bob", Resource: "r"}); err == nil {
		t.Fatal("StartConnection succeeded on a failing store")
	}
	rec := l.Recorder(id, nil)
	for range 3 {
		rec.Record(ctx, audit.Query{SQL: "SELECT 1"})
	}
	if n := rec.Close(ctx); n != 3 {
		t.Fatalf("%d records not written, want 3", n)
	}

	m := newMetrics(slog.New(slog.DiscardHandler), l.Stats)
	srv := httptest.NewServer(promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		"ferry_audit_queue_depth 0\n",
		"ferry_audit_queries_dropped_total 3\n",
		`ferry_audit_write_failures_total{record="connection"} 1` + "\n",
		`ferry_audit_write_failures_total{record="query"} `,
		"ferry_audit_write_retries_total ",
		"ferry_audit_session_waits_total 0\n",
		"ferry_audit_spooled_total 0\n",
		"ferry_audit_shipped_total 0\n",
		"ferry_audit_spool_depth 0\n",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}
}

func mustExec(t *testing.T, db *sql.DB, q string) {
	t.Helper()
	if _, err := db.Exec(q); err != nil {
		t.Fatal(err)
	}
}
