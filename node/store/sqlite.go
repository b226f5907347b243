package store

import (
	"database/sql"
	"errors"
	"fmt"
	"os"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// OpenSQLite opens (creating if needed) the SQLite file at path with the settings the node uses for
// its shared database: WAL journal, busy_timeout 5000 ms, foreign keys on, synchronous=NORMAL (a
// commit survives a crash of the node process; a power loss of the VM may lose the last ones), and
// BEGIN IMMEDIATE for write transactions (so writers queue instead of failing to upgrade a lock).
//
// The database holds every user, device and statement, so its files are 0600: a new file is created
// with that mode before SQLite opens it (SQLite would make it 0644 less the umask), and SQLite gives
// the -wal and -shm files it creates the main file's mode; any of the three that is looser after the
// open is restricted to 0600.
func OpenSQLite(path string) (*sql.DB, error) {
	if path == "" {
		return nil, errors.New("open sqlite database: no file path given")
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		f.Close()
	} else if !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create sqlite database %s: %w", path, err)
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite database %s: %w", path, err)
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open sqlite database %s: %w", path, err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&^0o600 == 0 {
			continue
		}
		if err := os.Chmod(p, fi.Mode().Perm()&0o600); err != nil {
			db.Close()
			return nil, fmt.Errorf("open sqlite database: restrict %s to mode 0600: %w", p, err)
		}
	}
	return db, nil
}
