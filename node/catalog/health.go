package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/store"
)

// healthSchema is a migration step: the last health check result of each (node, resource), as
// every node writes them for the resources it is a candidate for, so that any node answers for the
// whole fleet. Portable SQL (SQLite and PostgreSQL): checked_at is Unix milliseconds, steps the
// result's steps as JSON. A node's or a resource's rows go with it (ON DELETE CASCADE).
//
// Health writes never announce themselves to the change feed (no store.DB.Notify): a result is
// not something authorisation depends on, and every node writing one per resource per interval
// would make every node reload its catalog all the time.
const healthSchema = `
CREATE TABLE IF NOT EXISTS health_results (
	node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
	resource_id TEXT NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
	healthy BOOLEAN NOT NULL,
	failed_step TEXT NOT NULL,
	error TEXT NOT NULL,
	hint TEXT NOT NULL,
	checked_at BIGINT NOT NULL,
	latency_ms DOUBLE PRECISION NOT NULL,
	steps TEXT NOT NULL,
	PRIMARY KEY (node_id, resource_id)
);
CREATE INDEX IF NOT EXISTS health_results_resource ON health_results(resource_id);
`

// HealthResult is one node's last health check result for one resource.
type HealthResult struct {
	NodeID     string
	ResourceID string
	// Health is the result; Resource, NodeID and NodeName are not stored (the caller knows them).
	Health api.Health
}

// PutHealth stores node nodeID's result h for resource resourceID, replacing its previous one. It
// does not announce a change (see healthSchema). A node or resource that is gone (deleted while
// the check ran) is not an error: there is nothing left to keep the result for.
func (c *Catalog) PutHealth(ctx context.Context, nodeID, resourceID string, h api.Health) error {
	steps, err := json.Marshal(h.Steps)
	if err != nil {
		return fmt.Errorf("store health of %s on node %s: encode steps: %w", resourceID, nodeID, err)
	}
	_, err = c.db.ExecContext(ctx, c.db.Rebind(`INSERT INTO health_results(node_id, resource_id, healthy, failed_step, error, hint, checked_at, latency_ms, steps)
		VALUES(?,?,?,?,?,?,?,?,?)
		ON CONFLICT(node_id, resource_id) DO UPDATE SET healthy = excluded.healthy, failed_step = excluded.failed_step,
			error = excluded.error, hint = excluded.hint, checked_at = excluded.checked_at, latency_ms = excluded.latency_ms, steps = excluded.steps`),
		nodeID, resourceID, h.State == api.HealthHealthy, h.FailedStep, h.Error, h.Hint, h.Time.UnixMilli(), h.DurationMS, string(steps))
	if store.IsForeignKeyViolation(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store health of %s on node %s: %w", resourceID, nodeID, err)
	}
	return nil
}

// DeleteHealth removes node nodeID's result for resource resourceID (the node is no longer a
// candidate for it); none is not an error.
func (c *Catalog) DeleteHealth(ctx context.Context, nodeID, resourceID string) error {
	if _, err := c.db.ExecContext(ctx, c.db.Rebind(`DELETE FROM health_results WHERE node_id = ? AND resource_id = ?`), nodeID, resourceID); err != nil {
		return fmt.Errorf("delete health of %s on node %s: %w", resourceID, nodeID, err)
	}
	return nil
}

// HealthResults returns the stored results of resource resourceID ("" = of every resource), by
// resource and node ID.
func (c *Catalog) HealthResults(ctx context.Context, resourceID string) ([]HealthResult, error) {
	q := `SELECT node_id, resource_id, healthy, failed_step, error, hint, checked_at, latency_ms, steps FROM health_results`
	var args []any
	if resourceID != "" {
		q += ` WHERE resource_id = ?`
		args = append(args, resourceID)
	}
	rows, err := c.db.QueryContext(ctx, c.db.Rebind(q+` ORDER BY resource_id, node_id`), args...)
	if err != nil {
		return nil, fmt.Errorf("read health results: %w", err)
	}
	defer rows.Close()
	out := []HealthResult{}
	for rows.Next() {
		var r HealthResult
		var healthy bool
		var at int64
		var steps string
		h := &r.Health
		if err := rows.Scan(&r.NodeID, &r.ResourceID, &healthy, &h.FailedStep, &h.Error, &h.Hint, &at, &h.DurationMS, &steps); err != nil {
			return nil, fmt.Errorf("read health results: %w", err)
		}
		h.Checked, h.State, h.Time = true, api.HealthUnhealthy, time.UnixMilli(at).UTC()
		if healthy {
			h.State = api.HealthHealthy
		}
		if err := json.Unmarshal([]byte(steps), &h.Steps); err != nil {
			return nil, fmt.Errorf("read health results: steps of %s on node %s: %w", r.ResourceID, r.NodeID, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read health results: %w", err)
	}
	return out, nil
}
