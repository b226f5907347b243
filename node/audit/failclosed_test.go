package audit

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// failWrites makes the real SQLite file refuse writes to table (event INSERT or UPDATE) whose
// user_name is user, through a second connection, until the returned func is called.
func failWrites(t *testing.T, path, table, event, user string) (restore func()) {
	t.Helper()
	db, err := OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	name := "fail_" + table + "_" + event
	if _, err := db.Exec(`CREATE TRIGGER ` + name + ` BEFORE ` + event + ` ON ` + table + ` WHEN NEW.user_name = '` + user + `'
		BEGIN SELECT RAISE(ABORT, 'disk I/O error (test)'); END`); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := db.Exec(`DROP TRIGGER ` + name); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConnectionWriteFailsClosed: a connection start that cannot be written is retried, then
// reported as ErrUnavailable and counted; once the store works again, so does the log.
func TestConnectionWriteFailsClosed(t *testing.T) {
	forEachBackend(t, false, testConnectionWriteFailsClosed)
}

func testConnectionWriteFailsClosed(t *testing.T, d *testDB) {
	ctx := context.Background()
	l := d.openLog(t, Options{WriteAttempts: 3})
	restore := d.failWrites(t, "audit_connections", "INSERT", "mallory")
	_, err := l.StartConnection(ctx, Connection{User: "mallory", Resource: "r"})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("StartConnection on a failing store = %v, want ErrUnavailable", err)
	}
	if s := l.Stats(); s.ConnectionWriteFailures != 1 || s.WriteRetries != 2 {
		t.Fatalf("stats = %+v, want 1 connection write failure after 2 retries", s)
	}
	restore()
	if _, err := l.StartConnection(ctx, Connection{User: "mallory", Resource: "r"}); err != nil {
		t.Fatalf("StartConnection after the store recovered: %v", err)
	}
}

// TestQueryWriteFailureFailsOnlyItsSession: a record that cannot be written after retries fails
// its own recorder (onFail called once, later records refused and counted) and is counted
// node-wide; records of another session in the same batches are still written.
func TestQueryWriteFailureFailsOnlyItsSession(t *testing.T) {
	forEachBackend(t, false, testQueryWriteFailureFailsOnlyItsSession)
}

func testQueryWriteFailureFailsOnlyItsSession(t *testing.T, d *testDB) {
	ctx := context.Background()
	l := d.openLog(t, Options{})
	badID, err := l.StartConnection(ctx, Connection{User: "mallory", Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	goodID, err := l.StartConnection(ctx, Connection{User: "alice", Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	d.failWrites(t, "audit_queries", "INSERT", "mallory")
	failed := make(chan error, 2)
	bad := l.Recorder(badID, func(err error) { failed <- err })
	good := l.Recorder(goodID, nil)
	for i := range 5 {
		if err := bad.Record(ctx, Query{User: "mallory", Resource: "r", SQL: fmt.Sprint("SELECT ", i)}); err != nil && !errors.Is(err, ErrUnavailable) {
			t.Fatal(err)
		}
		if err := good.Record(ctx, Query{User: "alice", Resource: "r", SQL: fmt.Sprint("SELECT ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-failed:
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("onFail(%v), want ErrUnavailable", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("onFail not called within 30s")
	}
	if err := bad.Record(ctx, Query{User: "mallory", Resource: "r", SQL: "SELECT later"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Record after the recorder failed = %v, want ErrUnavailable", err)
	}
	if n := bad.Close(ctx); n != 6 {
		t.Fatalf("bad recorder: %d records not written, want 6", n)
	}
	if n := good.Close(ctx); n != 0 {
		t.Fatalf("good recorder: %d records not written, want 0", n)
	}
	if len(failed) != 0 {
		t.Fatal("onFail called more than once")
	}
	qs, err := l.Queries(ctx, QueryFilter{ConnectionID: goodID})
	if err != nil || len(qs) != 5 {
		t.Fatalf("good session's queries = %d, %v; want 5", len(qs), err)
	}
	s := l.Stats()
	if s.QueriesDropped != 6 || s.QueryWriteFailures < 1 || s.QueryWriteFailures > 5 || s.WriteRetries == 0 || s.Queued != 0 {
		t.Fatalf("stats = %+v; want 6 dropped, 1 to 5 of them failed writes (the rest refused after the recorder failed), some retries, none queued", s)
	}
}

// TestFloodingRecorderWaitsOthersDoNot stalls the writer (another connection holds SQLite's write
// lock): a recorder over its allowance waits, another recorder is not held up, nothing is dropped,
// and every record is written once the writer can go on.
func TestFloodingRecorderWaitsOthersDoNot(t *testing.T) {
	forEachBackend(t, false, testFloodingRecorderWaitsOthersDoNot)
}

func testFloodingRecorderWaitsOthersDoNot(t *testing.T, d *testDB) {
	ctx := context.Background()
	l := d.openLog(t, Options{SessionQueue: 8})
	floodID, err := l.StartConnection(ctx, Connection{User: "flood", Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	otherID, err := l.StartConnection(ctx, Connection{User: "other", Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	release := d.stallWrites(t)
	const flood = 200
	floodRec := l.Recorder(floodID, nil)
	flooded := make(chan error, 1)
	go func() {
		for i := range flood {
			if err := floodRec.Record(ctx, Query{User: "flood", Resource: "r", SQL: fmt.Sprint("SELECT ", i)}); err != nil {
				flooded <- err
				return
			}
		}
		flooded <- nil
	}()
	deadline := time.Now().Add(10 * time.Second)
	for l.Stats().SessionWaits == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the flooding recorder never waited for its allowance")
		}
		time.Sleep(5 * time.Millisecond)
	}
	other := l.Recorder(otherID, nil)
	done := make(chan error, 1)
	go func() {
		for i := range 8 {
			if err := other.Record(ctx, Query{User: "other", Resource: "r", SQL: fmt.Sprint("SELECT other ", i)}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the other recorder was held up by the flood")
	}
	select {
	case err := <-flooded:
		t.Fatalf("the flood finished (%v) while the writer was stalled", err)
	default:
	}
	release()
	if err := <-flooded; err != nil {
		t.Fatal(err)
	}
	if n := floodRec.Close(ctx) + other.Close(ctx); n != 0 {
		t.Fatalf("%d records not written", n)
	}
	for id, want := range map[int64]int{floodID: flood, otherID: 8} {
		if qs, err := l.Queries(ctx, QueryFilter{ConnectionID: id, Limit: 1000}); err != nil || len(qs) != want {
			t.Fatalf("connection %d: %d queries, %v; want %d", id, len(qs), err, want)
		}
	}
	if d := l.Dropped(); d != 0 {
		t.Fatalf("%d dropped", d)
	}
}

// TestRecordDoesNotAllocate: queuing a record within the session's allowance costs no allocation
// (the relay calls it once per statement). The writer is not running, so only Record is measured.
func TestRecordDoesNotAllocate(t *testing.T) {
	l := &Log{opts: Options{}.withDefaults(), wake: make(chan struct{}, 1), pending: make([]entry, 0, 2048)}
	r := l.Recorder(1, nil)
	q := Query{Time: time.Now(), User: "u", Resource: "r", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213", Protocol: "simple", Command: "SELECT", Rows: 1}
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() {
		if err := r.Record(ctx, q); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Record allocates %v times per call, want 0", n)
	}
}
