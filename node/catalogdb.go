package node

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
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
		Lookup:    cfg.catalogLookup(),
		Logger:    l.log,
	})
	if err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	return db, nil
}

// catalogLookup resolves the catalog server's host as the node resolves resources': a host
// override's address instead of a lookup, else the configured DNS server's answer (nil: pgx's own
// lookup).
func (c Config) catalogLookup() func(ctx context.Context, host string) ([]string, error) {
	if len(c.HostOverrides) == 0 && c.DNSServer == "" {
		return nil
	}
	return func(ctx context.Context, host string) ([]string, error) {
		if over, ok := c.HostOverrides[strings.ToLower(strings.TrimSuffix(host, "."))]; ok {
			return []string{over}, nil
		}
		return upstream.Resolver(c.DNSServer).LookupHost(ctx, host)
	}
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
