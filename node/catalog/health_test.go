package catalog

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/store/storetest"
)

// TestHealthResultsPerNodeAndResource: each node keeps one result per resource (a new check
// replaces its previous one, another node's stays), results read back as written (state, step,
// error, hint, time, latency, steps), by resource or all, and go with their resource or node.
func TestHealthResultsPerNodeAndResource(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c := openCatalogOn(t, db)
		n1, n2 := testNode(t, "gw-1"), testNode(t, "gw-2")
		for _, n := range []Node{n1, n2} {
			if _, err := c.RegisterNode(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		r1, err := c.AddResource(ctx, res("r1"))
		if err != nil {
			t.Fatal(err)
		}
		r2, err := c.AddResource(ctx, res("r2"))
		if err != nil {
			t.Fatal(err)
		}
		at := time.Now().UTC().Truncate(time.Millisecond)
		bad := api.Health{State: api.HealthUnhealthy, Checked: true, Time: at, DurationMS: 12.5, FailedStep: api.StepTCP,
			Error: "connection refused", Hint: "open the firewall", Steps: []api.HealthStep{{Name: api.StepResolve, OK: true, Detail: "10.0.0.1"}, {Name: api.StepTCP, Error: "connection refused"}}}
		good := api.Health{State: api.HealthHealthy, Checked: true, Time: at.Add(time.Second), DurationMS: 3,
			Steps: []api.HealthStep{{Name: api.StepQuery, OK: true}}}
		for _, p := range []struct {
			node, res string
			h         api.Health
		}{{n1.ID, r1.ID, bad}, {n2.ID, r1.ID, good}, {n1.ID, r2.ID, bad}, {n1.ID, r2.ID, good}} {
			if err := c.PutHealth(ctx, p.node, p.res, p.h); err != nil {
				t.Fatal(err)
			}
		}
		got, err := c.HealthResults(ctx, r1.ID)
		if err != nil || len(got) != 2 {
			t.Fatalf("results of r1: %+v, %v; want one per node", got, err)
		}
		byNode := map[string]api.Health{}
		for _, x := range got {
			if x.ResourceID != r1.ID {
				t.Errorf("result of %s among r1's", x.ResourceID)
			}
			byNode[x.NodeID] = x.Health
		}
		b := byNode[n1.ID]
		if b.State != api.HealthUnhealthy || !b.Checked || !b.Time.Equal(at) || b.DurationMS != 12.5 || b.FailedStep != api.StepTCP ||
			b.Error != "connection refused" || b.Hint != "open the firewall" || len(b.Steps) != 2 || b.Steps[0].Detail != "10.0.0.1" || b.Steps[1].OK {
			t.Errorf("gw-1's result for r1 = %+v", b)
		}
		if g := byNode[n2.ID]; g.State != api.HealthHealthy || !g.Time.Equal(at.Add(time.Second)) {
			t.Errorf("gw-2's result for r1 = %+v", g)
		}
		got, err = c.HealthResults(ctx, r2.ID)
		if err != nil || len(got) != 1 || got[0].NodeID != n1.ID || got[0].Health.State != api.HealthHealthy {
			t.Fatalf("results of r2: %+v, %v; want gw-1's second (healthy) only", got, err)
		}
		all, err := c.HealthResults(ctx, "")
		if err != nil || len(all) != 3 {
			t.Fatalf("all results: %+v, %v", all, err)
		}

		// A node that stops being a candidate removes its own row; a resource or node that is gone
		// takes its rows along, and a late write for it is dropped without an error.
		if err := c.DeleteHealth(ctx, n2.ID, r1.ID); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.HealthResults(ctx, r1.ID); len(got) != 1 || got[0].NodeID != n1.ID {
			t.Errorf("after gw-2 dropped r1: %+v", got)
		}
		if err := c.DeleteResource(ctx, "r2"); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.HealthResults(ctx, r2.ID); len(got) != 0 {
			t.Errorf("results of deleted r2: %+v", got)
		}
		if err := c.PutHealth(ctx, n1.ID, r2.ID, good); err != nil {
			t.Errorf("late result for deleted r2: %v", err)
		}
		if err := c.NodeStopped(ctx, n1.ID, time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.DeleteNode(ctx, n1.ID); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.HealthResults(ctx, ""); len(got) != 0 {
			t.Errorf("results after gw-1 was deleted: %+v", got)
		}
	})
}

// TestHealthWritesDoNotWakeTheFeed: a stored health result is not announced on the change feed,
// so nodes do not reload their catalogs for every check of every node. On SQLite the feed is woken
// synchronously by Commit; on PostgreSQL a marker notification sent after the writes must be the
// first one a listener sees.
func TestHealthWritesDoNotWakeTheFeed(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c := openCatalogOn(t, db)
		n := testNode(t, "gw-1")
		if _, err := c.RegisterNode(ctx, n); err != nil {
			t.Fatal(err)
		}
		r, err := c.AddResource(ctx, res("r1"))
		if err != nil {
			t.Fatal(err)
		}
		h := api.Health{State: api.HealthHealthy, Checked: true, Time: time.Now()}
		if db.Dialect() != store.Postgres {
			ch, err := c.Watch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if err := c.PutHealth(ctx, n.ID, r.ID, h); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-ch:
				t.Fatal("a health write woke the change feed")
			default:
			}
			return
		}
		pc, err := db.Pool().Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conn := pc.Hijack()
		t.Cleanup(func() { conn.Close(context.Background()) })
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{store.Channel}.Sanitize()); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := c.PutHealth(ctx, n.ID, r.ID, h); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := db.ExecContext(ctx, `SELECT pg_notify($1, 'marker')`, store.Channel); err != nil {
			t.Fatal(err)
		}
		note, err := conn.WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if note.Payload != "marker" {
			t.Fatalf("first notification after the health writes has payload %q: a health write was announced", note.Payload)
		}
	})
}
