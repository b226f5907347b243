package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/routing"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/tunnel"
)

// nodesSchema is migration step 3: the deployment's nodes. Portable SQL (SQLite and PostgreSQL):
// times are Unix seconds, tags a JSON object; stopped_at is 0 while the node runs.
const nodesSchema = `
CREATE TABLE IF NOT EXISTS nodes (
	id TEXT PRIMARY KEY,
	name TEXT NOT NULL UNIQUE,
	kind TEXT NOT NULL,
	tags TEXT NOT NULL,
	wireguard_public_key TEXT NOT NULL UNIQUE,
	wireguard_endpoint TEXT NOT NULL,
	enroll_url TEXT NOT NULL,
	enroll_cert_sha256 TEXT NOT NULL,
	version TEXT NOT NULL,
	started_at BIGINT NOT NULL,
	last_heartbeat BIGINT NOT NULL,
	stopped_at BIGINT NOT NULL
);
`

// NodeHeartbeatInterval is how often a running node writes its heartbeat; NodeOfflineAfter is the
// age of the last heartbeat from which the node shows as offline (three missed heartbeats).
const (
	NodeHeartbeatInterval = 10 * time.Second
	NodeOfflineAfter      = 3 * NodeHeartbeatInterval
)

// Node is one ferry-node of the deployment.
type Node struct {
	ID                 string
	Name               string
	Kind               string // api.NodeKindGateway, or api.NodeKindWorker with ClusterID
	ClusterID          string // the proxy cluster it is a worker of; "" for a gateway
	Tags               map[string]string
	WireGuardPublicKey string
	WireGuardEndpoint  string // host:port, as clients reach it
	EnrollURL          string // https://host:port
	EnrollCertSHA256   string // hex SHA-256 of the enrollment endpoint's certificate
	Version            string
	StartedAt          time.Time
	LastHeartbeat      time.Time
	StoppedAt          time.Time // zero while the node runs
}

// Online reports whether the node runs as of now: it has not stopped and its last heartbeat is
// younger than NodeOfflineAfter.
func (n Node) Online(now time.Time) bool {
	return n.StoppedAt.IsZero() && now.Sub(n.LastHeartbeat) < NodeOfflineAfter
}

// Routing is n as node/routing takes it: its ID, name, proxy cluster and tags, online as of now.
// It is the one conversion from the catalog's record to routing's view (admission, health, the
// control API's routes and doctor all route on it).
func (n Node) Routing(now time.Time) routing.Node {
	return routing.Node{ID: n.ID, Name: n.Name, ClusterID: n.ClusterID, Tags: n.Tags, Online: n.Online(now)}
}

// RoutingNodes is every node of ns as node/routing takes it (Node.Routing), in the same order.
func RoutingNodes(ns []Node, now time.Time) []routing.Node {
	out := make([]routing.Node, 0, len(ns))
	for _, n := range ns {
		out = append(out, n.Routing(now))
	}
	return out
}

// State is api.NodeOnline or api.NodeOffline as of now.
func (n Node) State(now time.Time) string {
	if n.Online(now) {
		return api.NodeOnline
	}
	return api.NodeOffline
}

var certSHA256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// NewNodeID returns a new node ID: "n-" and 16 hex digits.
func NewNodeID() string { return "n-" + randomHex(8) }

