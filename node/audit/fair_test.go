package audit

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestSessionNotQueuedBehindOthersBacklog: while the writer is stalled, four flooding connections
// fill their allowances (4096 records) and then another connection queues one record and waits
// for it to be durable (as the proxy holds a statement's answer). Once the writer runs again, that
// record goes in the next batch, not behind the whole backlog: most of the flood's records are
// written after it. Before, the writer took records strictly in queue order, so a session's
// answer waited for every record other sessions had queued, and one user flooding through many
// sessions stalled every other user's answers.
func TestSessionNotQueuedBehindOthersBacklog(t *testing.T) {
	forEachBackend(t, false, testSessionNotQueuedBehindOthersBacklog)
}

func testSessionNotQueuedBehindOthersBacklog(t *testing.T, d *testDB) {
	ctx := context.Background()
	l := d.openLog(t, Options{})
	const flooders = 4
	recs := make([]*Recorder, flooders)
	for i := range recs {
		id, err := l.StartConnection(ctx, Connection{User: "flood", Resource: "r"})
		if err != nil {
			t.Fatal(err)
		}
		recs[i] = l.Recorder(id, nil)
	}
	otherID, err := l.StartConnection(ctx, Connection{User: "other", Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	release := d.stallWrites(t)
	pad := strings.Repeat("x", 512)
	var wg sync.WaitGroup
	for i := range recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range DefaultSessionQueue {
				if err := recs[i].Record(ctx, Query{User: "flood", Resource: "r", SQL: fmt.Sprintf("SELECT %d, %d -- %s", i, j, pad)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait() // every flooding record is queued (the allowance holds them all)
	other := l.Recorder(otherID, nil)
	if err := other.Record(ctx, Query{User: "other", Resource: "r", SQL: "SELECT 'other'"}); err != nil {
		t.Fatal(err)
	}
	release()
	if err := other.Durable(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if n := r.Close(ctx); n != 0 {
			t.Fatalf("%d flooding records not written", n)
		}
	}
	if n := other.Close(ctx); n != 0 {
		t.Fatalf("%d records not written", n)
	}
	var after int
	if err := d.open(t).QueryRowContext(ctx, `SELECT count(*) FROM audit_queries WHERE user_name = 'flood'
		AND id > (SELECT id FROM audit_queries WHERE user_name = 'other')`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d of the %d flooding records were written after the other connection's record", after, flooders*DefaultSessionQueue)
	if after < flooders*DefaultSessionQueue/4 {
		t.Fatalf("only %d of the %d flooding records queued before the other connection's record were written after it: it waited behind the backlog",
			after, flooders*DefaultSessionQueue)
	}
}
