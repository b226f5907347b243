package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Channel is the PostgreSQL notification channel of catalog changes.
const Channel = "ferry_catalog"

// Tx is a write transaction that can announce itself to the change feed (Notify); commit it with
// Commit so the announcement goes out when, and only if, the transaction commits.
type Tx struct {
	*sql.Tx
	db     *DB
	notify bool
}

// Begin starts a write transaction.
func (db *DB) Begin(ctx context.Context) (*Tx, error) {
	tx, err := db.DB.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return &Tx{Tx: tx, db: db}, nil
}

// Notify announces tx's change to every Watch: on PostgreSQL with pg_notify inside tx (so every
// node's listeners hear it when tx commits, and never when it rolls back); on SQLite, to this
// process's watchers when tx.Commit succeeds.
func (db *DB) Notify(ctx context.Context, tx *Tx) error {
	if db.dialect == Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_notify($1, '')`, Channel); err != nil {
			return fmt.Errorf("announce the change: %w", err)
		}
	}
	tx.notify = true
	return nil
}

// Notify is db.Notify(ctx, tx).
func (tx *Tx) Notify(ctx context.Context) error { return tx.db.Notify(ctx, tx) }

// Commit commits the transaction and, on SQLite, wakes this process's watchers if it announced a
// change.
func (tx *Tx) Commit() error {
	if err := tx.Tx.Commit(); err != nil {
		return err
	}
	if tx.notify && tx.db.dialect != Postgres {
		tx.db.wake()
	}
	return nil
}

func (db *DB) wake() {
	db.mu.Lock()
	defer db.mu.Unlock()
	for c := range db.subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// Watch returns a channel that receives (coalesced: one pending wake-up at most) after each
// committed change announced with Notify, from any node on PostgreSQL and from this process on
// SQLite. On PostgreSQL it listens on a connection of its own; when that connection is lost it
// reconnects with backoff and then signals once, since changes may have been missed meanwhile. The
// channel is closed when ctx ends or the DB is closed. The error reports a first LISTEN that failed.
func (db *DB) Watch(ctx context.Context) (<-chan struct{}, error) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(db.closing, cancel)
	out := make(chan struct{}, 1)
	if db.dialect != Postgres {
		db.mu.Lock()
		db.subs[out] = struct{}{}
		db.mu.Unlock()
		go func() {
			<-ctx.Done()
			stop()
			db.mu.Lock()
			delete(db.subs, out)
			close(out)
			db.mu.Unlock()
		}()
		return out, nil
	}
	conn, err := db.listen(ctx)
	if err != nil {
		stop()
		cancel()
		return nil, fmt.Errorf("watch catalog changes: %w", err)
	}
	go func() {
		defer close(out)
		defer cancel()
		defer stop()
		db.watchLoop(ctx, conn, out)
	}()
	return out, nil
}

// Backoff bounds of the change feed's reconnects.
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 5 * time.Second
)

func (db *DB) watchLoop(ctx context.Context, conn *pgx.Conn, out chan struct{}) {
	signal := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	for {
		err := db.waitOrProbe(ctx, conn)
		if err == nil {
			signal()
			continue
		}
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(closeCtx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		db.logger.Warn("catalog change feed: connection lost; reconnecting", "err", err)
		backoff := watchBackoffMin
		for {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if conn, err = db.listen(ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			db.logger.Warn("catalog change feed: reconnect failed", "err", err, "next_try", backoff)
			backoff = min(2*backoff, watchBackoffMax)
		}
		db.logger.Info("catalog change feed: reconnected")
		signal() // changes may have been missed while disconnected
	}
}

// defaultFeedProbe is Options.FeedProbe's default.
const defaultFeedProbe = 30 * time.Second

// waitOrProbe waits for a notification on conn. Quiet for db.probe, the connection is pinged (within
// db.probe): TCP alone would notice a connection that died without a FIN or RST only after its
// keepalives (pgx: about 50 minutes), and the feed would stay silent meanwhile. It returns nil on a
// notification and an error when the connection is lost or ctx ends.
func (db *DB) waitOrProbe(ctx context.Context, conn *pgx.Conn) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, db.probe)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		if err == nil || ctx.Err() != nil || !(pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded)) {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, db.probe)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			return fmt.Errorf("the connection did not answer a ping within %s: %w", db.probe, err)
		}
	}
}

// listen takes a connection out of the pool for good and LISTENs on Channel with it.
func (db *DB) listen(ctx context.Context) (*pgx.Conn, error) {
	c, err := db.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	conn := c.Hijack()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{Channel}.Sanitize()); err != nil {
		_ = conn.Close(context.Background())
		return nil, fmt.Errorf("listen on %s: %w", Channel, err)
	}
	return conn, nil
}

// Lock takes a lock named name for the rest of the transaction, across every node: on PostgreSQL a
// transaction-level advisory lock, on SQLite nothing (write transactions start with BEGIN IMMEDIATE
// and so already run one at a time). Writers that read, decide and write (the next free address)
// take it so that two nodes never decide on the same snapshot.
func (tx *Tx) Lock(ctx context.Context, name string) error {
	if tx.db.dialect != Postgres {
		return nil
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(h.Sum64())); err != nil {
		return fmt.Errorf("take lock %s: %w", name, err)
	}
	return nil
}
