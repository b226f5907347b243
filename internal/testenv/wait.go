package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// WaitFor polls cond every 100 ms until it returns nil and returns how long that took (for the
// test's log, never asserted); when within has passed it fails the test with what and cond's
// last error.
func WaitFor(t testing.TB, what string, within time.Duration, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SelectOne opens a pgx connection to conn (a libpq keyword/value string) and runs SELECT 1 on it,
// all within timeout: one round trip through whatever stands between the test and the server.
func SelectOne(ctx context.Context, conn string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := pgx.Connect(ctx, fmt.Sprintf("%s connect_timeout=%d", conn, max(1, int(timeout.Seconds()))))
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close(context.Background())
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("select 1: %w", err)
	}
	return nil
}
