package audit

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/ferryhq/ferry/node/store"
)

// The audit schema is the store migration sequence "audit" (store.DB.Migrate): version 1 is the
// tables as the last release without record IDs left them, version 2 adds the record IDs, version 3
// the node ID of each connection. Times are
// TEXT in timeLayout on both dialects (fixed width, so they sort), so the code and the copy between
// databases are the same for both.
//
// SQLite files of earlier releases have the tables but no schema_versions row: adoptSQLite brings
// them to version 1 (the columns they lack, as those releases added them) and the steps go on from
// there, so their rows stay as they are.

// schema is the first release's tables (SQLite); later columns came with addedColumns.
const schema = `
CREATE TABLE IF NOT EXISTS audit_connections (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	start_time  TEXT NOT NULL,
	end_time    TEXT,
	user_name   TEXT NOT NULL,
	resource    TEXT NOT NULL,
	client_addr TEXT NOT NULL,
	database    TEXT NOT NULL,
	outcome     TEXT NOT NULL DEFAULT '',
	error       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_connections_user ON audit_connections(user_name, id);
CREATE INDEX IF NOT EXISTS audit_connections_resource ON audit_connections(resource, id);
CREATE TABLE IF NOT EXISTS audit_queries (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	connection_id INTEGER NOT NULL REFERENCES audit_connections(id) ON DELETE CASCADE,
	time          TEXT NOT NULL,
	user_name     TEXT NOT NULL,
	resource      TEXT NOT NULL,
	protocol      TEXT NOT NULL DEFAULT 'simple',
	sql           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_queries_connection ON audit_queries(connection_id, id);
CREATE INDEX IF NOT EXISTS audit_queries_user ON audit_queries(user_name, id);
CREATE INDEX IF NOT EXISTS audit_queries_resource ON audit_queries(resource, id);
`

