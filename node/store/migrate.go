package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Migration is a named sequence of schema steps, one list per dialect: step i takes the schema from
// version i to i+1. Append new steps; never edit a released one. The versions of every sequence are
// kept in one table, schema_versions (name, version).
type Migration struct {
	Name     string   // "catalog", "audit"
	SQLite   []string // the steps on SQLite
	Postgres []string // the steps on PostgreSQL
	// Adopt, when set, reads the version of a schema made before schema_versions existed (the
	// catalog's own catalog_schema table in SQLite files of earlier releases). It runs in the
	// migration's transaction when schema_versions has no row for Name and returns 0 for none.
	Adopt func(ctx context.Context, tx *sql.Tx) (int, error)
}

// advisoryLockKey is the pg_advisory_xact_lock key every node's migrations take: one at a time.
const advisoryLockKey = 0x6665727279 // "ferry"

// Migrate brings m's schema forward to its last step, in one transaction: all steps apply or none.
// On PostgreSQL the transaction first takes an advisory lock, so nodes starting at once apply each
// step once and the others find the schema current. A database whose version is newer than the
// steps this binary knows is refused (run a newer ferry-node).
func (db *DB) Migrate(ctx context.Context, m Migration) error {
	steps := m.SQLite
	if db.dialect == Postgres {
		steps = m.Postgres
	}
	tx, err := db.DB.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate %s schema: begin: %w", m.Name, err)
	}
	defer tx.Rollback()
	if db.dialect == Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(advisoryLockKey)); err != nil {
			return fmt.Errorf("migrate %s schema: take the migration lock: %w", m.Name, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_versions (name TEXT PRIMARY KEY, version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrate %s schema: create schema_versions: %w", m.Name, err)
	}
	var version int
	err = tx.QueryRowContext(ctx, db.Rebind(`SELECT version FROM schema_versions WHERE name = ?`), m.Name).Scan(&version)
	if errors.Is(err, sql.ErrNoRows) {
		version, err = 0, nil
		if m.Adopt != nil {
			version, err = m.Adopt(ctx, tx)
		}
		if err == nil {
			_, err = tx.ExecContext(ctx, db.Rebind(`INSERT INTO schema_versions(name, version) VALUES(?, ?)`), m.Name, version)
		}
	}
	if err != nil {
		return fmt.Errorf("migrate %s schema: read its version: %w", m.Name, err)
	}
	if version > len(steps) {
		return fmt.Errorf("migrate %s schema: the database's schema version %d is newer than this ferry-node knows (%d); run a newer ferry-node", m.Name, version, len(steps))
	}
	if version == len(steps) {
		// Commit: the row for a sequence seen (or adopted) for the first time is kept.
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate %s schema: commit: %w", m.Name, err)
		}
		return nil
	}
	for v := version; v < len(steps); v++ {
		if _, err := tx.ExecContext(ctx, steps[v]); err != nil {
			return fmt.Errorf("migrate %s schema to version %d: %w", m.Name, v+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, db.Rebind(`UPDATE schema_versions SET version = ? WHERE name = ?`), len(steps), m.Name); err != nil {
		return fmt.Errorf("migrate %s schema: store version %d: %w", m.Name, len(steps), err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate %s schema to version %d: commit: %w", m.Name, len(steps), err)
	}
	return nil
}

// SchemaVersion returns the version m's schema has in the database (0 when never migrated).
func (db *DB) SchemaVersion(ctx context.Context, name string) (int, error) {
	var v int
	err := db.QueryRowContext(ctx, db.Rebind(`SELECT version FROM schema_versions WHERE name = ?`), name).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s schema version: %w", name, err)
	}
	return v, nil
}
