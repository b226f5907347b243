package audit

import (
	"context"
	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node/store"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRecordSteady is the writer's cost under a steady stream of statements from 8 sessions
// that each record one query every 2 ms (about pgbench -S -c 8's rate through a node on a small
// VM), with the gather window on and off. cpu-us/record is the process's CPU time (user + system,
// getrusage) per record written, the writer's cost: a count of work, not a latency, so it can be
// compared on a loaded machine.
func BenchmarkRecordSteady(b *testing.B) {
	for _, tt := range []struct {
		name string
		opts Options
	}{
		{"gather=on", Options{}},
		{"gather=off", Options{noGather: true}},
	} {
		b.Run(tt.name, func(b *testing.B) {
			ctx := context.Background()
			db, err := OpenDB(filepath.Join(b.TempDir(), "ferry.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			l, err := OpenWithOptions(ctx, db, tt.opts)
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			const sessions = 8
			var recs []*Recorder
			for range sessions {
				id, err := l.StartConnection(ctx, Connection{Start: time.Now(), User: "alice", Resource: "pg", ClientAddr: "100.64.0.5:1", Database: "app"})
				if err != nil {
					b.Fatal(err)
				}
				recs = append(recs, l.Recorder(id, nil))
			}
			q := Query{User: "alice", Resource: "pg", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Command: "SELECT", Rows: 1}
			before := cpuTime(b)
			b.ResetTimer()
			var wg sync.WaitGroup
			for i, r := range recs {
				n := b.N / sessions
				if i < b.N%sessions {
					n++
				}
				wg.Go(func() {
					t := time.NewTicker(2 * time.Millisecond)
					defer t.Stop()
					for range n {
						<-t.C
						if err := r.Record(ctx, q); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			if err := l.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime(b)-before).Microseconds())/float64(b.N), "cpu-us/record")
		})
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkWriterThroughput is how many query records per second the writer sustains when 8
// sessions record as fast as they can, on SQLite and on PostgreSQL (the shared test server, over
// its Unix socket): records/s.
func BenchmarkWriterThroughput(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			ctx := context.Background()
			url := "sqlite:" + filepath.Join(b.TempDir(), "ferry.db")
			if backend == "postgres" {
				url = pgtest.Start(b)
			}
			db, err := store.Open(ctx, store.Options{URL: url})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			l, err := OpenStore(ctx, db, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			const sessions = 8
			var recs []*Recorder
			for range sessions {
				id, err := l.StartConnection(ctx, Connection{User: "alice", Resource: "pg", ClientAddr: "100.64.0.5:1", Database: "app"})
				if err != nil {
					b.Fatal(err)
				}
				recs = append(recs, l.Recorder(id, nil))
			}
			q := Query{User: "alice", Resource: "pg", SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Command: "SELECT", Rows: 1}
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for i, r := range recs {
				n := b.N / sessions
				if i < b.N%sessions {
					n++
				}
				wg.Go(func() {
					for range n {
						if err := r.Record(ctx, q); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			if err := l.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
		})
	}
}
