package node

import (
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/pgproxy"
)

// TestSessionGoroutineRecovers: a panic that escapes the proxy's Serve (its own recover is the
// first guard) stops at the node's per-connection goroutine: the client is told FATAL XX000, the
// connection is closed, the panic is counted, and the goroutine returns normally.
func TestSessionGoroutineRecovers(t *testing.T) {
	m := newMetrics(slog.New(slog.DiscardHandler), func() audit.Stats { return audit.Stats{} })
	node, cl := net.Pipe()
	defer cl.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.session(node, func(net.Conn) { panic("test: a panic outside Serve's guard") })
	}()
	cl.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(cl, cl)
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Severity != "FATAL" || e.Code != "XX000" || e.Message != pgproxy.PanicMessage {
		t.Fatalf("client got %#v; want FATAL XX000 %q", msg, pgproxy.PanicMessage)
	}
	if _, err := fe.Receive(); err == nil {
		t.Fatal("the connection stayed open after the panic")
	}
	<-done
	if got := testutil.ToFloat64(m.panics); got != 1 {
		t.Fatalf("ferry_node_session_panics_total = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.sessions); got != 0 {
		t.Fatalf("ferry_active_sessions = %v after the session ended, want 0", got)
	}
}
