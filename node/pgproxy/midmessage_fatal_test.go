package pgproxy

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestServerFatalWhileClientMidMessage: a client that sends the start of a request and stalls
// must not hold back a FATAL the server sends meanwhile (pg_terminate_backend): the server never
// got the request whole, so nothing of it waits for an answer, and the client is told and the
// session ends, as it would between requests.
func TestServerFatalWhileClientMidMessage(t *testing.T) {
	pg := startPostgres(t)
	tp := startProxy(t, Config{Tokens: &testTokens{token: pg.token}}, pg.target())
	c := dialRaw(t, tp)
	// A Query announced as 100 bytes, of which only a few are sent.
	partial := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(partial[1:], 100)
	partial = append(partial, "SELECT 1 -- the rest never comes"...)
	if _, err := c.nc.Write(partial); err != nil {
		t.Fatal(err)
	}
	// Once the server is reading the request, terminate it.
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := pg.psqlAdmin(t, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = 'appdb' AND pid <> pg_backend_pid()")
		if strings.TrimSpace(out) == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session to terminate: %q", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	var fatal *pgproto3.ErrorResponse
	for {
		msg, err := c.fe.Receive()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the server's FATAL was held back from a client in the middle of a message (got %v so far)", fatal)
		}
		if err != nil {
			if fatal == nil {
				t.Fatalf("connection ended without the server's FATAL: %v", err)
			}
			break
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			fatal = e
		}
	}
	if fatal.Code != "57P01" {
		t.Fatalf("got error %s %q, want the server's 57P01", fatal.Code, fatal.Message)
	}
	// The session ends without the client sending the rest.
	tp.waitIdle(t)
	_, qs := lastSession(t, tp)
	if len(qs) != 0 {
		t.Fatalf("records of a request the server never got whole: %+v", qs)
	}
}
