package fullpath_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node/audit"
)

// env is one installation shared by every subtest.
type env struct {
	*demo.Env
	conn  string // libpq connection string of azure-pg-mi-prod's loopback address
	start time.Time
}

// TestFullPath runs every client through one installation.
func TestFullPath(t *testing.T) {
	testenv.NeedBins(t, "psql", "pgbench")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	d := testenv.Start(t, demo.Options{LoopbackPort: port})
	e := &env{Env: d, conn: client.ConnString(d.Resource), start: time.Now()}
	for _, tc := range []struct {
		name string
		run  func(*testing.T, *env)
	}{
		{"psql sslmodes", testSSLModes},
		{"psql cancel", testPsqlCancel},
		{"psql copy", testPsqlCopy},
		{"pgbench", testPgbench},
		{"pgx", testPgx},
		{"pgjdbc", testJDBC},
		{"psycopg", testPsycopg},
		{"large messages", testLargeMessages},
		{"log API", testLogAPI},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, e) })
	}
}

// psql runs psql with args and returns stdout (and stderr on failure).
func psql(t *testing.T, conn string, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", append([]string{conn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"}, args...)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=20", "PGPASSWORD=")
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String() + errOut.String(), err
	}
	return out.String(), nil
}

// queries returns the query log since the test began, oldest first, after the node has written it.
func (e *env) queries(t *testing.T) []audit.Query {
	t.Helper()
	ctx := context.Background()
	if err := e.Node.Audit().Flush(ctx); err != nil {
		t.Fatalf("flush audit: %v", err)
	}
	qs, err := e.Node.Audit().Queries(ctx, audit.QueryFilter{Since: e.start, Limit: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for i, j := 0, len(qs)-1; i < j; i, j = i+1, j-1 {
		qs[i], qs[j] = qs[j], qs[i]
	}
	return qs
}

// find returns the records whose SQL contains marker.
func (e *env) find(t *testing.T, marker string) []audit.Query {
	t.Helper()
	var out []audit.Query
	for _, q := range e.queries(t) {
		if strings.Contains(q.SQL, marker) {
			out = append(out, q)
		}
	}
	return out
}

// want checks one record of the statement containing marker.
func (e *env) want(t *testing.T, marker, command string, rows int64, sqlstate string) audit.Query {
	t.Helper()
	var qs []audit.Query
	deadline := time.Now().Add(5 * time.Second)
	for {
		qs = e.find(t, marker)
		if len(qs) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(qs) == 0 {
		t.Fatalf("query log has no statement with %q", marker)
	}
	q := qs[len(qs)-1]
	if q.Command != command || (rows >= -1 && q.Rows != rows) || q.SQLState != sqlstate || q.User != "admin" || q.Resource != demo.ResourceName || q.Duration < 0 || q.Time.IsZero() {
		t.Fatalf("query log record of %q = %+v; want command %q rows %d sqlstate %q, user admin, a time", marker, q, command, rows, sqlstate)
	}
	return q
}

func testSSLModes(t *testing.T, e *env) {
	for _, mode := range []string{"disable", "allow", "prefer"} {
		conn := strings.Replace(e.conn, "sslmode=disable", "sslmode="+mode, 1)
		out, err := psql(t, conn, "", "-c", "SELECT 'sslmode-"+mode+"', current_user")
		if err != nil || !strings.Contains(out, "sslmode-"+mode+"|mi_user") {
			t.Fatalf("psql sslmode=%s: %v: %s", mode, err, out)
		}
		e.want(t, "sslmode-"+mode, "SELECT", 1, "")
	}
	// The local hop is not TLS (the tunnel encrypts): the proxy answers SSLRequest with 'N', so
	// sslmode=require fails at once with libpq's own message.
	conn := strings.Replace(e.conn, "sslmode=disable", "sslmode=require", 1)
	start := time.Now()
	out, err := psql(t, conn, "", "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, "server does not support SSL, but SSL was required") || time.Since(start) > 10*time.Second {
		t.Fatalf("psql sslmode=require: err=%v after %v: %s", err, time.Since(start), out)
	}
	t.Logf("sslmode=require: %s", strings.TrimSpace(out))
}

func testPsqlCancel(t *testing.T, e *env) {
	// A second session runs a query that must survive the cancel of the first.
	other := make(chan error, 1)
	go func() {
		out, err := psql(t, e.conn, "", "-c", "SELECT 'survivor', pg_sleep(3)")
		if err == nil && !strings.Contains(out, "survivor") {
			err = fmt.Errorf("output %q", out)
		}
		other <- err
	}()
	cmd := exec.Command("psql", e.conn, "-X", "-c", "SELECT 'victim', pg_sleep(60)")
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// Wait until the statement runs on the server.
	deadline := time.Now().Add(20 * time.Second)
	for len(e.activeSleeps(t)) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("pg_sleep sessions did not start: %v", e.activeSleeps(t))
		}
		time.Sleep(50 * time.Millisecond)
	}
	sent := time.Now()
	cmd.Process.Signal(syscall.SIGINT) // what Ctrl-C does
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("psql did not end 10 s after SIGINT")
	}
	took := time.Since(sent)
	if !strings.Contains(errOut.String(), "canceling statement due to user request") {
		t.Fatalf("psql after SIGINT: %s", errOut.String())
	}
	t.Logf("cancel took %v", took)
	if err := <-other; err != nil {
		t.Fatalf("second session: %v", err)
	}
	if q := e.want(t, "'victim', pg_sleep(60)", "", -1, "57014"); q.Duration <= 0 || q.Duration > 30*time.Second {
		t.Fatalf("cancelled statement's duration %v", q.Duration)
	}
	if q := e.want(t, "'survivor', pg_sleep(3)", "SELECT", 1, ""); q.Duration < 3*time.Second {
		t.Fatalf("pg_sleep(3) logged with duration %v", q.Duration)
	}
}

