package pgproxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/ferryhq/ferry/node/audit"
)

// A panic in one session must never take the node down: every goroutine of a
// session (Serve's own and the relay's two) recovers at its top level. The
// relay goroutines hand their panic to Serve's goroutine, which ends only that
// session: it logs the panic with its stack, sends the client a FATAL
// ErrorResponse with SQLSTATE XX000 and PanicMessage, closes both connections,
// records the connection as failed and calls Config.OnPanic. Nothing of this
// runs per message: the recovers sit at the top of each goroutine.

// PanicMessage is the message of the FATAL ErrorResponse (SQLSTATE XX000) a
// client gets when a panic ended its session.
const PanicMessage = "internal error in ferry-node, the session was ended; the node keeps running"

// panicStuckWait bounds how long the relay waits for its other goroutine
// after one of them panicked: a panic may leave the tracker waiting for a
// request that will never be filled, and the session must end regardless.
const panicStuckWait = 5 * time.Second

// sessionPanic is a panic recovered in a session goroutine.
type sessionPanic struct {
	where string // which goroutine: "serve", "relay client to server", "relay server to client"
	value any
	stack []byte
}

func (e *sessionPanic) Error() string { return fmt.Sprintf("panic in %s: %v", e.where, e.value) }

// recoverRelay is deferred at the top of a relay goroutine: a panic becomes a
// *sessionPanic sent on done, which the goroutine's normal return would have
// used (done has room for one value and gets only one).
func recoverRelay(done chan<- error, where string) {
	if v := recover(); v != nil {
		done <- &sessionPanic{where: where, value: v, stack: debug.Stack()}
	}
}

// relayPanicked ends a relay one of whose goroutines panicked (sp): it
// unblocks and waits (bounded) for the other goroutine, then re-raises the
// panic in Serve's goroutine, whose recoverSession ends the session.
func relayPanicked(sp *sessionPanic, client, server net.Conn, other <-chan error, log *slog.Logger) {
	server.Close()
	client.SetDeadline(time.Now()) // not Close: the client is still to be told why
	t := time.NewTimer(panicStuckWait)
	defer t.Stop()
	select {
	case err := <-other:
		if sp2, ok := err.(*sessionPanic); ok {
			log.Error("pgproxy: the other relay goroutine panicked too", "where", sp2.where, "panic", fmt.Sprint(sp2.value), "stack", string(sp2.stack))
		}
	case <-t.C:
		log.Error("pgproxy: the other relay goroutine did not end after a panic; leaving it", "where", sp.where)
	}
	panic(sp)
}

// rethrowPanic re-raises, in Serve's goroutine, the panic of a relay goroutine
// that ended after the other one: the session is ending anyway, but the panic
// is still logged, counted and recorded.
func rethrowPanic(err error) {
	if sp, ok := err.(*sessionPanic); ok {
		panic(sp)
	}
}

// sessionGuard is what Serve's recover needs to end a session.
type sessionGuard struct {
	conn  net.Conn      // the client connection as Serve got it
	id    int64         // audit connection id, once recorded
	stats *relayStats   // once relaying
	pid   uint32        // upstream backend PID, once logged in
	rec   QueryRecorder // the session's query recorder, once relaying
}

// recoverSession is deferred at the top of Serve. After a panic in the
// session (in Serve's goroutine or re-raised from a relay goroutine) it ends
// the session alone; anything that panics again while it does so is logged
// and skipped, so it never panics itself.
func (p *Proxy) recoverSession(ctx context.Context, g *sessionGuard, log *slog.Logger) {
	v := recover()
	if v == nil {
		return
	}
	sp, ok := v.(*sessionPanic)
	if !ok {
		sp = &sessionPanic{where: "serve", value: v, stack: debug.Stack()}
	}
	log.Error("pgproxy: panic in a session; the session was ended, the node keeps running",
		"where", sp.where, "panic", fmt.Sprint(sp.value), "stack", string(sp.stack))
	safely(log, "tell the client", func() {
		writeErrorResponse(g.conn, &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "XX000", Message: PanicMessage})
		lingerClose(g.conn) // what the client still sends must not reset the connection before it reads why
		g.conn.Close()
	})
	safely(log, "record the connection end", func() {
		end := audit.ConnectionEnd{Outcome: audit.OutcomeFailed, Error: "internal error: " + sp.Error(), SQLState: "XX000", UpstreamPID: g.pid}
		if g.stats != nil {
			end.BytesFromClient, end.BytesFromServer = g.stats.fromClient.Load(), g.stats.fromServer.Load()
		}
		end.QueriesDropped = p.closeRecorder(ctx, g.rec) // the records made before the panic are written first
		p.endRecord(ctx, g.id, end, log)
	})
	if p.cfg.OnPanic != nil {
		safely(log, "count the panic", p.cfg.OnPanic)
	}
}

// safely runs f, logging instead of propagating a panic in it.
func safely(log *slog.Logger, what string, f func()) {
	defer func() {
		if v := recover(); v != nil {
			log.Error("pgproxy: panic while ending a session after a panic", "step", what, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	f()
}

// writeErrorResponse sends an ErrorResponse, best effort, within 5 seconds.
func writeErrorResponse(conn net.Conn, e *pgproto3.ErrorResponse) {
	buf, err := e.Encode(nil)
	if err == nil {
		conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		conn.Write(buf)
	}
}
