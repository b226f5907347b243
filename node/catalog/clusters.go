package catalog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/resource"
)

// clustersSchema is migration step 4 (SQLite) / 3 (PostgreSQL): proxy clusters, and the cluster
// each node is a worker of (NULL: a gateway). The foreign key keeps a node from naming a cluster
// that does not exist, and a cluster with workers from being deleted, whatever slips past the
// checks in RegisterNode and DeleteCluster.
const (
	clustersSchemaSQLite = `
CREATE TABLE IF NOT EXISTS proxy_clusters (
	id TEXT PRIMARY KEY,
	name TEXT NOT NULL UNIQUE,
	created_at BIGINT NOT NULL
);
ALTER TABLE nodes ADD COLUMN cluster_id TEXT REFERENCES proxy_clusters(id);
`
	clustersSchemaPostgres = `
CREATE TABLE proxy_clusters (
	id TEXT COLLATE "C" PRIMARY KEY,
	name TEXT COLLATE "C" NOT NULL UNIQUE,
	created_at BIGINT NOT NULL
);
ALTER TABLE nodes ADD COLUMN cluster_id TEXT COLLATE "C" REFERENCES proxy_clusters(id);
CREATE INDEX nodes_cluster ON nodes(cluster_id);
`
)

// Cluster is a proxy cluster: a named group of nodes (its workers) that alone carry the resources
// naming it in proxy_cluster_id.
type Cluster struct {
	ID        string // "n-" and 16 hex digits, as the product page's proxy cluster IDs
	Name      string // a DNS label, unique
	CreatedAt time.Time
	Workers   []string // IDs of the nodes registered as its workers, sorted by node name
}

// NewClusterID returns a new proxy cluster ID: "n-" and 16 hex digits.
func NewClusterID() string { return "n-" + randomHex(8) }

// AddCluster stores a new proxy cluster named name. id is its ID, or "" for a new one; an admin
// gives one to recreate a cluster that resources (or a copied configuration) already name. A taken
// name or ID wraps ErrConflict.
func (c *Catalog) AddCluster(ctx context.Context, name, id string) (Cluster, error) {
	if err := api.ValidateClusterName(name); err != nil {
		return Cluster{}, fmt.Errorf("add proxy cluster: %w", err)
	}
	if id == "" {
		id = NewClusterID()
	}
	if !api.ValidClusterID(id) {
		return Cluster{}, fmt.Errorf("add proxy cluster %s: ID %q is not n- and 16 lower-case hex digits (such as n-1a2b345c67890123)", name, id)
	}
	cl := Cluster{ID: id, Name: name, CreatedAt: time.Now().UTC().Truncate(time.Second), Workers: []string{}}
	err := c.write(ctx, func(tx *store.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, c.db.Rebind(`SELECT count(*) FROM proxy_clusters WHERE name = ? OR id = ?`), name, id).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("a proxy cluster named %q or with ID %s %w", name, id, ErrConflict)
		}
		// Cluster and node IDs have one form: an ID names one or the other, never both.
		var node string
		err := tx.QueryRowContext(ctx, c.db.Rebind(`SELECT name FROM nodes WHERE id = ?`), id).Scan(&node)
		if err == nil {
			return fmt.Errorf("ID %s is node %s's: a proxy cluster's ID %w; leave the ID out for a new one", id, node, ErrConflict)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		_, err = tx.ExecContext(ctx, c.db.Rebind(`INSERT INTO proxy_clusters(id, name, created_at) VALUES(?,?,?)`), id, name, cl.CreatedAt.Unix())
		return err
	})
	if store.IsConflict(err) {
		return cl, fmt.Errorf("add proxy cluster: a proxy cluster named %q or with ID %s %w", name, id, ErrConflict)
	}
	if err != nil {
		return cl, fmt.Errorf("add proxy cluster %s: %w", name, err)
	}
	return cl, nil
}

// Clusters returns every proxy cluster with its workers, sorted by name.
func (c *Catalog) Clusters(ctx context.Context) ([]Cluster, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT id, name, created_at FROM proxy_clusters ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list proxy clusters: %w", err)
	}
	out := []Cluster{}
	for rows.Next() {
		var cl Cluster
		var at int64
		if err := rows.Scan(&cl.ID, &cl.Name, &at); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list proxy clusters: %w", err)
		}
		cl.CreatedAt = time.Unix(at, 0).UTC()
		out = append(out, cl)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list proxy clusters: %w", err)
	}
	workers, err := c.clusterWorkers(ctx, c.db, "")
	if err != nil {
		return nil, fmt.Errorf("list proxy clusters: %w", err)
	}
	for i := range out {
		out[i].Workers = nonNilIDs(workers[out[i].ID])
	}
	return out, nil
}

