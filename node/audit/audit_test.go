package audit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

func openTestLog(t *testing.T, path string) *Log {
	t.Helper()
	db, err := OpenDB(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestConnectionLifecycleAndQueries(t *testing.T) {
	forEachBackend(t, false, testConnectionLifecycleAndQueries)
}

func testConnectionLifecycleAndQueries(t *testing.T, d *testDB) {
	ctx := context.Background()
	l := d.openLog(t, Options{})
	start := time.Date(2025, 3, 1, 10, 0, 0, 123, time.UTC)
	id, err := l.StartConnection(ctx, Connection{Start: start, User: "alice", Resource: "pg-prod", ClientAddr: "100.64.0.5:40000", Database: "app"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := l.StartConnection(ctx, Connection{Start: start, User: "bob", Resource: "pg-dev", ClientAddr: "100.64.0.6:40000", Database: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	rec, otherRec := l.Recorder(id, nil), l.Recorder(other, nil)
	for i := range 10 {
		if err := rec.Record(ctx, Query{User: "alice", Resource: "pg-prod", SQL: fmt.Sprintf("SELECT %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := otherRec.Record(ctx, Query{User: "bob", Resource: "pg-dev", SQL: "SELECT $1", Protocol: "extended"}); err != nil {
		t.Fatal(err)
	}
	end := start.Add(time.Minute)
	// Recorder.Close writes every query of the connection before its end.
	if dropped := rec.Close(ctx); dropped != 0 {
		t.Fatalf("%d records dropped", dropped)
	}
	if err := l.EndConnection(ctx, id, end, ConnectionEnd{Outcome: OutcomeOK}); err != nil {
		t.Fatal(err)
	}
	qs, err := l.Queries(ctx, QueryFilter{ConnectionID: id})
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 10 || qs[0].SQL != "SELECT 9" || qs[9].SQL != "SELECT 0" || qs[0].Protocol != "simple" {
		t.Fatalf("queries of connection %d = %+v", id, qs)
	}

	tests := []struct {
		name   string
		filter ConnectionFilter
		want   []int64
	}{
		{"all newest first", ConnectionFilter{}, []int64{other, id}},
		{"by user", ConnectionFilter{User: "alice"}, []int64{id}},
		{"by resource", ConnectionFilter{Resource: "pg-dev"}, []int64{other}},
		{"limit", ConnectionFilter{Limit: 1}, []int64{other}},
		{"no match", ConnectionFilter{User: "carol"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs, err := l.Connections(ctx, tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			var got []int64
			for _, c := range cs {
				got = append(got, c.ID)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	cs, _ := l.Connections(ctx, ConnectionFilter{User: "alice"})
	c := cs[0]
	if !c.Start.Equal(start) || !c.End.Equal(end) || c.Outcome != OutcomeOK || c.Database != "app" || c.ClientAddr != "100.64.0.5:40000" {
		t.Fatalf("connection = %+v", c)
	}
	cs, _ = l.Connections(ctx, ConnectionFilter{User: "bob"})
	if !cs[0].End.IsZero() || cs[0].Outcome != "" {
		t.Fatalf("open connection = %+v", cs[0])
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	qs, _ = l.Queries(ctx, QueryFilter{Resource: "pg-dev"})
	if len(qs) != 1 || qs[0].Protocol != "extended" {
		t.Fatalf("pg-dev queries = %+v", qs)
	}
	if err := l.EndConnection(ctx, 9999, end, ConnectionEnd{Outcome: OutcomeOK}); err == nil {
		t.Fatal("EndConnection of an unknown ID succeeded")
	}
}

// TestCloseDrainsAndPersists writes from many goroutines, closes, and reopens
// the file: no record may be lost.
func TestCloseDrainsAndPersists(t *testing.T) { forEachBackend(t, false, testCloseDrainsAndPersists) }

func testCloseDrainsAndPersists(t *testing.T, d *testDB) {
	ctx := context.Background()
	db := d.open(t)
	l, err := OpenStore(ctx, db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	id, err := l.StartConnection(ctx, Connection{User: "u", Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 500
	rec := l.Recorder(id, nil)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := rec.Record(ctx, Query{User: "u", Resource: "r", SQL: fmt.Sprintf("SELECT %d, %d", w, i)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := rec.Record(ctx, Query{SQL: "late"}); err != ErrClosed {
		t.Fatalf("Record after Close = %v, want ErrClosed", err)
	}
	db.Close()

	l2 := d.openLog(t, Options{})
	qs, err := l2.Queries(ctx, QueryFilter{ConnectionID: id, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != writers*each {
		t.Fatalf("%d queries after reopen, want %d", len(qs), writers*each)
	}
}

func TestQueryOfUnknownConnectionReportsError(t *testing.T) {
	forEachBackend(t, false, testQueryOfUnknownConnectionReportsError)
}

func testQueryOfUnknownConnectionReportsError(t *testing.T, d *testDB) {
	ctx := context.Background()
	l := d.openLog(t, Options{WriteAttempts: 1})
	if err := l.Recorder(42, nil).Record(ctx, Query{SQL: "SELECT 1"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); err == nil {
		t.Fatal("Flush reported no error for a query of an unknown connection (foreign keys off?)")
	}
}