// activeSleeps lists the pg_sleep statements running on the server (as its superuser).
func (e *env) activeSleeps(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("psql", e.Emu.SuperuserConnString(), "-X", "-A", "-t", "-c",
		"SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT %pg_sleep%' AND state = 'active' AND pid <> pg_backend_pid()").CombinedOutput()
	if err != nil {
		t.Fatalf("psql as superuser: %v: %s", err, out)
	}
	return strings.Fields(string(out))
}

func testPsqlCopy(t *testing.T, e *env) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.csv")
	var b bytes.Buffer
	for i := range 200000 {
		fmt.Fprintf(&b, "%d,row %d\n", i, i)
	}
	if err := os.WriteFile(in, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.csv")
	script := fmt.Sprintf(`CREATE TABLE copy_t (id int, v text);
\copy copy_t FROM '%s' WITH (FORMAT csv)
\copy copy_t TO '%s' WITH (FORMAT csv)
\set ON_ERROR_STOP 0
\copy copy_t FROM '%s' WITH (FORMAT csv, DELIMITER ';')
\set ON_ERROR_STOP 1
SELECT 'after-failed-copy', count(*) FROM copy_t;
`, in, out, in)
	res, err := psql(t, e.conn, script)
	if err != nil {
		t.Fatalf("psql copy: %v: %s", err, res)
	}
	if !strings.Contains(res, "after-failed-copy|200000") {
		t.Fatalf("session after a failed COPY: %s", res)
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, b.Bytes()) {
		t.Fatalf("COPY TO wrote %d bytes (err %v), want the %d read in", len(got), err, b.Len())
	}
	qs := e.find(t, "copy_t")
	var from, to, failed int
	for _, q := range qs {
		switch {
		case strings.HasPrefix(q.SQL, "COPY  copy_t FROM STDIN") || strings.HasPrefix(q.SQL, "COPY copy_t FROM STDIN"):
			if q.SQLState == "22P04" || q.SQLState != "" {
				failed++
			} else if q.Command == "COPY" && q.Rows == 200000 {
				from++
			}
		case strings.Contains(q.SQL, "TO STDOUT") && q.Command == "COPY" && q.Rows == 200000:
			to++
		}
		if len(q.SQL) > 1000 {
			t.Fatalf("COPY data reached the query log: %d bytes of SQL", len(q.SQL))
		}
	}
	if from != 1 || to != 1 || failed != 1 {
		t.Fatalf("COPY records: %d in, %d out, %d failed; want 1 each: %+v", from, to, failed, qs)
	}

	// A 5 MB statement works and is logged cut, with its length and hash.
	long := "SELECT length('" + strings.Repeat("x", 5<<20) + "') AS five_mb"
	res, err = psql(t, e.conn, long+";\n")
	if err != nil || strings.TrimSpace(res) != fmt.Sprint(5<<20) {
		t.Fatalf("5 MB statement: %v: %.200s", err, res)
	}
	q := e.want(t, "SELECT length('xxxxxxxx", "SELECT", 1, "")
	// psql sends the statement with its terminating semicolon.
	if q.SQLLength < int64(len(long)) || q.SQLLength > int64(len(long))+3 || len(q.SQL) >= len(long) || len(q.SQLSHA256) != 64 {
		t.Fatalf("5 MB statement logged as %d bytes, length %d, sha %q", len(q.SQL), q.SQLLength, q.SQLSHA256)
	}
}

