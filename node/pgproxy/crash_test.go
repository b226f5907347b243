package pgproxy

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/audit"
)

// crashChild is what the proxy process of TestProxyKilledUnderPgbench is given.
type crashChild struct {
	Port              int    // the PostgreSQL server's
	Token             string // its password for mi_user
	CertPath          string // its certificate (trusted as it is)
	DBPath, SpoolPath string // the audit log's SQLite file and spool, as a node keeps them
}

const crashChildEnv = "FERRY_PGPROXY_CRASH_CHILD"

// TestProxyKilledUnderPgbench: a proxy in a process of its own, with its audit log in a SQLite file
// and a spool as a node keeps them, serves pgbench (8 clients, no rate limit) and is killed with
// SIGKILL in the middle of it. Every transaction pgbench counted as done has its query record in
// the audit log afterwards (opened again, as the restarted node does, shipping its spool): the
// proxy let no answer through before its record was durable.
func TestProxyKilledUnderPgbench(t *testing.T) {
	if c := os.Getenv(crashChildEnv); c != "" {
		runCrashChild(c)
		return
	}
	if _, err := exec.LookPath("pgbench"); err != nil {
		t.Skip("pgbench is not installed")
	}
	pg := startPostgres(t)
	dir := t.TempDir()
	proxyPort, cc, cmd := startCrashChild(t, pg)

	const sql = "SELECT 'crash bench'"
	script := filepath.Join(dir, "bench.sql")
	if err := os.WriteFile(script, []byte(sql+";\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bench := exec.CommandContext(ctx, "pgbench", "-n", "-f", script, "-c", "8", "-j", "2", "-T", "30",
		"-h", "127.0.0.1", "-p", strconv.Itoa(proxyPort), "-U", "whoever", "appdb")
	bench.Env = append(os.Environ(), "PGPASSWORD=ignored", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
	benchDone := make(chan struct{})
	var benchOut []byte
	go func() {
		defer close(benchDone)
		benchOut, _ = bench.CombinedOutput()
	}()
	// Kill the proxy once pgbench is well under way (records are being written all the time).
	db, err := audit.OpenDB(cc.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if !waitFor(30*time.Second, func() bool {
		var n int
		db.QueryRow(`SELECT count(*) FROM audit_queries WHERE sql LIKE ? || '%'`, sql).Scan(&n)
		return n >= 500
	}) {
		cancel()
		<-benchDone
		t.Fatalf("pgbench through the proxy did not get going within 30s:\n%s", benchOut)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	<-benchDone
	m := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindSubmatch(benchOut)
	if m == nil {
		t.Fatalf("pgbench did not report its transactions:\n%s", benchOut)
	}
	done, _ := strconv.Atoi(string(m[1]))

	// As the restarted node does: open the log on the same file and spool, which ships the spool.
	log, err := audit.OpenWithOptions(context.Background(), db, audit.Options{SpoolPath: cc.SpoolPath, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	if !waitFor(30*time.Second, func() bool { return log.Stats().SpoolDepth == 0 }) {
		t.Fatalf("the spool was not shipped within 30s: %+v", log.Stats())
	}
	var recorded int
	if err := db.QueryRow(`SELECT count(*) FROM audit_queries WHERE sql LIKE ? || '%'`, sql).Scan(&recorded); err != nil {
		t.Fatal(err)
	}
	t.Logf("pgbench counted %d transactions done before the kill; the audit log has %d records of them\n%s", done, recorded, benchOut)
	if done <= 0 {
		t.Fatalf("pgbench counted no transaction:\n%s", benchOut)
	}
	if recorded < done {
		t.Fatalf("pgbench counted %d transactions done, the audit log has %d: %d statements completed for the client without a record",
			done, recorded, done-recorded)
	}
}

// runCrashChild serves the proxy of TestProxyKilledUnderPgbench until it is killed.
func runCrashChild(arg string) {
	var cc crashChild
	if err := json.Unmarshal([]byte(arg), &cc); err != nil {
		panic(err)
	}
	pem, err := os.ReadFile(cc.CertPath)
	if err != nil {
		panic(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		panic("no certificate in " + cc.CertPath)
	}
	ctx := context.Background()
	db, err := audit.OpenDB(cc.DBPath)
	if err != nil {
		panic(err)
	}
	log, err := audit.OpenWithOptions(ctx, db, audit.Options{SpoolPath: cc.SpoolPath, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	pg := &testPG{port: cc.Port}
	target := pg.target()
	target.RootCAs = roots
	p := New(Config{Tokens: &testTokens{token: cc.Token}, Audit: testAudit{log}, Logger: slog.New(slog.DiscardHandler)})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("listening %d\n", l.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	for {
		c, err := l.Accept()
		if err != nil {
			panic(err)
		}
		go p.Serve(ctx, c, target, Session{User: "alice", ClientAddr: c.RemoteAddr().String()})
	}
}
