package node

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/tokensource"
)

// catalogLogin is what a node has at hand to log in to a PostgreSQL catalog: nil fields are made
// from the config when needed.
type catalogLogin struct {
	tokens  *tokensource.Source
	roots   *x509.CertPool
	allowed *serverhost.List
	log     *slog.Logger
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
	if cfg.CatalogURL == "" {
		db, err := store.Open(ctx, store.Options{URL: "sqlite:" + filepath.Join(dir, dbFile), Logger: l.log})
		if err != nil {
			return nil, fmt.Errorf("open catalog: %w", err)
		}
		return db, nil
	}
	var err error
	if l.roots == nil {
		if l.roots, err = rootPool(cfg); err != nil {
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
		return c.resolver().LookupHost(ctx, host)
	}
}