// Validate checks every field a node registers with.
func (n Node) Validate() error {
	var errs []error
	if !api.ValidNodeID(n.ID) {
		errs = append(errs, fmt.Errorf("node ID %q is not n- and 16 lower-case hex digits", n.ID))
	}
	if err := api.ValidateNodeName(n.Name); err != nil {
		errs = append(errs, err)
	}
	switch {
	case n.Kind == api.NodeKindGateway && n.ClusterID == "":
	case n.Kind == api.NodeKindWorker && api.ValidClusterID(n.ClusterID):
	case n.Kind == api.NodeKindWorker:
		errs = append(errs, fmt.Errorf("proxy cluster ID %q is not n- and 16 lower-case hex digits", n.ClusterID))
	default:
		errs = append(errs, fmt.Errorf("node kind %q with proxy cluster %q: a gateway is in no cluster, a worker in one", n.Kind, n.ClusterID))
	}
	if err := api.ValidateNodeTags(n.Tags); err != nil {
		errs = append(errs, err)
	}
	if _, err := tunnel.ParseKey(n.WireGuardPublicKey); err != nil {
		errs = append(errs, fmt.Errorf("WireGuard public key: %w", err))
	}
	if err := api.ValidateNodeEndpoint(n.WireGuardEndpoint); err != nil {
		errs = append(errs, err)
	}
	if u, err := url.Parse(n.EnrollURL); err != nil || u.Scheme != "https" || u.Host == "" || u.Port() == "" || u.Port() == "0" || (u.Path != "" && u.Path != "/") {
		errs = append(errs, fmt.Errorf("enrollment URL %q is not https://host:port", n.EnrollURL))
	}
	if !certSHA256RE.MatchString(n.EnrollCertSHA256) {
		errs = append(errs, fmt.Errorf("enrollment certificate fingerprint %q is not 64 lower-case hex digits", n.EnrollCertSHA256))
	}
	if n.Version == "" || len(n.Version) > 200 {
		errs = append(errs, fmt.Errorf("node version %q must be 1-200 characters", n.Version))
	}
	if n.StartedAt.IsZero() || n.LastHeartbeat.IsZero() {
		errs = append(errs, errors.New("node start and heartbeat times must be set"))
	}
	return errors.Join(errs...)
}

