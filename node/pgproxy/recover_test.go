package pgproxy

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/node/audit"
)

// panicConn is a client connection whose Read panics once it reads onRead and whose Write panics
// when asked to write onWrite: Read runs in the relay's client-to-server goroutine, Write in its
// server-to-client one.
type panicConn struct {
	net.Conn
}

const (
	panicOnRead  = "ferry_panic_c2s"
	panicOnWrite = "ferry_panic_s2c"
)

func (c *panicConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if bytes.Contains(b[:n], []byte(panicOnRead)) {
		panic("test: panic in the relay reading from the client")
	}
	return n, err
}

func (c *panicConn) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte(panicOnWrite)) {
		panic("test: panic in the relay writing to the client")
	}
	return c.Conn.Write(b)
}

// TestSessionPanicEndsOnlyThatSession: a panic in any goroutine of a session (Serve's own, the
// relay's client-to-server and server-to-client ones) ends that session alone, with a FATAL
// XX000 ErrorResponse, a failed audit connection and one OnPanic call, while other sessions run
// queries before, during and after it.
func TestSessionPanicEndsOnlyThatSession(t *testing.T) {
	pg := startPostgres(t)
	var panicInServe atomic.Bool
	var panics atomic.Int32
	tp := startProxy(t, Config{
		Tokens:  &testTokens{token: pg.token},
		OnPanic: func() { panics.Add(1) },
		TestHook: func(c net.Conn) net.Conn {
			if panicInServe.CompareAndSwap(true, false) {
				panic("test: panic in Serve")
			}
			return &panicConn{Conn: c}
		},
	}, pg.target())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	connect := func(t *testing.T) (*pgconn.PgConn, error) {
		return pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb"))
	}

	// Bystanders: sessions that run queries (4 MiB bytea parameters, checked by md5) until stopped.
	const bystanders = 3
	var ok [bystanders]atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, bystanders)
	var wg sync.WaitGroup
	param := bytes.Repeat([]byte("ferry"), 4<<20/5)
	sum := md5.Sum(param)
	want := hex.EncodeToString(sum[:])
	for i := range bystanders {
		c, err := connect(t)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close(context.Background())
			for n := 0; n < 10000; n++ {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				res := c.ExecParams(ctx, "SELECT md5($1::bytea), length($1::bytea)", [][]byte{param}, nil, []int16{1}, nil).Read()
				if res.Err != nil {
					errs <- fmt.Errorf("bystander %d query %d: %w", i, n, res.Err)
					return
				}
				if got := string(res.Rows[0][0]) + " " + string(res.Rows[0][1]); got != fmt.Sprintf("%s %d", want, len(param)) {
					errs <- fmt.Errorf("bystander %d query %d: got %s", i, n, got)
					return
				}
				ok[i].Add(1)
			}
			errs <- errors.New("bystander ran out of queries")
		}()
	}
	// waitProgress waits until every bystander has run another query, or one failed.
	waitProgress := func(t *testing.T) {
		t.Helper()
		var base [bystanders]int64
		for i := range base {
			base[i] = ok[i].Load()
		}
		deadline := time.Now().Add(time.Minute)
		for i := range base {
			for ok[i].Load() <= base[i] {
				select {
				case err := <-errs:
					t.Fatalf("a bystander session stopped: %v", err)
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("bystander %d made no progress in a minute", i)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	waitProgress(t)

	isPanicError := func(err error) bool {
		var pgErr *pgconn.PgError
		return errors.As(err, &pgErr) && pgErr.Severity == "FATAL" && pgErr.Code == "XX000" && pgErr.Message == PanicMessage
	}
	tests := []struct {
		name, where string
		run         func(t *testing.T) error
	}{
		{"in Serve", "panic in serve: test: panic in Serve", func(t *testing.T) error {
			panicInServe.Store(true)
			c, err := connect(t)
			if err == nil {
				c.Close(ctx)
			}
			return err
		}},
		{"in the relay from the client", "panic in relay client to server: test: panic in the relay reading from the client", func(t *testing.T) error {
			c, err := connect(t)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			_, err = c.Exec(ctx, "SELECT '"+panicOnRead+"'").ReadAll()
			return err
		}},
		{"in the relay to the client", "panic in relay server to client: test: panic in the relay writing to the client", func(t *testing.T) error {
			c, err := connect(t)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			_, err = c.Exec(ctx, "SELECT 'ferry_panic_' || 's2c'").ReadAll()
			return err
		}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(t); !isPanicError(err) {
				t.Fatalf("error = %v; want FATAL XX000 %q", err, PanicMessage)
			}
			waitProgress(t) // the others go on during and after
			if got := panics.Load(); got != int32(i+1) {
				t.Fatalf("OnPanic called %d times, want %d", got, i+1)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				conns, err := tp.audit.Connections(ctx, audit.ConnectionFilter{Limit: 100})
				if err != nil {
					t.Fatal(err)
				}
				var found bool
				for _, c := range conns {
					found = found || (c.Outcome == audit.OutcomeFailed && c.SQLState == "XX000" && c.Error == "internal error: "+tc.where && !c.End.IsZero())
				}
				if found {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no failed XX000 audit connection %q among %+v", tc.where, conns)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	close(stop)
	wg.Wait()
	for range bystanders {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// The panicked sessions' server backends are gone too: only psqlAdmin's own remains.
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := strings.TrimSpace(pg.psqlAdmin(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'mi_user'"))
		if n == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s server sessions of mi_user remain after every client left", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRelayPanicAfterOtherSideEnded: a relay goroutine that panics while the relay is already
// ending (the other direction returned first) is not lost: relay re-raises it in Serve's
// goroutine, whose recover logs, counts and records it.
func TestRelayPanicAfterOtherSideEnded(t *testing.T) {
	cliNode, cliFake := net.Pipe()
	srvNode, srvFake := net.Pipe()
	defer cliFake.Close()
	defer srvFake.Close()
	release := make(chan struct{})
	tr := newTracker(0, false, func(audit.Query) {
		<-release
		panic("test: panic in the query record")
	})
	p := New(Config{Logger: slog.New(slog.DiscardHandler)})
	got := make(chan any, 1)
	go func() {
		defer func() { got <- recover() }()
		var stats relayStats
		p.relay(context.Background(), cliNode, srvNode, tr, &stats, "r")
	}()
	srvFake.SetDeadline(time.Now().Add(10 * time.Second))
	cliFake.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := cliFake.Write(encode(t, &pgproto3.Query{String: "SELECT 1"})); err != nil {
		t.Fatal(err)
	}
	be := pgproto3.NewBackend(srvFake, srvFake)
	if _, err := be.Receive(); err != nil {
		t.Fatal(err)
	}
	// The response reaches the tracker, whose record call waits for release.
	if _, err := srvFake.Write(encodeB(t, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})); err != nil {
		t.Fatal(err)
	}
	// The client leaves: the client-to-server goroutine ends first and relay closes the server.
	cliFake.Close()
	if _, err := be.Receive(); err == nil {
		t.Fatal("the server connection stayed open after the client left")
	}
	close(release)
	select {
	case v := <-got:
		if sp, ok := v.(*sessionPanic); !ok || sp.where != "relay server to client" {
			t.Fatalf("relay ended with %v; want the server-to-client goroutine's panic re-raised", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end")
	}
}
