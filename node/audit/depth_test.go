package audit

import (
	"bufio"
	"context"
	"fmt"
	"github.com/ferryhq/ferry/node/store"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRecordFieldsRoundTrip stores every field of a connection and a query and reads them back,
// with the time filters.
func TestRecordFieldsRoundTrip(t *testing.T) { forEachBackend(t, false, testRecordFieldsRoundTrip) }

func testRecordFieldsRoundTrip(t *testing.T, d *testDB) {
	ctx := context.Background()
	l := d.openLog(t, Options{})
	t0 := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	id, err := l.StartConnection(ctx, Connection{Start: t0, User: "alice", Resource: "pg", ClientAddr: "100.64.0.5:1",
		OriginalUser: "postgres", OriginalDatabase: "", Role: "mi_user", Database: "app"})
	if err != nil {
		t.Fatal(err)
	}
	q := Query{ConnectionID: id, Time: t0.Add(time.Second), Duration: 1500 * time.Microsecond, User: "alice", Resource: "pg",
		SQL: "SELECT $1", SQLLength: 9000, SQLSHA256: strings.Repeat("ab", 32), Protocol: "extended", Statement: "s1",
		Params: "$1='x'", Command: "SELECT", Rows: 3, SQLState: "", Error: ""}
	failed := Query{ConnectionID: id, Time: t0.Add(2 * time.Second), User: "alice", Resource: "pg", SQL: "SELECT 1/0", Rows: -1, SQLState: "22012", Error: "division by zero"}
	rec := l.Recorder(id, nil)
	for _, r := range []Query{q, failed} {
		if err := rec.Record(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	rec.Close(ctx)
	end := ConnectionEnd{Outcome: OutcomeOK, Error: "server closed", SQLState: "57P01", UpstreamPID: 4242, BytesFromClient: 10, BytesFromServer: 20, QueriesDropped: 1}
	if err := l.EndConnection(ctx, id, t0.Add(time.Minute), end); err != nil {
		t.Fatal(err)
	}
	cs, err := l.Connections(ctx, ConnectionFilter{Since: t0, Until: t0.Add(time.Second)})
	if err != nil || len(cs) != 1 {
		t.Fatalf("connections = %+v, %v", cs, err)
	}
	c := cs[0]
	if c.ConnectionEnd != end || c.OriginalUser != "postgres" || c.Role != "mi_user" || c.Database != "app" || c.Duration() != time.Minute {
		t.Fatalf("connection = %+v", c)
	}
	if cs, _ := l.Connections(ctx, ConnectionFilter{Since: t0.Add(time.Second)}); len(cs) != 0 {
		t.Fatalf("since after start matched %+v", cs)
	}
	qs, err := l.Queries(ctx, QueryFilter{Since: t0.Add(time.Second), Until: t0.Add(2 * time.Second)})
	if err != nil || len(qs) != 1 {
		t.Fatalf("queries = %+v, %v", qs, err)
	}
	q.ID = qs[0].ID
	if len(qs[0].RecordID) != 32 || qs[0].RecordID == c.RecordID || len(c.RecordID) != 32 {
		t.Fatalf("record IDs: query %q, connection %q; want two different 32-digit IDs", qs[0].RecordID, c.RecordID)
	}
	q.RecordID = qs[0].RecordID
	q.Time = qs[0].Time // time round-trips through UTC
	if qs[0] != q || !qs[0].Time.Equal(t0.Add(time.Second)) {
		t.Fatalf("query = %+v\nwant    %+v", qs[0], q)
	}
	qs, _ = l.Queries(ctx, QueryFilter{ConnectionID: id})
	if len(qs) != 2 || qs[0].SQLState != "22012" || qs[0].Rows != -1 || qs[0].Protocol != "simple" {
		t.Fatalf("failed query = %+v", qs[0])
	}
}

// TestUpgradeAddsColumns opens a database made with the first schema.
func TestUpgradeAddsColumns(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ferry.db")
	db, err := OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, schema); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO audit_connections (start_time, user_name, resource, client_addr, database) VALUES ('2025-01-01T00:00:00.000000000Z', 'u', 'r', 'a', 'd')`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	l := openTestLog(t, path)
	cs, err := l.Connections(ctx, ConnectionFilter{})
	if err != nil || len(cs) != 1 || cs[0].User != "u" {
		t.Fatalf("old connection after upgrade = %+v, %v", cs, err)
	}
}

// TestSurvivesKill9 has a child process commit records and keep writing
// more, and kills it with SIGKILL mid-write: every committed record must be in
// the file, and the file must open cleanly (WAL recovery).
func TestSurvivesKill9(t *testing.T) {
	if u := os.Getenv("FERRY_AUDIT_KILL_CHILD"); u != "" {
		killChild(u)
		return
	}
	forEachBackend(t, false, testSurvivesKill9)
}

func testSurvivesKill9(t *testing.T, d *testDB) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestSurvivesKill9$")
	cmd.Env = append(os.Environ(), "FERRY_AUDIT_KILL_CHILD="+d.url)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	n := -1
	for sc.Scan() {
		if s, ok := strings.CutPrefix(sc.Text(), "written "); ok {
			n, _ = strconv.Atoi(s)
			break
		}
	}
	time.Sleep(time.Second)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if n <= 0 {
		t.Fatal("child did not report its records")
	}
	l := d.openLog(t, Options{})
	qs, err := l.Queries(context.Background(), QueryFilter{Limit: 100000})
	if err != nil || len(qs) < n {
		t.Fatalf("%d queries after kill -9, want at least the %d committed (err %v)", len(qs), n, err)
	}
	t.Logf("%d records committed before the kill, %d in the file after it", n, len(qs))
}

// killChild commits queries to the database at url, reports how many, and keeps writing until
// killed.
func killChild(url string) {
	ctx := context.Background()
	db, err := store.Open(ctx, store.Options{URL: url})
	if err != nil {
		panic(err)
	}
	l, err := OpenStore(ctx, db, Options{})
	if err != nil {
		panic(err)
	}
	id, err := l.StartConnection(ctx, Connection{User: "u", Resource: "r"})
	if err != nil {
		panic(err)
	}
	const n = 5000
	rec := l.Recorder(id, nil)
	for i := range n {
		if err := rec.Record(ctx, Query{User: "u", Resource: "r", SQL: fmt.Sprint("SELECT ", i)}); err != nil {
			panic(err)
		}
	}
	if err := l.Flush(ctx); err != nil {
		panic(err)
	}
	fmt.Printf("written %d\n", n)
	os.Stdout.Sync()
	// Keep writing until killed, so the kill lands in the middle of writes.
	for i := 0; ; i++ {
		rec.Record(ctx, Query{User: "u", Resource: "r", SQL: fmt.Sprint("SELECT more ", i)})
	}
}

// TestRecordsTextThePostgreSQLTypeRefuses: a statement cut inside a UTF-8 character, text in
// another encoding and a NUL byte are recorded, not refused: PostgreSQL's text type holds neither
// invalid UTF-8 nor NUL, so those bytes become U+FFFD there; SQLite keeps them as they are.
func TestRecordsTextThePostgreSQLTypeRefuses(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		l := d.openLog(t, Options{WriteAttempts: 1})
		id, err := l.StartConnection(ctx, Connection{User: "alice", Resource: "r", Database: "caf\xe9"})
		if err != nil {
			t.Fatal(err)
		}
		sqls := []string{"SELECT 'h\xc3", "SELECT 'caf\xe9'", "SELECT '\x00'"}
		rec := l.Recorder(id, nil)
		for _, s := range sqls {
			if err := rec.Record(ctx, Query{User: "alice", Resource: "r", SQL: s, Params: s}); err != nil {
				t.Fatal(err)
			}
		}
		if n := rec.Close(ctx); n != 0 {
			t.Fatalf("%d records not written", n)
		}
		qs, err := l.Queries(ctx, QueryFilter{ConnectionID: id})
		if err != nil || len(qs) != len(sqls) {
			t.Fatalf("queries = %d, %v; want %d", len(qs), err, len(sqls))
		}
		for i, q := range qs {
			want := sqls[len(sqls)-1-i]
			if d.path == "" {
				want = strings.ReplaceAll(strings.ToValidUTF8(want, "\uFFFD"), "\x00", "\uFFFD")
			}
			if q.SQL != want || q.Params != want {
				t.Errorf("recorded %q (params %q), want %q", q.SQL, q.Params, want)
			}
		}
	})
}

// TestRecordsServerCodesThePostgreSQLTypeRefuses: the SQLSTATE of an ErrorResponse comes from the
// server the resource names, which need not be PostgreSQL and may send any bytes; a code with
// invalid UTF-8 (or a NUL) is recorded with the query and the connection's end, not refused by
// PostgreSQL's text type (and so lost). SQLite keeps the bytes as they are.
func TestRecordsServerCodesThePostgreSQLTypeRefuses(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		l := d.openLog(t, Options{WriteAttempts: 1})
		const code = "4\xff\x00\xfe1"
		want := code
		if d.path == "" {
			want = strings.ReplaceAll(strings.ToValidUTF8(code, "\uFFFD"), "\x00", "\uFFFD")
		}
		id, err := l.StartConnection(ctx, Connection{User: "alice", Resource: "r", ClientAddr: "198.51.100.7:5432"})
		if err != nil {
			t.Fatal(err)
		}
		rec := l.Recorder(id, nil)
		if err := rec.Record(ctx, Query{User: "alice", Resource: "r", SQL: "SELECT 1", SQLState: code, Error: "boom"}); err != nil {
			t.Fatal(err)
		}
		if n := rec.Close(ctx); n != 0 {
			t.Fatalf("%d records not written", n)
		}
		if err := l.EndConnection(ctx, id, time.Now(), ConnectionEnd{Outcome: OutcomeFailed, Error: "server FATAL", SQLState: code}); err != nil {
			t.Fatalf("end: %v", err)
		}
		qs, err := l.Queries(ctx, QueryFilter{ConnectionID: id})
		if err != nil || len(qs) != 1 || qs[0].SQLState != want {
			t.Fatalf("queries %+v, %v; want one with SQLSTATE %q", qs, err, want)
		}
		cs, err := l.Connections(ctx, ConnectionFilter{User: "alice"})
		if err != nil || len(cs) != 1 || cs[0].SQLState != want || cs[0].Outcome != OutcomeFailed {
			t.Fatalf("connections %+v, %v; want one ended with SQLSTATE %q", cs, err, want)
		}
	})
}