func testPgbench(t *testing.T, e *env) {
	pgbench := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "pgbench", append(args, e.conn)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	pgbench("-i", "-s", "1", "-q")
	for _, mode := range []string{"simple", "extended", "prepared"} {
		out := pgbench("-M", mode, "-c", "8", "-j", "2", "-T", "2", "-n")
		if !strings.Contains(out, "number of failed transactions: 0 ") {
			t.Fatalf("pgbench -M %s:\n%s", mode, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "tps") || strings.HasPrefix(line, "number of transactions actually processed") {
				t.Logf("pgbench -M %s: %s", mode, line)
			}
		}
	}
	script := filepath.Join(t.TempDir(), "pipeline.sql")
	os.WriteFile(script, []byte(`\set aid random(1, 100000)
\startpipeline
SELECT abalance AS pipeline_a FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
SELECT 2 AS pipeline_b;
\endpipeline
`), 0o600)
	out := pgbench("-M", "extended", "-c", "2", "-t", "20", "-n", "-f", script)
	if !strings.Contains(out, "number of failed transactions: 0 ") {
		t.Fatalf("pgbench pipeline:\n%s", out)
	}
	// Every transaction of the pipeline script left its three statements in the log.
	if n := len(e.find(t, "pipeline_a")); n != 40 {
		t.Fatalf("%d records of the pipeline's first statement, want 40", n)
	}
	e.want(t, "UPDATE pgbench_accounts SET abalance = abalance + 1", "UPDATE", 1, "")
	if n := len(e.find(t, "pipeline_b")); n != 40 {
		t.Fatalf("%d records of the pipeline's last statement, want 40", n)
	}
	// prepared mode: the named statements are mapped back to their SQL.
	var prepared int
	for _, q := range e.find(t, "UPDATE pgbench_branches") {
		if q.Statement != "" && q.Protocol == "extended" && q.Command == "UPDATE" && q.Rows == 1 && q.Params != "" {
			prepared++
		}
	}
	if prepared == 0 {
		t.Fatal("no record of pgbench's named prepared UPDATE with its parameters")
	}
	if d := e.Node.Audit().Dropped(); d != 0 {
		t.Logf("query records dropped under pgbench load: %d", d)
	}
}