func nonNilIDs(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// clusterWorkers maps cluster IDs to their workers' node IDs (by node name); clusterID "" reads
// every cluster's.
func (c *Catalog) clusterWorkers(ctx context.Context, q querier, clusterID string) (map[string][]string, error) {
	query, args := `SELECT cluster_id, id FROM nodes WHERE cluster_id IS NOT NULL ORDER BY name`, []any{}
	if clusterID != "" {
		query, args = `SELECT cluster_id, id FROM nodes WHERE cluster_id = ? ORDER BY name`, []any{clusterID}
	}
	rows, err := q.QueryContext(ctx, c.db.Rebind(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var cl, id string
		if err := rows.Scan(&cl, &id); err != nil {
			return nil, err
		}
		out[cl] = append(out[cl], id)
	}
	return out, rows.Err()
}

// Cluster returns the proxy cluster with that ID or name and its workers; it wraps ErrNotFound.
func (c *Catalog) Cluster(ctx context.Context, idOrName string) (Cluster, error) {
	return c.clusterBy(ctx, c.db, idOrName)
}

type clusterQueryer interface {
	queryer
	querier
}

func (c *Catalog) clusterBy(ctx context.Context, q clusterQueryer, idOrName string) (Cluster, error) {
	var cl Cluster
	var at int64
	err := q.QueryRowContext(ctx, c.db.Rebind(`SELECT id, name, created_at FROM proxy_clusters WHERE id = ? OR name = ? ORDER BY CASE WHEN id = ? THEN 0 ELSE 1 END LIMIT 1`),
		idOrName, idOrName, idOrName).Scan(&cl.ID, &cl.Name, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return cl, fmt.Errorf("proxy cluster %q: %w (list them with `ferry admin clusters list`, add one with `ferry admin clusters add NAME`)", idOrName, ErrNotFound)
	}
	if err != nil {
		return cl, fmt.Errorf("proxy cluster %q: %w", idOrName, err)
	}
	cl.CreatedAt = time.Unix(at, 0).UTC()
	workers, err := c.clusterWorkers(ctx, q, cl.ID)
	if err != nil {
		return cl, fmt.Errorf("proxy cluster %s: %w", cl.Name, err)
	}
	cl.Workers = nonNilIDs(workers[cl.ID])
	return cl, nil
}

// DeleteCluster deletes the proxy cluster with that ID or name and returns it. It is refused
// (wrapping ErrInUse) while resources name it, listing them (they would be carried by no node),
// and while nodes are its workers, listing them (they would carry nothing): delete the workers'
// records first (`ferry admin nodes delete`, once stopped). The checks and the delete are one
// transaction under the resources' lock, as a resource's write and its cluster check are.
func (c *Catalog) DeleteCluster(ctx context.Context, idOrName string) (Cluster, error) {
	var cl Cluster
	err := c.write(ctx, func(tx *store.Tx) error {
		if err := tx.Lock(ctx, "catalog.resources"); err != nil {
			return err
		}
		var err error
		if cl, err = c.clusterBy(ctx, tx, idOrName); err != nil {
			return err
		}
		users, err := resourcesUsing(ctx, tx, func(r resource.Resource) bool { return r.ProxyClusterID == cl.ID })
		if err != nil {
			return err
		}
		if len(users) > 0 {
			return fmt.Errorf("proxy cluster %s (%s) %w by resources %s: move them to another cluster or to the gateways first (ferry admin datasources update NAME --proxy-cluster-id ID, or --proxy-cluster-id '')",
				cl.Name, cl.ID, ErrInUse, strings.Join(users, ", "))
		}
		if len(cl.Workers) > 0 {
			names, err := nodeNames(ctx, c, tx, cl.ID)
			if err != nil {
				return err
			}
			return fmt.Errorf("proxy cluster %s (%s) %w by its worker nodes %s: stop them and delete their records first (ferry admin nodes delete NAME)",
				cl.Name, cl.ID, ErrInUse, strings.Join(names, ", "))
		}
		res, err := tx.ExecContext(ctx, c.db.Rebind(`DELETE FROM proxy_clusters WHERE id = ?`), cl.ID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("proxy cluster %s: %w", cl.Name, ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return cl, fmt.Errorf("delete proxy cluster: %w", err)
	}
	return cl, nil
}

func nodeNames(ctx context.Context, c *Catalog, tx *store.Tx, clusterID string) ([]string, error) {
	rows, err := tx.QueryContext(ctx, c.db.Rebind(`SELECT name FROM nodes WHERE cluster_id = ? ORDER BY name`), clusterID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// hasID reports whether table (a catalog table with an id column, named by the caller, never by
// input) holds a row with that ID: the check that a resource's secret store or proxy cluster, or a
// node's cluster, exists, made in the transaction that writes what names it.
func (c *Catalog) hasID(ctx context.Context, tx *sql.Tx, table, id string) (bool, error) {
	var n int
	if err := tx.QueryRowContext(ctx, c.db.Rebind(`SELECT count(*) FROM `+table+` WHERE id = ?`), id).Scan(&n); err != nil {
		return false, fmt.Errorf("look up %s %s: %w", table, id, err)
	}
	return n > 0, nil
}

// checkCluster refuses a resource that names a proxy cluster the catalog does not have.
func (c *Catalog) checkCluster(ctx context.Context, tx *store.Tx, r resource.Resource) error {
	if r.ProxyClusterID == "" {
		return nil
	}
	ok, err := c.hasID(ctx, tx.Tx, "proxy_clusters", r.ProxyClusterID)
	if err != nil {
		return fmt.Errorf("check the resource's proxy cluster: %w", err)
	}
	if !ok {
		return &resource.FieldError{Field: "proxy-cluster-id", Message: fmt.Sprintf("no proxy cluster %q: create it with `ferry admin clusters add NAME` and use the ID it prints, list them with `ferry admin clusters list`, or leave the field empty to use the gateways", r.ProxyClusterID)}
	}
	return nil
}