// RegisterNode stores n (upsert by ID): a new node is added, a known one gets its current name,
// kind and proxy cluster, key, endpoints, version, start and heartbeat times and runs again (not
// stopped). A node with a ClusterID is a worker of that cluster (its Kind is set so); a cluster
// the catalog does not have wraps ErrNotFound. Its tags are
// those given only when the node is new: afterwards the catalog's tags (UpdateNodeTags) win. A
// name or WireGuard key that another node holds wraps ErrConflict.
func (c *Catalog) RegisterNode(ctx context.Context, n Node) (Node, error) {
	if n.Kind == "" {
		n.Kind = api.NodeKindGateway
		if n.ClusterID != "" {
			n.Kind = api.NodeKindWorker
		}
	}
	if n.Tags == nil {
		n.Tags = map[string]string{}
	}
	n.StartedAt, n.LastHeartbeat = n.StartedAt.Truncate(time.Second), n.LastHeartbeat.Truncate(time.Second)
	n.StoppedAt = time.Time{}
	if err := n.Validate(); err != nil {
		return n, fmt.Errorf("register node: %w", err)
	}
	tags, err := json.Marshal(n.Tags)
	if err != nil {
		return n, fmt.Errorf("register node: encode tags: %w", err)
	}
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return n, fmt.Errorf("register node %s: %w", n.Name, err)
	}
	defer tx.Rollback()
	for _, u := range []struct{ col, val, what string }{{"name", n.Name, "name"}, {"wireguard_public_key", n.WireGuardPublicKey, "WireGuard public key"}} {
		var other string
		err := tx.QueryRowContext(ctx, c.db.Rebind(`SELECT id FROM nodes WHERE `+u.col+` = ? AND id != ?`), u.val, n.ID).Scan(&other)
		if err == nil {
			return n, fmt.Errorf("register node %s: the %s %q is held by node %s: %w; give this node another name (config \"name\") or delete the other node's record with `ferry admin nodes delete %s` once it is stopped",
				n.ID, u.what, u.val, other, ErrConflict, other)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return n, fmt.Errorf("register node %s: %w", n.Name, err)
		}
	}
	var cluster string
	switch err := tx.QueryRowContext(ctx, c.db.Rebind(`SELECT name FROM proxy_clusters WHERE id = ?`), n.ID).Scan(&cluster); {
	case err == nil:
		return n, fmt.Errorf("register node %s: its ID %s is proxy cluster %s's, and an ID names a node or a cluster, not both: %w; remove the state directory's node.json to register as a new node", n.Name, n.ID, cluster, ErrConflict)
	case !errors.Is(err, sql.ErrNoRows):
		return n, fmt.Errorf("register node %s: %w", n.Name, err)
	}
	if n.ClusterID != "" {
		ok, err := c.hasID(ctx, tx, "proxy_clusters", n.ClusterID)
		if err != nil {
			return n, fmt.Errorf("register node %s: %w", n.Name, err)
		}
		if !ok {
			return n, fmt.Errorf("register node %s: proxy cluster %s (config \"cluster_id\") %w: create it with `ferry admin clusters add NAME`, or remove cluster_id from the node's config to run it as a gateway", n.Name, n.ClusterID, ErrNotFound)
		}
	}
	// A node that clients will trust for the first time (a new node, or a known ID with a new
	// WireGuard key) is recorded in the admin activity log, in the same transaction.
	var oldKey string
	err = tx.QueryRowContext(ctx, c.db.Rebind(`SELECT wireguard_public_key FROM nodes WHERE id = ?`), n.ID).Scan(&oldKey)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return n, fmt.Errorf("register node %s: %w", n.Name, err)
	}
	if oldKey != n.WireGuardPublicKey {
		detail := fmt.Sprintf("%s wireguard_public_key=%s wireguard_endpoint=%s version=%s", n.ID, n.WireGuardPublicKey, n.WireGuardEndpoint, n.Version)
		if oldKey != "" {
			detail += " (the node's key changed; it was " + oldKey + ")"
		}
		if _, err := tx.ExecContext(ctx, c.db.Rebind(`INSERT INTO admin_activity(time, actor, action, target, detail) VALUES(?,?,?,?,?)`),
			n.StartedAt.UnixMilli(), "ferry-node", "node.register", n.Name, detail); err != nil {
			return n, fmt.Errorf("register node %s: record it in the activity log: %w", n.Name, err)
		}
	}
	_, err = tx.ExecContext(ctx, c.db.Rebind(`INSERT INTO nodes(id, name, kind, cluster_id, tags, wireguard_public_key, wireguard_endpoint, enroll_url, enroll_cert_sha256, version, started_at, last_heartbeat, stopped_at)
		VALUES(?,?,?,?,?,?,?,?,?,?,?,?,0)
		ON CONFLICT(id) DO UPDATE SET name = excluded.name, kind = excluded.kind, cluster_id = excluded.cluster_id, wireguard_public_key = excluded.wireguard_public_key,
			wireguard_endpoint = excluded.wireguard_endpoint, enroll_url = excluded.enroll_url, enroll_cert_sha256 = excluded.enroll_cert_sha256,
			version = excluded.version, started_at = excluded.started_at, last_heartbeat = excluded.last_heartbeat, stopped_at = 0`),
		n.ID, n.Name, n.Kind, sql.NullString{String: n.ClusterID, Valid: n.ClusterID != ""}, string(tags), n.WireGuardPublicKey, n.WireGuardEndpoint, n.EnrollURL, n.EnrollCertSHA256, n.Version,
		n.StartedAt.Unix(), n.LastHeartbeat.Unix())
	if store.IsConflict(err) {
		return n, fmt.Errorf("register node %s: its name %q or WireGuard key is held by another node: %w", n.ID, n.Name, ErrConflict)
	}
	if err != nil {
		return n, fmt.Errorf("register node %s: %w", n.Name, err)
	}
	out, err := c.nodeBy(ctx, tx, n.ID)
	if err != nil {
		return n, fmt.Errorf("register node %s: %w", n.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return n, fmt.Errorf("register node %s: commit: %w", n.Name, err)
	}
	return out, nil
}

