package node

import (
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferryhq/ferry/node/audit"
)

// catalogLocation is where a node's catalog lives, from the config's catalog_url.
type catalogLocation struct {
	// SQLitePath is the SQLite file ("" for PostgreSQL).
	SQLitePath string
	// Shared is true when the URL was given (the catalog may be another node's).
	Shared bool
	// PostgresURL is a postgres:// URL.
	PostgresURL string
}

// parseCatalogURL reads catalog_url: "" (the state directory's ferry.db), "sqlite:PATH" (an
// absolute path) or a postgres:// / postgresql:// URL.
func parseCatalogURL(s string) (catalogLocation, error) {
	switch {
	case s == "":
		return catalogLocation{}, nil
	case strings.HasPrefix(s, "sqlite:"):
		p := strings.TrimPrefix(s, "sqlite:")
		if !filepath.IsAbs(p) {
			return catalogLocation{}, fmt.Errorf("catalog_url %q: give an absolute path, sqlite:/path/to/ferry.db", s)
		}
		return catalogLocation{SQLitePath: filepath.Clean(p), Shared: true}, nil
	case strings.HasPrefix(s, "postgres://"), strings.HasPrefix(s, "postgresql://"):
		u, err := url.Parse(s)
		if err != nil || u.Host == "" && u.Query().Get("host") == "" {
			return catalogLocation{}, fmt.Errorf("catalog_url: not a postgres://HOST/DATABASE URL")
		}
		return catalogLocation{PostgresURL: s, Shared: true}, nil
	}
	return catalogLocation{}, fmt.Errorf("catalog_url %q: use sqlite:/path/to/ferry.db or postgres://HOST/DATABASE (empty: the state directory's ferry.db)", s)
}

// openCatalogDB opens the database catalog_url names (dir's ferry.db when empty). mustExist refuses
// a SQLite file that is not there yet (joining a deployment never creates one).
func openCatalogDB(dir string, cfg Config, mustExist bool) (*sql.DB, error) {
	loc, err := parseCatalogURL(cfg.CatalogURL)
	if err != nil {
		return nil, err
	}
	if loc.PostgresURL != "" {
		return nil, fmt.Errorf("catalog_url: this ferry-node cannot open a PostgreSQL catalog yet")
	}
	path := loc.SQLitePath
	if path == "" {
		path = filepath.Join(dir, dbFile)
	}
	if mustExist {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("open catalog %s: %w (is it the catalog of the deployment's first node?)", path, err)
		}
	}
	return audit.OpenDB(path)
}
