package node

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ferryhq/ferry/node/pgproxy"
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
		Dial:      cfg.catalogDial(),
		Logger:    l.log,
	})
	if err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	return db, nil
}

// catalogDial dials the catalog server as the node dials resources: a host override's address
// instead of the host's, else the configured DNS server's answer (nil: pgx's own dialer).
func (c Config) catalogDial() func(ctx context.Context, network, addr string) (net.Conn, error) {
	if len(c.HostOverrides) == 0 && c.DNSServer == "" {
		return nil
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if over, ok := c.HostOverrides[strings.ToLower(strings.TrimSuffix(host, "."))]; ok {
			if _, _, err := net.SplitHostPort(over); err != nil {
				p, _ := strconv.Atoi(port)
				over = net.JoinHostPort(over, strconv.Itoa(p))
			}
			return pgproxy.UpstreamDialer().DialContext(ctx, network, over)
		}
		d := pgproxy.UpstreamDialer()
		d.Resolver = upstream.Resolver(c.DNSServer)
		return d.DialContext(ctx, network, addr)
	}
}
