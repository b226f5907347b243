package node_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/pgproxy"
)

// panicOnRead is a tunnelled client connection whose Read panics when it reads marker: the panic
// happens in the relay goroutine of the node that reads the client.
type panicOnRead struct {
	net.Conn
	marker []byte
}

func (c *panicOnRead) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if bytes.Contains(b[:n], c.marker) {
		panic("test: panic in a session")
	}
	return n, err
}

// TestSessionPanicKeepsNodeRunning: through the whole path (client, tunnel, node, emulator,
// PostgreSQL), a panic in one session ends that session alone with FATAL XX000, is counted in
// ferry_node_session_panics_total and recorded as a failed connection, while another session
// keeps running queries before and after it.
func TestSessionPanicKeepsNodeRunning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	marker := []byte("ferry_node_panic_marker")
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), LoopbackPort: port, NodeConfig: func(c *node.Config) {
		c.MetricsListen = "127.0.0.1:0"
		c.SessionTestHook = func(conn net.Conn) net.Conn { return &panicOnRead{Conn: conn, marker: marker} }
	}})
	conn := client.ConnString(env.Resource)
	metricsURL := "http://" + env.Node.MetricsAddr().String()
	if got := scrape(t, metricsURL)["ferry_node_session_panics_total"]; got != 0 {
		t.Fatalf("ferry_node_session_panics_total = %v before any panic", got)
	}

	other, err := pgx.Connect(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	query := func(what string) {
		t.Helper()
		var s string
		if err := other.QueryRow(ctx, "SELECT $1::text || '-ok'", what).Scan(&s); err != nil || s != what+"-ok" {
			t.Fatalf("the other session %s the panic: %q, %v", what, s, err)
		}
	}
	query("before")

	victim, err := pgx.Connect(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	err = victim.QueryRow(ctx, "SELECT 1 AS "+string(marker)).Scan(&n)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Severity != "FATAL" || pgErr.Code != "XX000" || pgErr.Message != pgproxy.PanicMessage {
		t.Fatalf("the panicking session got %v; want FATAL XX000 %q", err, pgproxy.PanicMessage)
	}
	victim.Close(ctx)

	query("after")
	// The proxy counts the panic after it has told the client and recorded the connection's end, so
	// the count may follow the client's FATAL by a moment.
	waitFor(t, "ferry_node_session_panics_total = 1", func() bool {
		return scrape(t, metricsURL)["ferry_node_session_panics_total"] == 1
	})
	if got := scrape(t, metricsURL)["ferry_node_session_panics_total"]; got != 1 {
		t.Fatalf("ferry_node_session_panics_total = %v, want 1", got)
	}
	// A new session works too.
	again, err := pgx.Connect(ctx, conn)
	if err != nil {
		t.Fatalf("a new session after the panic: %v", err)
	}
	if err := again.QueryRow(ctx, "SELECT 2").Scan(&n); err != nil || n != 2 {
		t.Fatalf("a new session after the panic: %d, %v", n, err)
	}
	again.Close(ctx)

	waitFor(t, "the failed connection record", func() bool {
		conns, err := env.Node.Audit().Connections(ctx, audit.ConnectionFilter{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if c.Outcome == audit.OutcomeFailed && c.SQLState == "XX000" && !c.End.IsZero() && c.UpstreamPID != 0 {
				return true
			}
		}
		return false
	})
}
