package node

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/ferryhq/ferry/node/store"
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
// absolute path) a postgres:// / postgresql:// URL, or a libpq key=value string.
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
	case strings.Contains(s, "="): // a libpq key=value connection string
		if !store.IsPostgres(s) { // the store would open a SQLite file of that name
			return catalogLocation{}, fmt.Errorf("catalog_url %q: a key=value connection string needs host=, dbname=, user=, port= or service= (keys in lower case)", store.Redact(s))
		}
		return catalogLocation{PostgresURL: s, Shared: true}, nil
	}
	return catalogLocation{}, fmt.Errorf("catalog_url %q: use sqlite:/path/to/ferry.db or postgres://HOST/DATABASE (empty: the state directory's ferry.db)", store.Redact(s))
}
