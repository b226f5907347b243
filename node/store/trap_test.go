package store_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtrap"
	"github.com/ferryhq/ferry/node/store"
)

// TestTokenNeverToUnverifiedServer: a catalog URL without a password logs in with the token, and
// the token never reaches a server that refuses TLS or whose certificate does not verify for the
// host name (another name, self-signed, a CA the node does not trust), whatever the server asks.
// The URL names no sslmode (libpq's default, prefer, would fall back to plaintext).
func TestTokenNeverToUnverifiedServer(t *testing.T) {
	const host = "catalog.postgres.database.azure.com"
	ca := pgtrap.NewCA(t)
	cases := []struct {
		name string
		trap func(t *testing.T) *pgtrap.Trap
	}{
		{"no TLS", func(t *testing.T) *pgtrap.Trap { return pgtrap.Start(t) }},
		{"another name", func(t *testing.T) *pgtrap.Trap { return pgtrap.StartTLS(t, ca.Issue(t, "other.example.com")) }},
		{"self-signed", func(t *testing.T) *pgtrap.Trap { return pgtrap.StartTLS(t, pgtrap.SelfSigned(t, host)) }},
		{"untrusted CA", func(t *testing.T) *pgtrap.Trap { return pgtrap.StartTLS(t, pgtrap.NewCA(t).Issue(t, host)) }},
	}
	token := "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.catalog-token.c2ln"
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			trap := c.trap(t)
			db, err := store.Open(ctx, store.Options{
				URL:      fmt.Sprintf("postgres://mi@%s:%d/catalog?connect_timeout=5", host, trap.Port()),
				Password: func(context.Context) (string, error) { return token, nil },
				RootCAs:  ca.Pool,
				Lookup:   func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil },
			})
			if err == nil {
				db.Close()
				t.Fatal("opened a catalog on an unverified server")
			}
			if bytes.Contains(trap.Received(), []byte(token)) {
				t.Fatalf("the token reached the server (%v)", err)
			}
			if trap.Conns() == 0 {
				t.Fatalf("never connected (%v): the test proves nothing", err)
			}
		})
	}
	// The control: the same server with a certificate the node trusts for the host gets the login,
	// so the cases above failed for the certificate, not for the setup.
	t.Run("trusted", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		trap := pgtrap.StartTLS(t, ca.Issue(t, host))
		db, err := store.Open(ctx, store.Options{
			URL:      fmt.Sprintf("postgres://mi@%s:%d/catalog?connect_timeout=5", host, trap.Port()),
			Password: func(context.Context) (string, error) { return token, nil },
			RootCAs:  ca.Pool,
			Lookup:   func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil },
		})
		if err == nil {
			db.Close()
		}
		if !bytes.Contains(trap.Received(), []byte(token)) || trap.Handshakes() == 0 {
			t.Fatalf("a verified server did not get the login (%v)", err)
		}
	})
}
