package pgproxy

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestEndedSessionWhileServerAnswersUnfinishedRequest: a hostile server answers a request the
// client is still sending (and the client stalls). Ending the session must still end the relay:
// its server side waits for the request to be whole, which only the client can finish.
func TestEndedSessionWhileServerAnswersUnfinishedRequest(t *testing.T) {
	p := New(Config{Tokens: &testTokens{}})
	client, proxyClient := loopbackPair(t)
	proxyServer, server := loopbackPair(t)
	tr := newTracker(1<<10, false, func(audit.Query) {})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.relay(ctx, proxyClient, proxyServer, tr, &relayStats{}, "hostile")
	}()
	partial := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(partial[1:], 100)
	partial = append(partial, "SELECT 1 -- the rest never comes"...)
	if _, err := client.Write(partial); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the relay queue the request (not asserted)
	answer, _ := (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}).Encode(nil)
	if _, err := server.Write(answer); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the answer reach the relay (not asserted)
	cancel()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the relay did not end after its session was ended")
	}
}
