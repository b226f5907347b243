package pgproxy

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/node/audit"
)

// startCrashChild starts the proxy of runCrashChild in a process of its own (its audit log a SQLite
// file and a spool in a temporary directory) and returns its port, its configuration and the
// process, killed at cleanup.
func startCrashChild(t *testing.T, pg *testPG) (int, crashChild, *exec.Cmd) {
	t.Helper()
	dir := t.TempDir()
	cc := crashChild{Port: pg.port, Token: pg.token, CertPath: filepath.Join(filepath.Dir(pg.sockDir), "data", "server.crt"),
		DBPath: filepath.Join(dir, "ferry.db"), SpoolPath: filepath.Join(dir, "audit-spool.db")}
	arg, err := json.Marshal(cc)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestProxyKilledUnderPgbench$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+string(arg))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	port := make(chan int, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				p, _ := strconv.Atoi(s)
				port <- p
			}
		}
		close(port)
	}()
	select {
	case p := <-port:
		if p == 0 {
			t.Fatal("the proxy process ended before listening")
		}
		return p, cc, cmd
	case <-time.After(30 * time.Second):
		t.Fatal("the proxy process did not start listening within 30s")
	}
	return 0, cc, cmd
}

// ackLog is every statement a client saw complete, by its key.
type ackLog struct {
	mu   sync.Mutex
	keys map[string]string // key -> how it was sent
}

func (a *ackLog) add(key, how string) {
	a.mu.Lock()
	a.keys[key] = how
	a.mu.Unlock()
}

// pipelineClient runs rounds of statements on one session until the connection fails, logging in
// acks each statement whose completion it received: extended-protocol pipelines before one Sync
// (acknowledged at their CommandComplete), Executes each followed by a Flush, Executes with a row
// limit (PortalSuspended, then the rest), and simple Queries of several statements (acknowledged at
// their ReadyForQuery, as documented). Each statement selects its own unique key.
func pipelineClient(addr string, session int, acks *ackLog) error {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(90 * time.Second))
	fe := pgproto3.NewFrontend(nc, nc)
	send := func(msgs ...pgproto3.FrontendMessage) error {
		for _, m := range msgs {
			fe.Send(m)
		}
		return fe.Flush()
	}
	if err := send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "whoever", "database": "appdb"}}); err != nil {
		return err
	}
	// pending: keys of statements whose completion counts at the next ReadyForQuery only.
	var last string
	var pending []string
	read := func(how string, untilRFQ bool, commandCompletes int) error {
		for {
			m, err := fe.Receive()
			if err != nil {
				return err
			}
			switch m := m.(type) {
			case *pgproto3.DataRow:
				last = string(m.Values[0])
			case *pgproto3.CommandComplete:
				if how == "simple" {
					pending = append(pending, last)
				} else {
					acks.add(last, how)
				}
				commandCompletes--
				if !untilRFQ && commandCompletes == 0 {
					return nil
				}
			case *pgproto3.ErrorResponse:
				return fmt.Errorf("server error: %s", m.Message)
			case *pgproto3.ReadyForQuery:
				for _, k := range pending {
					acks.add(k, how)
				}
				pending = pending[:0]
				if untilRFQ {
					return nil
				}
			}
		}
	}
	if err := read("login", true, 0); err != nil {
		return err
	}
	for round := 0; ; round++ {
		key := func(i int) string { return fmt.Sprintf("k-%d-%d-%d", session, round, i) }
		var err error
		switch round % 4 {
		case 0:
			var msgs []pgproto3.FrontendMessage
			for i := range 20 {
				msgs = append(msgs, &pgproto3.Parse{Query: "SELECT '" + key(i) + "'"}, &pgproto3.Bind{}, &pgproto3.Execute{})
			}
			if err = send(append(msgs, &pgproto3.Sync{})...); err == nil {
				err = read("pipeline before Sync", true, 0)
			}
		case 1:
			for i := 0; i < 5 && err == nil; i++ {
				if err = send(&pgproto3.Parse{Query: "SELECT '" + key(i) + "'"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{}); err == nil {
					err = read("Execute and Flush", false, 1)
				}
			}
			if err == nil {
				if err = send(&pgproto3.Sync{}); err == nil {
					err = read("Execute and Flush", true, 0)
				}
			}
		case 2:
			q := "SELECT '" + key(0) + "' FROM generate_series(1, 3)"
			if err = send(&pgproto3.Parse{Query: q}, &pgproto3.Bind{}, &pgproto3.Execute{MaxRows: 2}, &pgproto3.Execute{MaxRows: 2}, &pgproto3.Sync{}); err == nil {
				err = read("Execute with a row limit", true, 0)
			}
		case 3:
			var b strings.Builder
			for i := range 5 {
				fmt.Fprintf(&b, "SELECT '%s';", key(i))
			}
			if err = send(&pgproto3.Query{String: b.String()}); err == nil {
				err = read("simple", true, 0)
			}
		}
		if err != nil {
			return err
		}
	}
}

// TestProxyKilledUnderPipelines: the proxy in a process of its own is killed with SIGKILL while six
// sessions pipeline statements in every way the protocol allows (many Executes before one Sync,
// Execute and Flush, Executes with a row limit, simple Queries of several statements). Every
// statement a client received the completion of before the kill has its own record in the audit log
// once it is opened again (the spool shipped): checked per statement, not by totals.
func TestProxyKilledUnderPipelines(t *testing.T) {
	pg := startPostgres(t)
	port, cc, cmd := startCrashChild(t, pg)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	acks := &ackLog{keys: map[string]string{}}
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for s := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[s] = pipelineClient(addr, s, acks)
		}()
	}
	db, err := audit.OpenDB(cc.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	count := func() int {
		var n int
		db.QueryRow(`SELECT count(*) FROM audit_queries`).Scan(&n)
		return n
	}
	if !waitFor(60*time.Second, func() bool { return count() >= 3000 }) {
		cmd.Process.Kill()
		wg.Wait()
		t.Fatalf("the sessions did not get going within 60s: %v", errs)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	wg.Wait()

	log, err := audit.OpenWithOptions(context.Background(), db, audit.Options{SpoolPath: cc.SpoolPath, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	if !waitFor(30*time.Second, func() bool { return log.Stats().SpoolDepth == 0 }) {
		t.Fatalf("the spool was not shipped within 30s: %+v", log.Stats())
	}
	recorded := recordedKeys(t, db)
	acks.mu.Lock()
	defer acks.mu.Unlock()
	missing := 0
	for k, how := range acks.keys {
		if !recorded[k] {
			missing++
			if missing <= 10 {
				t.Errorf("statement %s (%s) completed for its client but has no record", k, how)
			}
		}
	}
	t.Logf("%d statements acknowledged to the clients before the kill, %d keys in the audit log; session errors: %v", len(acks.keys), len(recorded), errs)
	if len(acks.keys) == 0 {
		t.Fatal("no statement was acknowledged")
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged statements have no record", missing, len(acks.keys))
	}
}

// recordedKeys is the set of keys (k-SESSION-ROUND-I) in the audit log's query records.
func recordedKeys(t *testing.T, db *sql.DB) map[string]bool {
	t.Helper()
	rows, err := db.Query(`SELECT sql FROM audit_queries`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	re := regexp.MustCompile(`k-\d+-\d+-\d+`)
	keys := map[string]bool{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		matches := re.FindAllString(s, -1)
		if len(matches) == 1 { // a record of one statement (a Query's whole text names them all)
			keys[matches[0]] = true
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return keys
}