// addedColumns are the columns releases before schema versions added to schema (ALTER TABLE ...
// ADD COLUMN when missing).
var addedColumns = []struct{ table, column, def string }{
	{"audit_connections", "original_user", "TEXT NOT NULL DEFAULT ''"},
	{"audit_connections", "original_database", "TEXT NOT NULL DEFAULT ''"},
	{"audit_connections", "role", "TEXT NOT NULL DEFAULT ''"},
	{"audit_connections", "sqlstate", "TEXT NOT NULL DEFAULT ''"},
	{"audit_connections", "upstream_pid", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_connections", "bytes_from_client", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_connections", "bytes_from_server", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_connections", "queries_dropped", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_queries", "duration_us", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_queries", "sql_length", "INTEGER NOT NULL DEFAULT 0"},
	{"audit_queries", "sql_sha256", "TEXT NOT NULL DEFAULT ''"},
	{"audit_queries", "statement", "TEXT NOT NULL DEFAULT ''"},
	{"audit_queries", "params", "TEXT NOT NULL DEFAULT ''"},
	{"audit_queries", "command", "TEXT NOT NULL DEFAULT ''"},
	{"audit_queries", "rows", "INTEGER NOT NULL DEFAULT -1"},
	{"audit_queries", "sqlstate", "TEXT NOT NULL DEFAULT ''"},
	{"audit_queries", "error", "TEXT NOT NULL DEFAULT ''"},
}

// sqliteV1 is version 1 on a new SQLite file: schema with addedColumns.
func sqliteV1() string {
	s := schema
	for _, c := range addedColumns {
		s += "ALTER TABLE " + c.table + " ADD COLUMN " + c.column + " " + c.def + ";\n"
	}
	return s
}

// recordIDs is version 2 on SQLite: record IDs, unique (rows written before have none: NULL, which
// a unique index allows any number of). INSERT ... ON CONFLICT (record_id) DO NOTHING makes writing
// a record twice harmless.
const recordIDs = `
ALTER TABLE audit_connections ADD COLUMN record_id TEXT;
ALTER TABLE audit_queries ADD COLUMN record_id TEXT;
CREATE UNIQUE INDEX audit_connections_record ON audit_connections(record_id);
CREATE UNIQUE INDEX audit_queries_record ON audit_queries(record_id);
`

// postgresV1 is version 1 on PostgreSQL: the tables of SQLite version 1.
const postgresV1 = `
CREATE TABLE audit_connections (
	id                BIGSERIAL PRIMARY KEY,
	start_time        TEXT NOT NULL,
	end_time          TEXT,
	user_name         TEXT NOT NULL,
	resource          TEXT NOT NULL,
	client_addr       TEXT NOT NULL,
	database          TEXT NOT NULL,
	outcome           TEXT NOT NULL DEFAULT '',
	error             TEXT NOT NULL DEFAULT '',
	original_user     TEXT NOT NULL DEFAULT '',
	original_database TEXT NOT NULL DEFAULT '',
	role              TEXT NOT NULL DEFAULT '',
	sqlstate          TEXT NOT NULL DEFAULT '',
	upstream_pid      BIGINT NOT NULL DEFAULT 0,
	bytes_from_client BIGINT NOT NULL DEFAULT 0,
	bytes_from_server BIGINT NOT NULL DEFAULT 0,
	queries_dropped   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX audit_connections_user ON audit_connections(user_name, id);
CREATE INDEX audit_connections_resource ON audit_connections(resource, id);
CREATE TABLE audit_queries (
	id            BIGSERIAL PRIMARY KEY,
	connection_id BIGINT NOT NULL REFERENCES audit_connections(id) ON DELETE CASCADE,
	"time"        TEXT NOT NULL,
	user_name     TEXT NOT NULL,
	resource      TEXT NOT NULL,
	protocol      TEXT NOT NULL DEFAULT 'simple',
	sql           TEXT NOT NULL,
	duration_us   BIGINT NOT NULL DEFAULT 0,
	sql_length    BIGINT NOT NULL DEFAULT 0,
	sql_sha256    TEXT NOT NULL DEFAULT '',
	statement     TEXT NOT NULL DEFAULT '',
	params        TEXT NOT NULL DEFAULT '',
	command       TEXT NOT NULL DEFAULT '',
	rows          BIGINT NOT NULL DEFAULT -1,
	sqlstate      TEXT NOT NULL DEFAULT '',
	error         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_queries_connection ON audit_queries(connection_id, id);
CREATE INDEX audit_queries_user ON audit_queries(user_name, id);
CREATE INDEX audit_queries_resource ON audit_queries(resource, id);
`

// nodeIDs is version 3 on both dialects: the ID of the node that carried each connection ("n-…";
// "" for connections recorded before), so that the connection log says which node opened the
// session to the server and can be filtered by it.
const nodeIDs = `
ALTER TABLE audit_connections ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_connections_node ON audit_connections(node_id, id);
`

// migration is the audit schema's migration sequence for dialect d.
func migration(d store.Dialect) store.Migration {
	m := store.Migration{
		Name:     "audit",
		SQLite:   []string{sqliteV1(), recordIDs, nodeIDs},
		Postgres: []string{postgresV1, recordIDs, nodeIDs},
	}
	if d == store.SQLite {
		m.Adopt = adoptSQLite
	}
	return m
}

// adoptSQLite gives the version of a SQLite file from before schema versions: 0 without audit
// tables, else 1 once the columns it lacks are added.
func adoptSQLite(ctx context.Context, tx *sql.Tx) (int, error) {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit_connections'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("find audit tables: %w", err)
	}
	if n == 0 {
		return 0, nil
	}
	if _, err := tx.ExecContext(ctx, schema); err != nil { // the indexes, and audit_queries should it be missing
		return 0, fmt.Errorf("create audit tables: %w", err)
	}
	have := map[string]bool{}
	for _, table := range []string{"audit_connections", "audit_queries"} {
		rows, err := tx.QueryContext(ctx, `SELECT name FROM pragma_table_info(?)`, table)
		if err != nil {
			return 0, fmt.Errorf("read columns of %s: %w", table, err)
		}
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				rows.Close()
				return 0, fmt.Errorf("read columns of %s: %w", table, err)
			}
			have[table+"."+name] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return 0, fmt.Errorf("read columns of %s: %w", table, err)
		}
	}
	for _, c := range addedColumns {
		if have[c.table+"."+c.column] {
			continue
		}
		if _, err := tx.ExecContext(ctx, `ALTER TABLE `+c.table+` ADD COLUMN `+c.column+` `+c.def); err != nil {
			return 0, fmt.Errorf("add column %s.%s: %w", c.table, c.column, err)
		}
	}
	return 1, nil
}