// Heartbeat records that node id runs at time at. A node whose record is gone (deleted while it
// was offline) wraps ErrNotFound: it registers again.
func (c *Catalog) Heartbeat(ctx context.Context, id string, at time.Time) error {
	res, err := c.db.ExecContext(ctx, c.db.Rebind(`UPDATE nodes SET last_heartbeat = ?, stopped_at = 0 WHERE id = ?`), at.Unix(), id)
	if err != nil {
		return fmt.Errorf("node heartbeat %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("node heartbeat %s: %w", id, ErrNotFound)
	}
	return nil
}

// ErrNodeReplaced is returned (wrapped) by InstanceHeartbeat when the node's record was registered
// again by another process with the same node ID: two ferry-nodes run from one state directory (or
// copies of it, with the same ID and WireGuard key).
var ErrNodeReplaced = errors.New("another ferry-node registered with this node's ID")

// InstanceHeartbeat is Heartbeat for the one process that registered node id at startedAt (as
// RegisterNode returned it). When the record has been registered since by another process with
// the same ID, nothing is written and the error wraps ErrNodeReplaced, saying when that one
// started, so that the two do not take the record from each other unnoticed. A record that is
// gone wraps ErrNotFound.
func (c *Catalog) InstanceHeartbeat(ctx context.Context, id string, startedAt, at time.Time) error {
	res, err := c.db.ExecContext(ctx, c.db.Rebind(`UPDATE nodes SET last_heartbeat = ?, stopped_at = 0 WHERE id = ? AND started_at = ?`), at.Unix(), id, startedAt.Unix())
	if err != nil {
		return fmt.Errorf("node heartbeat %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil || n > 0 {
		return nil
	}
	cur, err := c.nodeBy(ctx, c.db, id)
	if err != nil {
		return fmt.Errorf("node heartbeat %s: %w", id, err)
	}
	return fmt.Errorf("node heartbeat %s: %w: a ferry-node started at %s (endpoint %s) registered as this node, which started at %s; two nodes run from one state directory or a copy of it: stop one, and give each node its own (`ferry-node init --join`)",
		id, ErrNodeReplaced, cur.StartedAt.Format(time.RFC3339), cur.WireGuardEndpoint, startedAt.UTC().Format(time.RFC3339))
}

// NodeStopped records that node id stopped at time at (a clean shutdown): it shows offline at
// once and may be deleted.
func (c *Catalog) NodeStopped(ctx context.Context, id string, at time.Time) error {
	if _, err := c.db.ExecContext(ctx, c.db.Rebind(`UPDATE nodes SET stopped_at = ? WHERE id = ?`), at.Unix(), id); err != nil {
		return fmt.Errorf("record node %s stopped: %w", id, err)
	}
	return nil
}

const nodeColumns = `id, name, kind, cluster_id, tags, wireguard_public_key, wireguard_endpoint, enroll_url, enroll_cert_sha256, version, started_at, last_heartbeat, stopped_at`

type rowScanner interface{ Scan(dest ...any) error }

func scanNode(r rowScanner) (Node, error) {
	var n Node
	var tags string
	var cluster sql.NullString
	var started, beat, stopped int64
	if err := r.Scan(&n.ID, &n.Name, &n.Kind, &cluster, &tags, &n.WireGuardPublicKey, &n.WireGuardEndpoint, &n.EnrollURL, &n.EnrollCertSHA256, &n.Version, &started, &beat, &stopped); err != nil {
		return n, err
	}
	if err := json.Unmarshal([]byte(tags), &n.Tags); err != nil {
		return n, fmt.Errorf("decode tags of node %s: %w", n.ID, err)
	}
	if n.Tags == nil {
		n.Tags = map[string]string{}
	}
	n.ClusterID = cluster.String
	n.StartedAt, n.LastHeartbeat = time.Unix(started, 0).UTC(), time.Unix(beat, 0).UTC()
	if stopped != 0 {
		n.StoppedAt = time.Unix(stopped, 0).UTC()
	}
	return n, nil
}

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// nodeBy finds a node by ID or name; it wraps ErrNotFound. An ID wins over a name (names never
// have the form of an ID, see api.ValidateNodeName).
func (c *Catalog) nodeBy(ctx context.Context, q queryer, idOrName string) (Node, error) {
	n, err := scanNode(q.QueryRowContext(ctx, c.db.Rebind(`SELECT `+nodeColumns+` FROM nodes WHERE id = ? OR name = ? ORDER BY CASE WHEN id = ? THEN 0 ELSE 1 END LIMIT 1`), idOrName, idOrName, idOrName))
	if errors.Is(err, sql.ErrNoRows) {
		return n, fmt.Errorf("node %q: %w (list them with `ferry admin nodes list`)", idOrName, ErrNotFound)
	}
	if err != nil {
		return n, fmt.Errorf("node %q: %w", idOrName, err)
	}
	return n, nil
}

// Nodes returns every node, sorted by name.
func (c *Catalog) Nodes(ctx context.Context) ([]Node, error) {
	rows, err := c.db.QueryContext(ctx, c.db.Rebind(`SELECT `+nodeColumns+` FROM nodes ORDER BY name`))
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	defer rows.Close()
	out := []Node{}
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, fmt.Errorf("list nodes: %w", err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return out, nil
}

// Node returns the node with that ID or name; it wraps ErrNotFound.
func (c *Catalog) Node(ctx context.Context, idOrName string) (Node, error) {
	return c.nodeBy(ctx, c.db, idOrName)
}

// UpdateNodeTags replaces the tags of the node with that ID or name and returns the node.
func (c *Catalog) UpdateNodeTags(ctx context.Context, idOrName string, tags map[string]string) (Node, error) {
	if tags == nil {
		tags = map[string]string{}
	}
	if err := api.ValidateNodeTags(tags); err != nil {
		return Node{}, fmt.Errorf("update node %s: %w", idOrName, err)
	}
	b, err := json.Marshal(tags)
	if err != nil {
		return Node{}, fmt.Errorf("update node %s: encode tags: %w", idOrName, err)
	}
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return Node{}, fmt.Errorf("update node %s: %w", idOrName, err)
	}
	defer tx.Rollback()
	n, err := c.nodeBy(ctx, tx, idOrName)
	if err != nil {
		return n, fmt.Errorf("update node: %w", err)
	}
	if _, err := tx.ExecContext(ctx, c.db.Rebind(`UPDATE nodes SET tags = ? WHERE id = ?`), string(b), n.ID); err != nil {
		return n, fmt.Errorf("update node %s: %w", n.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return n, fmt.Errorf("update node %s: commit: %w", n.Name, err)
	}
	n.Tags = tags
	return n, nil
}

// ErrNodeOnline is returned (wrapped) when a running node's record is deleted.
var ErrNodeOnline = errors.New("node is online")

// nodeOnlineError says which node runs and since when; it is ErrNodeOnline.
type nodeOnlineError struct{ msg string }

func (e *nodeOnlineError) Error() string        { return e.msg }
func (e *nodeOnlineError) Is(target error) bool { return target == ErrNodeOnline }

// DeleteNode deletes the record of the node with that ID or name and returns it. A node that runs
// (Online as of now) is refused with an error wrapping ErrNodeOnline; the check and the delete are
// one statement, so a heartbeat cannot slip in between.
func (c *Catalog) DeleteNode(ctx context.Context, idOrName string) (Node, error) {
	n, err := c.nodeBy(ctx, c.db, idOrName)
	if err != nil {
		return n, fmt.Errorf("delete node: %w", err)
	}
	now := time.Now()
	res, err := c.db.ExecContext(ctx, c.db.Rebind(`DELETE FROM nodes WHERE id = ? AND (stopped_at != 0 OR last_heartbeat <= ?)`), n.ID, now.Add(-NodeOfflineAfter).Unix())
	if err != nil {
		return n, fmt.Errorf("delete node %s: %w", n.Name, err)
	}
	if k, err := res.RowsAffected(); err != nil {
		return n, fmt.Errorf("delete node %s: %w", n.Name, err)
	} else if k == 0 {
		cur, err := c.nodeBy(ctx, c.db, n.ID)
		if err != nil {
			return n, fmt.Errorf("delete node: %w", err)
		}
		return cur, &nodeOnlineError{fmt.Sprintf("delete node: node %s is online (last heartbeat %ds ago); stop it first",
			cur.Name, int64(max(0, now.Sub(cur.LastHeartbeat).Seconds())))}
	}
	return n, nil
}
