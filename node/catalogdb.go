package node

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/tokensource"
	"github.com/ferryhq/ferry/node/upstream"
)

// catalogLogin is what a node has at hand to log in to a PostgreSQL catalog: nil fields are made
// from the config when needed.
type catalogLogin struct {
	tokens  *tokensource.Source
	roots   *x509.CertPool
	allowed *serverhost.List
	log     *slog.Logger
	// mustExist refuses a SQLite catalog file that is not there yet (joining a deployment, or
	// issuing a token, never creates one).
	mustExist bool
}

// openCatalogDB opens the node's catalog database: the SQLite file in dir when cfg.CatalogURL is
// empty, else cfg.CatalogURL. A PostgreSQL URL without a password (and not a Unix socket) logs in
// with the managed identity token of cfg.CatalogClientID (system-assigned when empty), over TLS
// verified against the node's CA pool, to a host allowed_server_hosts allows; the host overrides
// apply as for resources.
func openCatalogDB(ctx context.Context, dir string, cfg Config, l catalogLogin) (*store.DB, error) {
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	loc, err := parseCatalogURL(cfg.CatalogURL)
	if err != nil {
		return nil, err
	}
	if loc.PostgresURL == "" {
		path := loc.SQLitePath
		if path == "" {
			path = filepath.Join(dir, dbFile)
		}
		if l.mustExist {
			if _, err := os.Stat(path); err != nil {
				return nil, fmt.Errorf("open catalog %s: %w (is it the catalog of the deployment's first node?)", path, err)
			}
		}
		db, err := store.Open(ctx, store.Options{URL: "sqlite:" + path, Logger: l.log})
		if err != nil {
			return nil, fmt.Errorf("open catalog: %w", err)
		}
		return db, nil
	}
	if l.roots == nil {
		if l.roots, err = upstream.RootPool(cfg.CAFiles); err != nil {
			return nil, fmt.Errorf("open catalog: %w", err)
		}
	}
	if l.allowed == nil {
		if l.allowed, err = cfg.allowList(); err != nil {
			return nil, fmt.Errorf("open catalog: %w", err)
		}
	}
	if l.tokens == nil {
		if l.tokens, err = tokensource.New(tokensource.Config{IMDSEndpoint: cfg.IMDSEndpoint, Logger: l.log}); err != nil {
			return nil, fmt.Errorf("open catalog: %w", err)
		}
	}
	tokens, clientID := l.tokens, cfg.CatalogClientID
	db, err := store.Open(ctx, store.Options{
		URL: cfg.CatalogURL,
		Password: func(ctx context.Context) (string, error) {
			tok, _, err := tokens.Token(ctx, clientID)
			return tok, err
		},
		RootCAs:   l.roots,
		AllowHost: l.allowed.Check,
		Lookup:    upstream.Lookup(cfg.HostOverrides, cfg.DNSServer),
		Logger:    l.log,
	})
	if err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	return db, nil
}

// catalogLocation is where a node's catalog lives, from the config's catalog_url.
type catalogLocation struct {
	// SQLitePath is the SQLite file ("" for PostgreSQL, and for the state directory's ferry.db).
	SQLitePath string
	// PostgresURL is a postgres:// URL or a libpq key=value string.
	PostgresURL string
}

// parseCatalogURL reads catalog_url: "" (the state directory's ferry.db), "sqlite:PATH" (an
// absolute path), a postgres:// / postgresql:// URL, or a libpq key=value string.
func parseCatalogURL(s string) (catalogLocation, error) {
	switch {
	case s == "":
		return catalogLocation{}, nil
	case strings.HasPrefix(s, "sqlite:"):
		p := strings.TrimPrefix(s, "sqlite:")
		if !filepath.IsAbs(p) {
			return catalogLocation{}, fmt.Errorf("catalog_url %q: give an absolute path, sqlite:/path/to/ferry.db", s)
		}
		return catalogLocation{SQLitePath: filepath.Clean(p)}, nil
	case strings.HasPrefix(s, "postgres://"), strings.HasPrefix(s, "postgresql://"):
		u, err := url.Parse(s)
		if err != nil || u.Host == "" && u.Query().Get("host") == "" {
			return catalogLocation{}, fmt.Errorf("catalog_url: not a postgres://HOST/DATABASE URL")
		}
		return catalogLocation{PostgresURL: s}, nil
	case strings.Contains(s, "="): // a libpq key=value connection string
		if !store.IsPostgres(s) { // the store would open a SQLite file of that name
			return catalogLocation{}, fmt.Errorf("catalog_url %q: a key=value connection string needs host=, dbname=, user=, port= or service= (keys in lower case)", store.Redact(s))
		}
		return catalogLocation{PostgresURL: s}, nil
	}
	return catalogLocation{}, fmt.Errorf("catalog_url %q: use sqlite:/path/to/ferry.db or postgres://HOST/DATABASE (empty: the state directory's ferry.db)", store.Redact(s))
}

// catalogWhere names the catalog of cfg for messages, without its password: the SQLite file, or
// the PostgreSQL connection string with its passwords masked (store.Redact).
func catalogWhere(dir string, cfg Config) string {
	loc, err := parseCatalogURL(cfg.CatalogURL)
	switch {
	case err != nil:
		return "catalog_url"
	case loc.PostgresURL == "" && loc.SQLitePath == "":
		return filepath.Join(dir, dbFile)
	case loc.PostgresURL == "":
		return "sqlite:" + loc.SQLitePath
	}
	return store.Redact(loc.PostgresURL)
}

// OpenCatalogURL opens the catalog database url as a node with config cfg would (`ferry-node
// catalog migrate`): a SQLite file (sqlite:/ABSOLUTE/PATH) only when it exists already, a
// PostgreSQL URL without a password with the managed identity of cfg.CatalogClientID over TLS
// verified against cfg's CA files, to a host allowed_server_hosts allows. The caller closes it.
func OpenCatalogURL(ctx context.Context, url string, cfg Config, logger *slog.Logger) (*store.DB, error) {
	cfg.CatalogURL = url
	cfg.applyDefaults()
	return openCatalogDB(ctx, "", cfg, catalogLogin{log: logger, mustExist: true})
}
