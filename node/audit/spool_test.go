package audit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/store"
)

// syncBuffer is a log sink tests read while the log writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// outage makes the real SQLite file at path refuse every audit write (as a database that cannot
// be reached refuses them) until the returned func is called.
func outage(t *testing.T, path string) (restore func()) {
	t.Helper()
	db, err := OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var names []string
	for _, table := range []string{"audit_connections", "audit_queries"} {
		for _, event := range []string{"INSERT", "UPDATE"} {
			name := "outage_" + table + "_" + event
			if _, err := db.Exec(`CREATE TRIGGER ` + name + ` BEFORE ` + event + ` ON ` + table + `
				BEGIN SELECT RAISE(ABORT, 'the audit database is unreachable (test)'); END`); err != nil {
				t.Fatal(err)
			}
			names = append(names, name)
		}
	}
	return func() {
		for _, name := range names {
			if _, err := db.Exec(`DROP TRIGGER ` + name); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// waitDrained waits (bounded) until l's spool is empty.
func waitDrained(t *testing.T, l *Log) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for l.Stats().SpoolDepth != 0 || l.spooling.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("the spool did not drain within 60s: %+v", l.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countRecords returns how many query rows the database holds for each SQL text, and fails the
// test if a record ID is there twice.
func countRecords(t *testing.T, l *Log) map[string]int {
	t.Helper()
	var rows, ids int
	if err := l.db.QueryRow(`SELECT count(*), count(DISTINCT record_id) FROM audit_queries`).Scan(&rows, &ids); err != nil {
		t.Fatal(err)
	}
	if rows != ids {
		t.Fatalf("%d query rows with %d distinct record IDs: a record was written twice", rows, ids)
	}
	if err := l.db.QueryRow(`SELECT count(*), count(DISTINCT record_id) FROM audit_connections`).Scan(&rows, &ids); err != nil {
		t.Fatal(err)
	}
	if rows != ids {
		t.Fatalf("%d connection rows with %d distinct record IDs: a record was written twice", rows, ids)
	}
	qs, err := l.Queries(context.Background(), QueryFilter{Limit: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, q := range qs {
		n[q.SQL]++
	}
	return n
}

// TestSpoolKeepsRecordsDuringOutage: while the audit database refuses every write, sessions keep
// recording (a connection open before the outage, one started and ended during it), their records
// go to the spool, and once the database takes writes again every record is in it exactly once.
func TestSpoolKeepsRecordsDuringOutage(t *testing.T) {
	forEachBackend(t, true, testSpoolKeepsRecordsDuringOutage)
}

func testSpoolKeepsRecordsDuringOutage(t *testing.T, d *testDB) {
	ctx := context.Background()
	spoolPath := filepath.Join(t.TempDir(), "audit-spool.db")
	var logs syncBuffer
	l := d.openSpoolLog(t, spoolPath, &logs)
	before, err := l.StartConnection(ctx, Connection{User: "alice", Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	open := l.Recorder(before, func(err error) { t.Errorf("the open session failed: %v", err) })
	if err := open.Record(ctx, Query{User: "alice", Resource: "r", SQL: "SELECT before"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	restore := d.outage(t)
	during, err := l.StartConnection(ctx, Connection{User: "bob", Resource: "r"})
	if err != nil {
		t.Fatalf("StartConnection during the outage: %v; want it spooled", err)
	}
	rec := l.Recorder(during, func(err error) { t.Errorf("the new session failed: %v", err) })
	const n = 50
	for i := range n {
		if err := open.Record(ctx, Query{User: "alice", Resource: "r", SQL: fmt.Sprint("SELECT alice ", i)}); err != nil {
			t.Fatal(err)
		}
		if err := rec.Record(ctx, Query{User: "bob", Resource: "r", SQL: fmt.Sprint("SELECT bob ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if d := rec.Close(ctx); d != 0 {
		t.Fatalf("%d records of the new session not written", d)
	}
	if err := l.EndConnection(ctx, during, time.Now(), ConnectionEnd{Outcome: OutcomeOK, BytesFromClient: 7}); err != nil {
		t.Fatalf("EndConnection of a spooled connection: %v", err)
	}
	if d := open.Close(ctx); d != 0 {
		t.Fatalf("%d records of the open session not written", d)
	}
	s := l.Stats()
	if s.Spooled < 2*n+2 || s.QueriesDropped != 0 || s.ConnectionWriteFailures != 0 {
		t.Fatalf("stats during the outage = %+v; want at least %d spooled, nothing dropped or failed", s, 2*n+2)
	}
	if d.srv == nil { // a stopped server cannot be asked
		if got := countRecords(t, l); got["SELECT bob 0"] != 0 || got["SELECT before"] != 1 {
			t.Fatalf("the database holds %v during the outage", got)
		}
	}
	if sp, err := l.spool.count(ctx); err != nil || sp != s.SpoolDepth || sp < 2*n+2 {
		t.Fatalf("the spool file holds %d records (%v); stats say %d, want at least %d", sp, err, s.SpoolDepth, 2*n+2)
	}
	if !strings.Contains(logs.String(), "keeping them in the local spool") {
		t.Fatalf("no log line when spooling started:\n%s", logs.String())
	}

	restore()
	waitDrained(t, l)
	got := countRecords(t, l)
	for i := range n {
		for _, sql := range []string{fmt.Sprint("SELECT alice ", i), fmt.Sprint("SELECT bob ", i)} {
			if got[sql] != 1 {
				t.Fatalf("%q is in the database %d times after the outage, want once", sql, got[sql])
			}
		}
	}
	cs, err := l.Connections(ctx, ConnectionFilter{User: "bob"})
	if err != nil || len(cs) != 1 || cs[0].Outcome != OutcomeOK || cs[0].BytesFromClient != 7 || cs[0].End.IsZero() {
		t.Fatalf("the spooled connection after shipping = %+v, %v", cs, err)
	}
	if qs, err := l.Queries(ctx, QueryFilter{ConnectionID: cs[0].ID}); err != nil || len(qs) != n {
		t.Fatalf("the spooled connection's queries = %d, %v; want %d", len(qs), err, n)
	}
	if s := l.Stats(); s.Shipped != s.Spooled || s.SpoolDepth != 0 {
		t.Fatalf("stats after shipping = %+v; want every spooled record shipped", s)
	}
	if !strings.Contains(logs.String(), "the spool is drained") {
		t.Fatalf("no log line when the spool drained:\n%s", logs.String())
	}
	// Back to the database: a new connection gets a row ID again.
	if id, err := l.StartConnection(ctx, Connection{User: "carol", Resource: "r"}); err != nil || id <= 0 {
		t.Fatalf("StartConnection after the outage = %d, %v; want a row ID", id, err)
	}
}

// TestSpoolShippedTwiceWrittenOnce ships the same spool twice (as after a crash between the
// database's commit and the spool's delete): every record is in the database once.
func TestSpoolShippedTwiceWrittenOnce(t *testing.T) {
	forEachBackend(t, true, testSpoolShippedTwiceWrittenOnce)
}

func testSpoolShippedTwiceWrittenOnce(t *testing.T, d *testDB) {
	ctx := context.Background()
	spoolPath := filepath.Join(t.TempDir(), "audit-spool.db")
	l := d.openSpoolLog(t, spoolPath, nil)
	restore := d.outage(t)
	id, err := l.StartConnection(ctx, Connection{User: "bob", Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	rec := l.Recorder(id, nil)
	const n = 30
	for i := range n {
		if err := rec.Record(ctx, Query{User: "bob", Resource: "r", SQL: fmt.Sprint("SELECT ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if d := rec.Close(ctx); d != 0 {
		t.Fatalf("%d not written", d)
	}
	if err := l.EndConnection(ctx, id, time.Now(), ConnectionEnd{Outcome: OutcomeOK}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	saved, err := os.ReadFile(spoolPath)
	if err != nil {
		t.Fatal(err)
	}
	restore()
	for range 2 {
		if err := os.WriteFile(spoolPath, saved, 0o600); err != nil {
			t.Fatal(err)
		}
		l := d.openSpoolLog(t, spoolPath, nil)
		waitDrained(t, l)
		if s := l.Stats(); s.Shipped != n+2 {
			t.Fatalf("stats = %+v; want %d shipped", s, n+2)
		}
		got := countRecords(t, l)
		for i := range n {
			if c := got[fmt.Sprint("SELECT ", i)]; c != 1 {
				t.Fatalf("SELECT %d is in the database %d times, want once", i, c)
			}
		}
		if cs, err := l.Connections(ctx, ConnectionFilter{}); err != nil || len(cs) != 1 || cs[0].Outcome != OutcomeOK {
			t.Fatalf("connections = %+v, %v; want the one, ended", cs, err)
		}
		l.Close()
	}
}

// TestSpoolFailureFailsClosed: when the database and the spool both refuse writes, the log fails
// closed as without a spool: the connection is refused and a session's recorder fails.
func TestSpoolFailureFailsClosed(t *testing.T) { forEachBackend(t, true, testSpoolFailureFailsClosed) }

func testSpoolFailureFailsClosed(t *testing.T, d *testDB) {
	ctx := context.Background()
	spoolPath := filepath.Join(t.TempDir(), "audit-spool.db")
	l := d.openSpoolLog(t, spoolPath, nil)
	id, err := l.StartConnection(ctx, Connection{User: "alice", Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	d.outage(t)
	sdb, err := OpenDB(spoolPath)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	if _, err := sdb.Exec(`CREATE TRIGGER full BEFORE INSERT ON audit_spool BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END`); err != nil {
		t.Fatal(err)
	}
	if _, err := l.StartConnection(ctx, Connection{User: "bob", Resource: "r"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("StartConnection with neither database nor spool = %v, want ErrUnavailable", err)
	}
	failed := make(chan error, 1)
	rec := l.Recorder(id, func(err error) { failed <- err })
	if err := rec.Record(ctx, Query{User: "alice", Resource: "r", SQL: "SELECT 1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-failed:
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("onFail(%v), want ErrUnavailable", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the session's recorder did not fail within 30s")
	}
	if n := rec.Close(ctx); n != 1 {
		t.Fatalf("%d records not written, want 1", n)
	}
	if err := l.EndConnection(ctx, id, time.Now(), ConnectionEnd{Outcome: OutcomeOK}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("EndConnection with neither database nor spool = %v, want ErrUnavailable", err)
	}
	if s := l.Stats(); s.Spooled != 0 || s.QueriesDropped != 1 || s.ConnectionWriteFailures != 2 {
		t.Fatalf("stats = %+v; want nothing spooled, 1 query dropped, 2 connection write failures", s)
	}
}

// TestSpoolSurvivesKill9: a node process records through an outage (its records spooled), says how
// many it has recorded (every Recorder.Close returned), and is killed with SIGKILL while recording
// more. A new log on the same spool, once the database is back, ships every record the dead
// process acknowledged, each once.
func TestSpoolSurvivesKill9(t *testing.T) {
	if p := os.Getenv("FERRY_AUDIT_SPOOL_CHILD"); p != "" {
		spoolChild(p, os.Getenv("FERRY_AUDIT_SPOOL_URL"))
		return
	}
	forEachBackend(t, true, testSpoolSurvivesKill9)
}

func testSpoolSurvivesKill9(t *testing.T, d *testDB) {
	spoolPath := filepath.Join(t.TempDir(), "audit-spool.db")
	d.openSpoolLog(t, spoolPath, nil).Close() // create the tables
	cmd := exec.Command(os.Args[0], "-test.run=^TestSpoolSurvivesKill9$")
	cmd.Env = append(os.Environ(), "FERRY_AUDIT_SPOOL_CHILD="+spoolPath, "FERRY_AUDIT_SPOOL_URL="+d.url)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "open" {
	}
	restore := d.outage(t) // the child's log is open: its database goes away under it
	if _, err := io.WriteString(in, "go\n"); err != nil {
		t.Fatal(err)
	}
	n := -1
	for sc.Scan() {
		if s, ok := strings.CutPrefix(sc.Text(), "recorded "); ok {
			n, _ = strconv.Atoi(s)
			break
		}
	}
	time.Sleep(500 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if n <= 0 {
		t.Fatal("child did not report its records")
	}
	restore()
	l := d.openSpoolLog(t, spoolPath, nil)
	waitDrained(t, l)
	got := countRecords(t, l)
	for i := range n {
		if c := got[fmt.Sprint("SELECT ", i)]; c != 1 {
			t.Fatalf("SELECT %d (recorded before the kill) is in the database %d times, want once", i, c)
		}
	}
	cs, err := l.Connections(context.Background(), ConnectionFilter{})
	if err != nil || len(cs) != 1 || cs[0].User != "u" {
		t.Fatalf("connections after the kill = %+v, %v", cs, err)
	}
	t.Logf("%d records acknowledged before the kill, %d shipped after it", n, l.Stats().Shipped)
}

// spoolChild records through a failing database (url; opened before its outage) into the spool
// at spoolPath, reports how many records are acknowledged, and keeps recording until killed.
func spoolChild(spoolPath, url string) {
	ctx := context.Background()
	db, err := store.Open(ctx, store.Options{URL: url})
	if err != nil {
		panic(err)
	}
	l, err := OpenStore(ctx, db, Options{WriteAttempts: 2, RetryWait: time.Millisecond, SpoolPath: spoolPath,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	fmt.Println("open")
	bufio.NewReader(os.Stdin).ReadString('\n') // the database is gone now
	id, err := l.StartConnection(ctx, Connection{User: "u", Resource: "r"})
	if err != nil {
		panic(err)
	}
	const n = 2000
	rec := l.Recorder(id, func(err error) { panic(err) })
	for i := range n {
		if err := rec.Record(ctx, Query{User: "u", Resource: "r", SQL: fmt.Sprint("SELECT ", i)}); err != nil {
			panic(err)
		}
	}
	if d := rec.Close(ctx); d != 0 {
		panic(fmt.Sprint(d, " records not written"))
	}
	if l.Stats().Spooled < n {
		panic("records were not spooled")
	}
	fmt.Printf("recorded %d\n", n)
	os.Stdout.Sync()
	rec = l.Recorder(id, nil)
	for i := 0; ; i++ {
		rec.Record(ctx, Query{User: "u", Resource: "r", SQL: fmt.Sprint("SELECT more ", i)})
	}
}

// TestRefusedRecordIsNotSpooled: a record the database refuses for what it holds (here a query of
// a connection it does not have) is not spooled, where it would hold up every record behind it: it
// fails as without a spool, and the next records go straight to the database.
func TestRefusedRecordIsNotSpooled(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		l := d.openSpoolLog(t, filepath.Join(t.TempDir(), "audit-spool.db"), nil)
		failed := make(chan error, 1)
		if err := l.Recorder(42, func(err error) { failed <- err }).Record(ctx, Query{SQL: "SELECT 1"}); err != nil {
			t.Fatal(err)
		}
		if err := l.Flush(ctx); err == nil {
			t.Fatal("Flush reported no error for a query of an unknown connection")
		}
		if err := <-failed; !errors.Is(err, ErrUnavailable) {
			t.Fatalf("onFail(%v), want ErrUnavailable", err)
		}
		id, err := l.StartConnection(ctx, Connection{User: "alice", Resource: "r"})
		if err != nil || id <= 0 {
			t.Fatalf("StartConnection after a refused record = %d, %v; want a row ID", id, err)
		}
		if s := l.Stats(); s.Spooled != 0 || s.QueriesDropped != 1 || l.spooling.Load() {
			t.Fatalf("stats = %+v (spooling %v); want nothing spooled, 1 dropped", s, l.spooling.Load())
		}
	})
}

// TestSpoolUnreadableRecordDoesNotHoldUpOthers: a spooled record this binary cannot ship (a kind it
// does not know, written by a newer ferry-node before a downgrade, or a damaged one) is held in the
// spool file and logged; the records behind it reach the database and the log leaves spooling,
// instead of every record of the node waiting behind it for good.
func TestSpoolUnreadableRecordDoesNotHoldUpOthers(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		spoolPath := filepath.Join(t.TempDir(), "audit-spool.db")
		sp, err := openSpool(ctx, spoolPath)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sp.db.ExecContext(ctx, `INSERT INTO audit_spool (seq, kind, record) VALUES
			(1, 'route', '{"record_id":"ffffffffffffffff0000000000000001"}'),
			(2, 'query', '{not json'),
			(3, 'end', '{"record_id":"ffffffffffffffff0000000000000002"}')`); err != nil {
			t.Fatal(err)
		}
		c := Connection{RecordID: "ffffffffffffffff0000000000000003", Start: time.Now(), User: "bob", Resource: "r", ClientAddr: "100.64.0.2:1"}
		q := Query{Time: time.Now(), User: "bob", Resource: "r", SQL: "SELECT 'behind'"}
		if err := sp.add(ctx, []spoolRecord{
			{Kind: spoolStart, RecordID: c.RecordID, Conn: &c},
			{Kind: spoolQuery, RecordID: "ffffffffffffffff0000000000000004", ConnRec: c.RecordID, Query: &q},
		}); err != nil {
			t.Fatal(err)
		}
		sp.close()

		logs := &syncBuffer{}
		l := d.openSpoolLog(t, spoolPath, logs)
		deadline := time.Now().Add(20 * time.Second)
		for l.Stats().SpoolDepth != 0 || l.spooling.Load() {
			if time.Now().After(deadline) {
				t.Fatalf("the spool did not drain within 20s: %+v\n%s", l.Stats(), logs.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if got := countRecords(t, l); got["SELECT 'behind'"] != 1 {
			t.Fatalf("query records %v; want the one behind the unreadable ones", got)
		}
		var held int
		if err := l.spool.db.QueryRowContext(ctx, `SELECT count(*) FROM audit_spool WHERE kind LIKE 'held:%'`).Scan(&held); err != nil || held != 3 {
			t.Fatalf("held records in the spool file: %d, %v; want 3", held, err)
		}
		if s := l.Stats(); s.ConnectionWriteFailures != 2 || s.QueryWriteFailures != 1 {
			t.Errorf("stats %+v; want the held records counted as failures", s)
		}
		if !strings.Contains(logs.String(), "cannot be read") {
			t.Errorf("no log line names the held records:\n%s", logs.String())
		}
	})
}
