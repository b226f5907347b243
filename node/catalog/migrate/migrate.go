// Package migrate moves a single node's catalog and audit log from its SQLite file into a shared
// PostgreSQL catalog (`ferry-node catalog migrate`): every catalog table (settings, secret stores,
// resources, users, roles, grants, user roles, devices, enrollment tokens (their hashes: the
// catalog never holds a token's secret), nodes, admin activity) in one transaction, then the audit
// log (connections and queries) in a second one.
//
// Rows keep what other rows and other places refer to them by: resource IDs and addresses, device
// keys and addresses, node IDs, and the audit's record IDs (rows from releases before record IDs
// get one derived from their content, the same at every run). So a device enrolled with the node
// still connects to a node on the shared catalog, and a second run, or the node's spool shipping
// later, writes no audit record twice.
//
// The move is one-shot: a target holding any catalog or audit row is refused, naming what it
// holds, unless Options.IntoExisting, which merges: rows equal to the target's are skipped, rows
// that clash with the target's (same key, other content, or a taken name or address) refuse the
// whole catalog transaction, naming each clash. A source a running node holds (its node record's
// heartbeat is recent and it has not stopped) is refused: stop the node first.
package migrate

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/store"
)

// Options tune Run.
type Options struct {
	// IntoExisting merges into a target that already holds rows (another deployment's catalog, or
	// a run that stopped half way) instead of refusing it.
	IntoExisting bool
	// Now is the time the source's node records are judged by (zero: time.Now()).
	Now time.Time
}

// Count is what Run did with one table's rows.
type Count struct {
	Table   string
	Copied  int64 // rows written to the target
	Skipped int64 // rows the target already held (IntoExisting, or audit records shipped before)
}

// Result lists the tables in the order they were moved.
type Result struct {
	Counts []Count
}

// ErrNotEmpty is wrapped by Run's error when the target holds rows and IntoExisting is not set.
var ErrNotEmpty = errors.New("the target catalog is not empty")

// ErrConflict is wrapped by Run's error when IntoExisting finds rows that clash with the target's.
var ErrConflict = errors.New("rows clash with the target's")

// ErrSourceInUse is wrapped by Run's error when a node runs on the source.
var ErrSourceInUse = errors.New("a node is running on the source catalog")

// table is one table to move: its columns (the first len(key) of them its key, none for
// admin_activity, matched on its content) and the columns that are BOOLEAN on PostgreSQL.
type table struct {
	name  string
	cols  []string
	key   int
	bools map[string]bool
}

// catalogTables are the catalog's tables, each after those it refers to.
var catalogTables = []table{
	{name: "settings", cols: []string{"key", "value"}, key: 1},
	{name: "secret_stores", cols: []string{"id", "name", "data", "created_at"}, key: 1},
	{name: "resources", cols: []string{"name", "id", "vn_address", "loopback_address", "subdomain", "data", "created_at"}, key: 1},
	{name: "users", cols: []string{"name", "admin", "suspended", "created_at"}, key: 1, bools: map[string]bool{"admin": true, "suspended": true}},
	{name: "roles", cols: []string{"name", "created_at"}, key: 1},
	{name: "role_grants", cols: []string{"role", "grant_expr"}, key: 2},
	{name: "user_roles", cols: []string{"user_name", "role"}, key: 2},
	{name: "devices", cols: []string{"public_key", "user_name", "address", "name", "enrolled_at"}, key: 1},
	{name: "enroll_tokens", cols: []string{"secret_sha256", "user_name", "expires_at", "used_at"}, key: 1},
	{name: "proxy_clusters", cols: []string{"id", "name", "created_at"}, key: 1},
	{name: "nodes", cols: []string{"id", "name", "kind", "cluster_id", "tags", "wireguard_public_key", "wireguard_endpoint", "enroll_url", "enroll_cert_sha256", "version", "started_at", "last_heartbeat", "stopped_at"}, key: 1},
	{name: "admin_activity", cols: []string{"time", "actor", "action", "target", "detail"}},
}

// The audit's columns after the row ID and record ID.
var (
	connectionCols = []string{"start_time", "end_time", "user_name", "resource", "client_addr", "database", "outcome", "error",
		"original_user", "original_database", "role", "sqlstate", "upstream_pid", "bytes_from_client", "bytes_from_server", "queries_dropped", "node_id"}
	queryCols = []string{"time", "user_name", "resource", "protocol", "sql", "duration_us", "sql_length", "sql_sha256",
		"statement", "params", "command", "rows", "sqlstate", "error"}
)

