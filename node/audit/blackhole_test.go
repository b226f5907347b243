package audit

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
)

// blackhole is a TCP relay on loopback to a test PostgreSQL's Unix socket that can stop passing
// bytes while keeping every connection open: a database the network stops answering for.
type blackhole struct {
	ln   net.Listener
	hole atomic.Bool
	mu   sync.Mutex
	cs   []net.Conn
}

func newBlackhole(t *testing.T, srv *pgtest.Server) *blackhole {
	t.Helper()
	socks, _ := filepath.Glob(filepath.Join(srv.SocketDir(), ".s.PGSQL.*"))
	var sock string
	for _, s := range socks {
		if !strings.HasSuffix(s, ".lock") {
			sock = s
		}
	}
	if sock == "" {
		t.Fatalf("no PostgreSQL socket in %s", srv.SocketDir())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln}
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.cs {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.track(c)
			if b.hole.Load() {
				continue // held open, never answered
			}
			up, err := net.Dial("unix", sock)
			if err != nil {
				c.Close()
				continue
			}
			b.track(up)
			go b.pipe(c, up)
			go b.pipe(up, c)
		}
	}()
	return b
}

func (b *blackhole) track(c net.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cs = append(b.cs, c)
}

// pipe copies src to dst, dropping what arrives while the hole is open.
func (b *blackhole) pipe(src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !b.hole.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (b *blackhole) url(database string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable&connect_timeout=5", pgtest.Superuser, b.ln.Addr(), database)
}

// TestSpoolWhenDatabaseDoesNotAnswer: a database that stops answering (its packets dropped, its
// connections left open) counts as failing after Options.AttemptTimeout per try, so a new
// connection is spooled within the caller's time instead of being refused when that runs out, and
// everything is shipped once the database answers again.
func TestSpoolWhenDatabaseDoesNotAnswer(t *testing.T) {
	srv := pgtest.NewServer(t)
	name, err := srv.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bh := newBlackhole(t, srv)
	d := &testDB{name: "postgres", url: bh.url(name)}
	l := d.openLog(t, Options{WriteAttempts: 2, AttemptTimeout: 500 * time.Millisecond, SpoolPath: filepath.Join(t.TempDir(), "audit-spool.db")})
	if _, err := l.StartConnection(context.Background(), Connection{User: "alice", Resource: "r"}); err != nil {
		t.Fatal(err)
	}
	bh.hole.Store(true)
	// The caller's own time (the proxy gives 30 s) is longer than the tries, shorter than forever.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id, err := l.StartConnection(ctx, Connection{User: "bob", Resource: "r"})
	if err != nil {
		t.Fatalf("StartConnection while the database does not answer: %v; want it spooled", err)
	}
	rec := l.Recorder(id, nil)
	const n = 20
	for i := range n {
		if err := rec.Record(ctx, Query{User: "bob", Resource: "r", SQL: fmt.Sprint("SELECT ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if d := rec.Close(ctx); d != 0 {
		t.Fatalf("%d records not written", d)
	}
	if err := l.EndConnection(ctx, id, time.Now(), ConnectionEnd{Outcome: OutcomeOK}); err != nil {
		t.Fatal(err)
	}
	bh.hole.Store(false)
	waitDrained(t, l)
	got := countRecords(t, l)
	for i := range n {
		if c := got[fmt.Sprint("SELECT ", i)]; c != 1 {
			t.Fatalf("SELECT %d is in the database %d times, want once", i, c)
		}
	}
}
