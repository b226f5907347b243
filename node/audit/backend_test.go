package audit

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testDB is a database the audit tests run on: the node's SQLite file or a real PostgreSQL.
type testDB struct {
	name string
	url  string         // store.Options.URL
	path string         // the SQLite file; "" on PostgreSQL
	srv  *pgtest.Server // a PostgreSQL server of the test's own (to stop), or nil
}

// forEachBackend runs f as a subtest per backend, each with a fresh database. With ownServer the
// PostgreSQL one is a server of the test's own, which d.outage stops.
func forEachBackend(t *testing.T, ownServer bool, f func(t *testing.T, d *testDB)) {
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ferry.db")
		f(t, &testDB{name: "sqlite", url: "sqlite:" + path, path: path})
	})
	t.Run("postgres", func(t *testing.T) {
		d := &testDB{name: "postgres"}
		if ownServer {
			d.srv = pgtest.NewServer(t)
			db, err := d.srv.NewDatabase(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			d.url = d.srv.URL(db)
		} else {
			d.url = pgtest.Start(t)
		}
		f(t, d)
	})
}

// open opens a new handle on the database, closed at the end of the test.
func (d *testDB) open(t *testing.T) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), store.Options{URL: d.url, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// openLog opens a log on a new handle, closed at the end of the test. A zero Options.Logger
// discards, a zero RetryWait is 1 ms.
func (d *testDB) openLog(t *testing.T, opts Options) *Log {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.RetryWait == 0 {
		opts.RetryWait = time.Millisecond
	}
	l, err := OpenStore(context.Background(), d.open(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// openSpoolLog opens a log with a spool at spoolPath, quick retries, and its log lines in logs
// (nil = discarded).
func (d *testDB) openSpoolLog(t *testing.T, spoolPath string, logs io.Writer) *Log {
	t.Helper()
	if logs == nil {
		logs = io.Discard
	}
	return d.openLog(t, Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), WriteAttempts: 2, SpoolPath: spoolPath})
}

// outage makes the database refuse every audit write until the returned func is called: on
// PostgreSQL the test's own server is stopped (and started again), on SQLite triggers refuse them.
func (d *testDB) outage(t *testing.T) (restore func()) {
	t.Helper()
	if d.srv == nil {
		return outage(t, d.path)
	}
	if err := d.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := d.srv.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// stallWrites holds the audit tables' write lock from another connection (SQLite: BEGIN IMMEDIATE;
// PostgreSQL: LOCK TABLE ... IN EXCLUSIVE MODE) until the returned func is called: the writer waits.
func (d *testDB) stallWrites(t *testing.T) (release func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := d.open(t).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	lock := []string{"BEGIN IMMEDIATE"}
	if d.path == "" {
		lock = []string{"BEGIN", "LOCK TABLE audit_connections, audit_queries IN EXCLUSIVE MODE"}
	}
	for _, q := range lock {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	return func() {
		if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}
	}
}

// failWrites makes the database refuse writes to table (event INSERT or UPDATE) whose user_name
// is user, through another connection, until the returned func is called.
func (d *testDB) failWrites(t *testing.T, table, event, user string) (restore func()) {
	t.Helper()
	if d.path != "" {
		return failWrites(t, d.path, table, event, user)
	}
	db := d.open(t)
	name := "fail_" + table + "_" + event
	for _, q := range []string{
		`CREATE FUNCTION ` + name + `() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
			IF NEW.user_name = '` + user + `' THEN RAISE EXCEPTION 'disk I/O error (test)'; END IF; RETURN NEW; END $$`,
		`CREATE TRIGGER ` + name + ` BEFORE ` + event + ` ON ` + table + ` FOR EACH ROW EXECUTE FUNCTION ` + name + `()`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	return func() {
		if _, err := db.Exec(`DROP TRIGGER ` + name + ` ON ` + table); err != nil {
			t.Fatal(err)
		}
	}
}