func testPgx(t *testing.T, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connect := func() *pgx.Conn {
		t.Helper()
		c, err := pgx.Connect(ctx, e.conn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	c := connect()

	t.Run("batch with a failing statement", func(t *testing.T) {
		b := &pgx.Batch{}
		b.Queue("SELECT 'batch-1'")
		b.Queue("SELECT 1/0 AS batch_2")
		b.Queue("SELECT 'batch-3'")
		br := c.SendBatch(ctx, b)
		var s string
		if err := br.QueryRow().Scan(&s); err != nil || s != "batch-1" {
			t.Fatalf("first: %v %q", err, s)
		}
		var n int
		var pgErr *pgconn.PgError
		if err := br.QueryRow().Scan(&n); !errors.As(err, &pgErr) || pgErr.Code != "22012" {
			t.Fatalf("second: %v", err)
		}
		br.Close()
		if err := c.QueryRow(ctx, "SELECT 'after-batch'").Scan(&s); err != nil {
			t.Fatal(err)
		}
		e.want(t, "batch-1", "SELECT", 1, "")
		e.want(t, "batch_2", "", -1, "22012")
		if qs := e.find(t, "batch-3"); len(qs) != 0 {
			t.Fatalf("a statement the server skipped after the error was logged: %+v", qs)
		}
	})

	t.Run("CopyFrom 100k rows", func(t *testing.T) {
		if _, err := c.Exec(ctx, "CREATE TABLE pgx_copy (id int, v text)"); err != nil {
			t.Fatal(err)
		}
		rows := make([][]any, 100000)
		for i := range rows {
			rows[i] = []any{i, "v"}
		}
		n, err := c.CopyFrom(ctx, pgx.Identifier{"pgx_copy"}, []string{"id", "v"}, pgx.CopyFromRows(rows))
		if err != nil || n != 100000 {
			t.Fatalf("CopyFrom = %d, %v", n, err)
		}
		e.want(t, `"pgx_copy"`, "COPY", 100000, "")
	})

	t.Run("context cancel", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer ccancel()
		_, err := c.Exec(cctx, "SELECT pg_sleep(30) AS pgx_cancel")
		if err == nil {
			t.Fatal("pg_sleep(30) returned")
		}
		e.want(t, "pgx_cancel", "", -1, "57014")
		// pgx closes a connection whose query was interrupted; a new one works.
		c = connect()
	})

	t.Run("LISTEN/NOTIFY to an idle listener", func(t *testing.T) {
		listener := connect()
		if _, err := listener.Exec(ctx, "LISTEN ferry_chan"); err != nil {
			t.Fatal(err)
		}
		sent := time.Now()
		if _, err := c.Exec(ctx, "NOTIFY ferry_chan, 'hello'"); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		n, err := listener.WaitForNotification(wctx)
		if err != nil || n.Payload != "hello" {
			t.Fatalf("notification: %+v, %v", n, err)
		}
		t.Logf("notification delivered %v after NOTIFY", time.Since(sent))
		e.want(t, "LISTEN ferry_chan", "LISTEN", -1, "")
	})
}

const jdbcJar = "/usr/share/java/postgresql.jar"

func testJDBC(t *testing.T, e *env) {
	if _, err := os.Stat(jdbcJar); err != nil {
		t.Skipf("pgjdbc is not installed (%s missing: apt-get install libpostgresql-jdbc-java)", jdbcJar)
	}
	if _, err := exec.LookPath("javac"); err != nil {
		t.Skip("javac is not installed (a JDK 17 is needed)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("javac", "-d", dir, "-cp", jdbcJar, filepath.Join("testdata", "JdbcCheck.java")).CombinedOutput(); err != nil {
		t.Fatalf("javac: %v\n%s", err, out)
	}
	if out, err := psql(t, e.conn, "", "-c", "CREATE SCHEMA IF NOT EXISTS jdbc_schema"); err != nil {
		t.Fatalf("create schema: %v: %s", err, out)
	}
	host, port, _ := net.SplitHostPort(e.Resource.Address)
	url := fmt.Sprintf("jdbc:postgresql://%s:%s/%s?user=%s&sslmode=disable&currentSchema=jdbc_schema&ApplicationName=ferry-jdbc"+
		"&options=-c%%20statement_timeout%%3D4321&prepareThreshold=1", host, port, demo.Database, demo.Role)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "java", "-cp", jdbcJar+":"+dir, "JdbcCheck", url).CombinedOutput()
	if err != nil {
		t.Fatalf("java: %v\n%s", err, out)
	}
	for _, want := range []string{"search_path=jdbc_schema\n", "application_name=ferry-jdbc\n", "statement_timeout=4321ms\n", "current_schema=jdbc_schema\n",
		"prep3=4\n", "fetched=1000\n", "timeout=57014 ", "after=jdbc-after-timeout\n"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("pgjdbc output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("pgjdbc: %s", strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", "; "))
	// prepareThreshold=1: executions use a named statement, with their parameter.
	named := 0
	for _, q := range e.find(t, "jdbc_prep") {
		if q.Statement != "" && q.Rows == 1 && strings.HasPrefix(q.Params, "$1=") {
			named++
		}
	}
	if named == 0 {
		t.Fatalf("no record of the named prepared statement: %+v", e.find(t, "jdbc_prep"))
	}
	// setFetchSize: ten batches of one portal make one record of 1000 rows.
	e.want(t, "jdbc_fetch", "SELECT", 1000, "")
	if n := len(e.find(t, "jdbc_fetch")); n != 1 {
		t.Fatalf("%d records of the paged statement, want 1", n)
	}
	e.want(t, "jdbc_timeout", "", -1, "57014")
	e.want(t, "SHOW statement_timeout", "SHOW", -1, "")
}

func testPsycopg(t *testing.T, e *env) {
	py := "/usr/bin/python3"
	if out, err := exec.Command(py, "-c", "import psycopg2").CombinedOutput(); err != nil {
		t.Skipf("psycopg2 is not installed for %s (apt-get install python3-psycopg2): %s", py, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, filepath.Join("testdata", "psycopg_check.py"), e.conn).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	for _, want := range []string{"params=it's|42|00ff62696e|True\n", "cursor_rows=1000\n"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("psycopg output lacks %q:\n%s", want, out)
		}
	}
	// psycopg2 interpolates parameters client-side: the log has the literal values.
	e.want(t, "psy_params", "SELECT", 1, "")
	e.want(t, "DECLARE \"ferry_cursor\"", "DECLARE CURSOR", -1, "")
	var fetched int64
	for _, q := range e.find(t, "FETCH FORWARD 100 FROM \"ferry_cursor\"") {
		fetched += q.Rows
	}
	if fetched != 1000 {
		t.Fatalf("FETCH records add up to %d rows, want 1000", fetched)
	}
}

// testLogAPI reads the logs as `ferry admin logs` does, through the node's API with filters.
func testLogAPI(t *testing.T, e *env) {
	ctx := context.Background()
	if err := e.Node.Audit().Flush(ctx); err != nil {
		t.Fatal(err)
	}
	qs, err := e.Daemon.API().QueryLog(ctx, api.LogFilter{User: "admin", Resource: demo.ResourceName, Since: e.start, Limit: 5})
	if err != nil || len(qs) != 5 {
		t.Fatalf("query log: %d records, %v", len(qs), err)
	}
	for _, q := range qs {
		if q.User != "admin" || q.Time.Before(e.start) || q.ConnectionID == 0 {
			t.Fatalf("query record %+v", q)
		}
	}
	if qs, err := e.Daemon.API().QueryLog(ctx, api.LogFilter{User: "nobody"}); err != nil || len(qs) != 0 {
		t.Fatalf("query log of an unknown user: %d records, %v", len(qs), err)
	}
	if qs, err := e.Daemon.API().QueryLog(ctx, api.LogFilter{Until: e.start}); err != nil || len(qs) != 0 {
		t.Fatalf("query log until the start: %d records, %v", len(qs), err)
	}
	cs, err := e.Daemon.API().ConnectionLog(ctx, api.LogFilter{Resource: demo.ResourceName, Since: e.start, Limit: 1000})
	if err != nil || len(cs) == 0 {
		t.Fatalf("connection log: %d records, %v", len(cs), err)
	}
	served, answered := 0, 0
	for _, c := range cs {
		if c.Outcome != "ok" || c.End.IsZero() {
			continue
		}
		served++
		// Some clients log in and only send Terminate: bytes from the server may be 0.
		if c.UpstreamPID == 0 || c.BytesFromClient == 0 || c.Role != demo.Role || c.Database != demo.Database || c.DurationMS < 0 {
			t.Fatalf("connection record %+v", c)
		}
		if c.BytesFromServer > 0 {
			answered++
		}
	}
	if served == 0 || answered == 0 {
		t.Fatalf("%d ended connections in the log, %d with bytes from the server", served, answered)
	}
	// psql sent its own user (mi_user) and database: the log keeps them as sent.
	found := false
	for _, c := range cs {
		if c.OriginalUser == demo.Role && c.OriginalDatabase == demo.Database {
			found = true
		}
	}
	if !found {
		t.Fatal("no connection record keeps the client's original user and database")
	}
}
