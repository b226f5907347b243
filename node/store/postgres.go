package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

var sslmodeKV = regexp.MustCompile(`(^|\s)sslmode\s*=`)

// hasSSLMode reports whether the URL or key=value string names an sslmode.
func hasSSLMode(connString string) bool {
	lower := strings.ToLower(connString)
	if strings.HasPrefix(lower, "postgres://") || strings.HasPrefix(lower, "postgresql://") {
		u, err := url.Parse(connString)
		return err == nil && u.Query().Has("sslmode")
	}
	return sslmodeKV.MatchString(connString)
}

// withSSLMode adds sslmode=verify-full to a URL or key=value string.
func withSSLMode(connString string) string {
	lower := strings.ToLower(connString)
	if strings.HasPrefix(lower, "postgres://") || strings.HasPrefix(lower, "postgresql://") {
		if strings.Contains(connString, "?") {
			return connString + "&sslmode=verify-full"
		}
		return connString + "?sslmode=verify-full"
	}
	return strings.TrimSpace(connString) + " sslmode=verify-full"
}

func isSocket(host string) bool { return strings.HasPrefix(host, "/") }

// openPostgres opens a pgx pool for opts.URL and a database/sql handle over it.
func openPostgres(ctx context.Context, opts Options) (*DB, error) {
	connString := opts.URL
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("open postgres database: parse URL: %w", err)
	}
	token := opts.Password != nil && cfg.ConnConfig.Password == "" && !isSocket(cfg.ConnConfig.Host)
	if token && !hasSSLMode(connString) {
		connString = withSSLMode(connString)
		if cfg, err = pgxpool.ParseConfig(connString); err != nil {
			return nil, fmt.Errorf("open postgres database: parse URL: %w", err)
		}
	}
	host := cfg.ConnConfig.Host
	if token {
		if err := checkTokenTLS(cfg, opts); err != nil {
			return nil, fmt.Errorf("open postgres database on %s: %w", host, err)
		}
		password := opts.Password
		cfg.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
			pw, err := password(ctx)
			if err != nil {
				return fmt.Errorf("get a token to log in to the catalog database: %w", err)
			}
			cc.Password = pw
			return nil
		}
	} else if opts.RootCAs != nil {
		for _, t := range tlsConfigs(cfg) {
			if t != nil && !t.InsecureSkipVerify && t.RootCAs == nil {
				t.RootCAs = opts.RootCAs
			}
		}
	}
	if opts.Lookup != nil {
		cfg.ConnConfig.LookupFunc = opts.Lookup
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres database on %s: %w", host, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open postgres database on %s: %w", host, err)
	}
	return &DB{DB: stdlib.OpenDBFromPool(pool), dialect: Postgres, pool: pool}, nil
}

func tlsConfigs(cfg *pgxpool.Config) []*tls.Config {
	out := []*tls.Config{cfg.ConnConfig.TLSConfig}
	for _, f := range cfg.ConnConfig.Fallbacks {
		out = append(out, f.TLSConfig)
	}
	return out
}

// checkTokenTLS refuses a token login that could reach a server unverified: every host and fallback
// must use TLS that verifies the certificate and the host name (sslmode=verify-full), and every host
// must pass opts.AllowHost. It sets RootCAs on the TLS configs.
func checkTokenTLS(cfg *pgxpool.Config, opts Options) error {
	hosts := []string{cfg.ConnConfig.Host}
	for _, f := range cfg.ConnConfig.Fallbacks {
		hosts = append(hosts, f.Host)
	}
	for _, t := range tlsConfigs(cfg) {
		if t == nil || t.InsecureSkipVerify || t.ServerName == "" {
			return errors.New("a login with the node's token needs sslmode=verify-full (the token must only go to a server whose certificate and host name are verified); remove the weaker sslmode from the catalog URL")
		}
		if opts.RootCAs != nil {
			t.RootCAs = opts.RootCAs
		}
		if t.MinVersion < tls.VersionTLS12 {
			t.MinVersion = tls.VersionTLS12
		}
	}
	for _, h := range hosts {
		if isSocket(h) {
			return fmt.Errorf("a login with the node's token goes to a TCP host with verified TLS, not the Unix socket %s", h)
		}
		if opts.AllowHost != nil {
			if err := opts.AllowHost(h); err != nil {
				return fmt.Errorf("catalog host %s: %w", h, err)
			}
		}
	}
	return nil
}