// Run moves src's catalog and audit into dst (a PostgreSQL database), bringing both schemas
// forward first (the source's too, as the node would at its next start). See the package comment.
func Run(ctx context.Context, src, dst *store.DB, opts Options) (Result, error) {
	if src.Dialect() != store.SQLite {
		return Result{}, fmt.Errorf("migrate: the source must be a node's SQLite catalog (sqlite:PATH)")
	}
	if dst.Dialect() != store.Postgres {
		return Result{}, fmt.Errorf("migrate: the target must be a PostgreSQL database (postgres://HOST/DATABASE)")
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	// Before the source's schema is brought forward (a running node of another release would not
	// expect that), and again after, when the file had no nodes table yet.
	var has int
	if err := src.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'nodes'`).Scan(&has); err != nil {
		return Result{}, fmt.Errorf("migrate: source: %w", err)
	}
	if has > 0 {
		if err := checkNotRunning(ctx, src, opts.Now); err != nil {
			return Result{}, err
		}
	}
	if err := prepare(ctx, src, "source"); err != nil {
		return Result{}, err
	}
	if err := checkNotRunning(ctx, src, opts.Now); err != nil {
		return Result{}, err
	}
	if err := prepare(ctx, dst, "target"); err != nil {
		return Result{}, err
	}
	if !opts.IntoExisting {
		if err := checkEmpty(ctx, dst); err != nil {
			return Result{}, err
		}
	}
	var res Result
	counts, err := copyCatalog(ctx, src, dst, opts.IntoExisting)
	if err != nil {
		return res, err
	}
	res.Counts = counts
	counts, err = copyAudit(ctx, src, dst, opts.IntoExisting)
	if err != nil {
		return res, fmt.Errorf("%w (the catalog was moved and committed; run again with --into-existing to move the audit log: rows already there are skipped)", err)
	}
	res.Counts = append(res.Counts, counts...)
	return res, nil
}

// prepare brings db's catalog and audit schemas forward.
func prepare(ctx context.Context, db *store.DB, what string) error {
	if _, err := catalog.Open(ctx, db); err != nil {
		return fmt.Errorf("migrate: %s: %w", what, err)
	}
	l, err := audit.OpenStore(ctx, db, audit.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return fmt.Errorf("migrate: %s: %w", what, err)
	}
	if err := l.Close(); err != nil {
		return fmt.Errorf("migrate: %s: close the audit log: %w", what, err)
	}
	return nil
}

// checkNotRunning refuses a source whose node records show a running node.
func checkNotRunning(ctx context.Context, src *store.DB, now time.Time) error {
	rows, err := src.QueryContext(ctx, `SELECT name, id, last_heartbeat FROM nodes WHERE stopped_at = 0 AND last_heartbeat > ?`,
		now.Add(-catalog.NodeOfflineAfter).Unix())
	if err != nil {
		return fmt.Errorf("migrate: source: read its node records: %w", err)
	}
	defer rows.Close()
	var running []string
	for rows.Next() {
		var name, id string
		var beat int64
		if err := rows.Scan(&name, &id, &beat); err != nil {
			return fmt.Errorf("migrate: source: read its node records: %w", err)
		}
		running = append(running, fmt.Sprintf("%s (%s, last heartbeat %s ago)", name, id, now.Sub(time.Unix(beat, 0)).Round(time.Second)))
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("migrate: source: read its node records: %w", err)
	}
	if len(running) > 0 {
		return fmt.Errorf("migrate: %w: %s; stop it first (e.g. systemctl stop ferry-node) so that nothing changes while it moves, then run this again (a node killed without a clean stop shows as stopped %s after its last heartbeat)",
			ErrSourceInUse, strings.Join(running, ", "), catalog.NodeOfflineAfter)
	}
	return nil
}

// allTables are every table checkEmpty looks at.
func allTables() []string {
	var names []string
	for _, t := range catalogTables {
		names = append(names, t.name)
	}
	return append(names, "audit_connections", "audit_queries")
}

// checkEmpty refuses a target holding any catalog or audit row, naming the tables that hold some.
func checkEmpty(ctx context.Context, dst *store.DB) error {
	var full []string
	for _, name := range allTables() {
		var n int64
		if err := dst.QueryRowContext(ctx, `SELECT count(*) FROM `+name).Scan(&n); err != nil {
			return fmt.Errorf("migrate: target: count the rows of %s: %w", name, err)
		}
		if n > 0 {
			full = append(full, fmt.Sprintf("%s: %d", name, n))
		}
	}
	if len(full) > 0 {
		return fmt.Errorf("migrate: %w (%s): it is a deployment's catalog already, or a migration ran before; to merge into it, run again with --into-existing (rows equal to the target's are skipped, clashing rows refuse the move and are named)",
			ErrNotEmpty, strings.Join(full, ", "))
	}
	return nil
}

func quoted(cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = `"` + c + `"`
	}
	return strings.Join(q, ", ")
}

// readAll returns every row of t in src, in key order.
func readAll(ctx context.Context, src *store.DB, t table) ([][]any, error) {
	order := "rowid"
	if t.key > 0 {
		order = quoted(t.cols[:t.key])
	}
	rows, err := src.QueryContext(ctx, `SELECT `+quoted(t.cols)+` FROM `+t.name+` ORDER BY `+order)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", t.name, err)
	}
	defer rows.Close()
	var out [][]any
	for rows.Next() {
		vals := make([]any, len(t.cols))
		ptrs := make([]any, len(t.cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, fmt.Errorf("read %s: %w", t.name, err)
		}
		for i, c := range t.cols {
			vals[i] = forPostgres(vals[i], t.bools[c])
		}
		out = append(out, vals)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", t.name, err)
	}
	return out, nil
}

// forPostgres is a SQLite value as PostgreSQL takes it: 0/1 as a boolean for BOOLEAN columns, text
// without NUL and invalid UTF-8 (as the audit log writes it there).
func forPostgres(v any, boolean bool) any {
	switch x := v.(type) {
	case []byte:
		return forPostgres(string(x), boolean)
	case string:
		if utf8.ValidString(x) && strings.IndexByte(x, 0) < 0 {
			return x
		}
		return strings.ReplaceAll(strings.ToValidUTF8(x, "\uFFFD"), "\x00", "\uFFFD")
	case int64:
		if boolean {
			return x != 0
		}
	}
	return v
}

// same is how merge compares a value of the source with the target's.
func same(a, b any) bool { return canonical(a) == canonical(b) }

func canonical(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case bool:
		if x {
			return "1"
		}
		return "0"
	case int64:
		return strconv.FormatInt(x, 10)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case []byte:
		return "'" + string(x)
	case string:
		return "'" + x
	}
	return fmt.Sprint(v)
}

// copyCatalog moves every catalog table in one transaction (announced to the target's nodes).
func copyCatalog(ctx context.Context, src, dst *store.DB, merge bool) ([]Count, error) {
	tx, err := dst.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate catalog: begin: %w", err)
	}
	defer tx.Rollback()
	var counts []Count
	var clashes []string
	for _, t := range catalogTables {
		rows, err := readAll(ctx, src, t)
		if err != nil {
			return nil, fmt.Errorf("migrate catalog: source: %w", err)
		}
		c := Count{Table: t.name}
		for _, row := range rows {
			copied, clash, err := copyRow(ctx, tx, dst, t, row, merge)
			if err != nil {
				return nil, fmt.Errorf("migrate catalog: %w", err)
			}
			switch {
			case clash != "":
				clashes = append(clashes, clash)
			case copied:
				c.Copied++
			default:
				c.Skipped++
			}
		}
		counts = append(counts, c)
	}
	if len(clashes) > 0 {
		const most = 20
		more := ""
		if len(clashes) > most {
			more = fmt.Sprintf("; and %d more", len(clashes)-most)
			clashes = clashes[:most]
		}
		return nil, fmt.Errorf("migrate catalog: %w, nothing was moved: %s%s; rename or delete them on one side and run again", ErrConflict, strings.Join(clashes, "; "), more)
	}
	if err := tx.Notify(ctx); err != nil {
		return nil, fmt.Errorf("migrate catalog: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("migrate catalog: commit: %w", err)
	}
	return counts, nil
}

// copyRow writes one row unless the target holds it (true when written). A row clashing with the
// target's is described in clash. Each insert runs under a savepoint, so a refused one leaves the
// transaction usable for finding the other clashes.
func copyRow(ctx context.Context, tx *store.Tx, dst *store.DB, t table, row []any, merge bool) (copied bool, clash string, err error) {
	// The row as the target has it: by key, or (no key) by the whole content.
	match := t.key
	if match == 0 {
		match = len(t.cols)
	}
	conds := make([]string, match)
	for i := range conds {
		conds[i] = `"` + t.cols[i] + `" = ?`
	}
	if merge {
		have := make([]any, len(t.cols))
		ptrs := make([]any, len(t.cols))
		for i := range have {
			ptrs[i] = &have[i]
		}
		err := tx.QueryRowContext(ctx, dst.Rebind(`SELECT `+quoted(t.cols)+` FROM `+t.name+` WHERE `+strings.Join(conds, " AND ")+` LIMIT 1`), row[:match]...).Scan(ptrs...)
		switch {
		case err == nil:
			if t.name == "nodes" {
				return false, "", nil // the target's record of a node is its newest (a node on it heartbeats)
			}
			for i := range row {
				if t.cols[i] == "created_at" || t.cols[i] == "enrolled_at" {
					continue // when each side made it is no clash: the target's stays
				}
				if !same(row[i], have[i]) {
					return false, fmt.Sprintf("%s %s: the target's differs in %s", t.name, describe(t, row), t.cols[i]), nil
				}
			}
			return false, "", nil
		case !errors.Is(err, sql.ErrNoRows):
			return false, "", fmt.Errorf("look %s %s up in the target: %w", t.name, describe(t, row), err)
		}
	}
	if _, err := tx.ExecContext(ctx, `SAVEPOINT migrate_row`); err != nil {
		return false, "", fmt.Errorf("savepoint: %w", err)
	}
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(t.cols)), ", ")
	_, err = tx.ExecContext(ctx, dst.Rebind(`INSERT INTO `+t.name+` (`+quoted(t.cols)+`) VALUES (`+marks+`)`), row...)
	if err != nil {
		if _, rerr := tx.ExecContext(ctx, `ROLLBACK TO SAVEPOINT migrate_row`); rerr != nil {
			return false, "", fmt.Errorf("write %s %s: %v; roll back: %w", t.name, describe(t, row), err, rerr)
		}
		if store.IsConflict(err) || store.IsForeignKeyViolation(err) {
			return false, fmt.Sprintf("%s %s: %s", t.name, describe(t, row), detail(err)), nil
		}
		return false, "", fmt.Errorf("write %s %s: %w", t.name, describe(t, row), err)
	}
	if _, err := tx.ExecContext(ctx, `RELEASE SAVEPOINT migrate_row`); err != nil {
		return false, "", fmt.Errorf("release savepoint: %w", err)
	}
	return true, "", nil
}

// describe names a row by its key (admin activity by its action and target). Enrollment tokens are
// named by a prefix of their hash only.
func describe(t table, row []any) string {
	switch t.name {
	case "admin_activity":
		return fmt.Sprintf("%v %v", row[2], row[3])
	case "enroll_tokens":
		h := fmt.Sprint(row[0])
		return fmt.Sprintf("of %v (sha256 %.8s…)", row[1], h)
	}
	parts := make([]string, t.key)
	for i := range parts {
		parts[i] = fmt.Sprintf("%v", row[i])
	}
	return strconv.Quote(strings.Join(parts, "/"))
}

// detail is the server's own words on a constraint violation ("Key (vn_address)=(…) already
// exists.").
func detail(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Detail != "" {
		return pe.Detail
	}
	return err.Error()
}

// auditBatch is how many audit rows one INSERT writes (well under PostgreSQL's 65535 parameters).
const auditBatch = 500

// copyAudit moves the audit log in one transaction: connections (their row IDs kept on an empty
// target), then queries pointed at their connection's row in the target. A record the target
// holds already (same record ID) is skipped.
func copyAudit(ctx context.Context, src, dst *store.DB, merge bool) ([]Count, error) {
	tx, err := dst.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate audit: begin: %w", err)
	}
	defer tx.Rollback()
	conns := Count{Table: "audit_connections"}
	ids := map[int64]string{} // source row ID -> record ID
	cols := append([]string{"record_id"}, connectionCols...)
	if !merge {
		cols = append([]string{"id"}, cols...)
	}
	var batch [][]any
	flush := func(table string, cols []string, c *Count) error {
		if len(batch) == 0 {
			return nil
		}
		n, err := insertBatch(ctx, tx, table, cols, batch)
		if err != nil {
			return err
		}
		c.Copied += n
		c.Skipped += int64(len(batch)) - n
		batch = batch[:0]
		return nil
	}
	err = scanAudit(ctx, src, "audit_connections", connectionCols, func(id int64, rec string, vals []any) error {
		ids[id] = rec
		row := append([]any{rec}, vals...)
		if !merge {
			row = append([]any{id}, row...)
		}
		batch = append(batch, row)
		if len(batch) >= auditBatch {
			return flush("audit_connections", cols, &conns)
		}
		return nil
	})
	if err == nil {
		err = flush("audit_connections", cols, &conns)
	}
	if err != nil {
		return nil, fmt.Errorf("migrate audit: connections: %w", err)
	}
	// The target's row ID of each connection, by record ID.
	target := make(map[string]int64, len(ids))
	rows, err := tx.QueryContext(ctx, `SELECT record_id, id FROM audit_connections WHERE record_id IS NOT NULL`)
	if err != nil {
		return nil, fmt.Errorf("migrate audit: read the target's connection IDs: %w", err)
	}
	for rows.Next() {
		var rec string
		var id int64
		if err := rows.Scan(&rec, &id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("migrate audit: read the target's connection IDs: %w", err)
		}
		target[rec] = id
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("migrate audit: read the target's connection IDs: %w", err)
	}

	queries := Count{Table: "audit_queries"}
	qcols := append([]string{"record_id", "connection_id"}, queryCols...)
	if !merge {
		qcols = append([]string{"id"}, qcols...)
	}
	err = scanAudit(ctx, src, "audit_queries", append([]string{"connection_id"}, queryCols...), func(id int64, rec string, vals []any) error {
		srcConn, _ := vals[0].(int64)
		conn, ok := target[ids[srcConn]]
		if !ok {
			return fmt.Errorf("query %d refers to connection %d, which is not in the source", id, srcConn)
		}
		row := append([]any{rec, conn}, vals[1:]...)
		if !merge {
			row = append([]any{id}, row...)
		}
		batch = append(batch, row)
		if len(batch) >= auditBatch {
			return flush("audit_queries", qcols, &queries)
		}
		return nil
	})
	if err == nil {
		err = flush("audit_queries", qcols, &queries)
	}
	if err != nil {
		return nil, fmt.Errorf("migrate audit: queries: %w", err)
	}
	for _, t := range []string{"audit_connections", "audit_queries"} {
		if _, err := tx.ExecContext(ctx, `SELECT setval(pg_get_serial_sequence('`+t+`', 'id'), GREATEST((SELECT max(id) FROM `+t+`), 1))`); err != nil {
			return nil, fmt.Errorf("migrate audit: advance %s's IDs: %w", t, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("migrate audit: commit: %w", err)
	}
	return []Count{conns, queries}, nil
}

// scanAudit calls fn with each row of an audit table in ID order: its row ID, its record ID (one
// derived from the row's content for rows written before record IDs) and cols.
func scanAudit(ctx context.Context, src *store.DB, table string, cols []string, fn func(id int64, rec string, vals []any) error) error {
	rows, err := src.QueryContext(ctx, `SELECT id, record_id, `+quoted(cols)+` FROM `+table+` ORDER BY id`)
	if err != nil {
		return fmt.Errorf("read %s: %w", table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var rec sql.NullString
		vals := make([]any, len(cols))
		ptrs := append([]any{&id, &rec}, make([]any, len(cols))...)
		for i := range vals {
			ptrs[2+i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return fmt.Errorf("read %s: %w", table, err)
		}
		for i := range vals {
			vals[i] = forPostgres(vals[i], false)
		}
		r := rec.String
		if !rec.Valid || r == "" {
			r = legacyRecordID(table, id, vals)
		}
		if err := fn(id, r, vals); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read %s: %w", table, err)
	}
	return nil
}

// legacyRecordID gives a row written before record IDs a record ID of its own: a hash of its table,
// row ID and content, so every run (and every copy of the file) gives it the same one, and a form
// ("m-" and 32 hex digits) no node's record IDs take.
func legacyRecordID(table string, id int64, vals []any) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d", table, id)
	for _, v := range vals {
		fmt.Fprintf(h, "\x00%s", canonical(v))
	}
	return "m-" + hex.EncodeToString(h.Sum(nil)[:16])
}

// insertBatch writes rows into table, skipping those whose record ID the table holds, and returns
// how many it wrote.
func insertBatch(ctx context.Context, tx *store.Tx, table string, cols []string, rows [][]any) (int64, error) {
	var b strings.Builder
	b.WriteString(`INSERT INTO ` + table + ` (` + quoted(cols) + `) VALUES `)
	args := make([]any, 0, len(rows)*len(cols))
	n := 0
	for i, row := range rows {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for j := range row {
			if j > 0 {
				b.WriteString(", ")
			}
			n++
			b.WriteString("$" + strconv.Itoa(n))
		}
		b.WriteByte(')')
		args = append(args, row...)
	}
	b.WriteString(` ON CONFLICT (record_id) DO NOTHING`)
	res, err := tx.ExecContext(ctx, b.String(), args...)
	if err != nil {
		return 0, fmt.Errorf("write %d rows: %w", len(rows), err)
	}
	written, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("write %d rows: %w", len(rows), err)
	}
	return written, nil
}
