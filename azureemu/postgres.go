package azureemu

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ferryhq/ferry/internal/pgserver"
)

// superuser is the name of the real server's bootstrap superuser; Azure
// Database for PostgreSQL reserves the same name for Microsoft's own superuser.
const superuser = "azuresu"

// makeTempDir makes the emulator's temp dir, one the account PostgreSQL runs as can reach.
func makeTempDir() (string, error) { return pgserver.MakeTempDir("azureemu-") }

// startPostgres starts the real PostgreSQL server (internal/pgserver) in a data dir under the
// emulator's temp dir, reachable only by its unix socket: the front is its only way in, so
// initdb's trust authentication stays (the front authenticates).
func startPostgres(ctx context.Context, log *slog.Logger, binDir, dir string, maxConn int) (*pgserver.Server, error) {
	srv, err := pgserver.New(pgserver.Config{Dir: dir, BinDir: binDir, Superuser: superuser, MaxConnections: maxConn})
	if err != nil {
		if binDir == "" {
			return nil, fmt.Errorf("%w, or set Config.PGBinDir", err)
		}
		return nil, err
	}
	t0 := time.Now()
	if err := srv.Init(ctx); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	log.Debug("initdb done", "took", time.Since(t0))
	if err := srv.Start(ctx); err != nil {
		return nil, err
	}
	log.Debug("PostgreSQL started", "socket_dir", srv.SocketDir())
	return srv, nil
}
