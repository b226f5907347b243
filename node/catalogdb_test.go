package node_test

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/tunnel"
)

// TestCatalogOnAzurePostgresWithManagedIdentity: with catalog_url naming a database on the
// (emulated) Azure Database for PostgreSQL server and no password, init and start keep the catalog
// there, logging in with the catalog_client_id identity's token, which the server validates. The
// token only goes over TLS verified against the node's CA files to an allowed host: a weaker
// sslmode, an unknown CA or a host outside allowed_server_hosts is refused. A second node on the
// same catalog follows changes made through the first (a device enrolled, its user suspended).
func TestCatalogOnAzurePostgresWithManagedIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	emu := testenv.StartCatalogDB(t)
	base := demo.NodeConfig(emu)
	base.CatalogURL = testenv.CatalogURL(emu)
	base.CatalogClientID = demo.CatalogIdentity.ClientID

	refusals := []struct {
		name string
		edit func(*node.Config)
		want string
	}{
		{"sslmode=require", func(c *node.Config) { c.CatalogURL += "?sslmode=require" }, "verify-full"},
		{"unknown CA", func(c *node.Config) { c.CAFiles = nil }, "certificate"},
		{"host not allowed", func(c *node.Config) { c.AllowedServerHosts = []string{"other.postgres.database.azure.com"} }, "other.postgres.database.azure.com"},
	}
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			cfg := base
			r.edit(&cfg)
			_, err := node.Init(ctx, filepath.Join(t.TempDir(), "node"), cfg, "admin")
			if err == nil || !strings.Contains(err.Error(), r.want) {
				t.Fatalf("init: %v, want a refusal naming %q", err, r.want)
			}
		})
	}
	if n := len(testenv.CatalogQuery(t, ctx, emu, `SELECT tablename::text FROM pg_tables WHERE tablename = 'users'`)); n != 0 {
		t.Fatal("a refused init created the catalog")
	}

	dir := filepath.Join(t.TempDir(), "node")
	if _, err := node.Init(ctx, dir, base, "admin"); err != nil {
		t.Fatal(err)
	}
	if got := testenv.CatalogQuery(t, ctx, emu, `SELECT name FROM users WHERE admin`); len(got) != 1 || got[0] != "admin" {
		t.Fatalf("admins in the PostgreSQL catalog: %q", got)
	}
	if !testenv.TokenIssued(emu, demo.CatalogIdentity.ClientID) {
		t.Fatalf("no token was issued for the catalog identity: %+v", emu.IMDSRequests())
	}
	n, err := node.Start(ctx, dir, base, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.Catalog().AddUser(ctx, "bob", false); err != nil {
		t.Fatal(err)
	}
	if got := testenv.CatalogQuery(t, ctx, emu, `SELECT name FROM users ORDER BY name`); strings.Join(got, ",") != "admin,bob" {
		t.Fatalf("users in the PostgreSQL catalog after a write through the node: %q", got)
	}
	// A second node on the same catalog admits a device enrolled through the first, and drops it
	// when its user is suspended through the first, within 5 s.
	dirB := filepath.Join(t.TempDir(), "node-b")
	baseB := base
	baseB.Name = "node-b"
	if err := node.Join(ctx, dirB, baseB); err != nil {
		t.Fatal(err)
	}
	nb, err := node.Start(ctx, dirB, baseB, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	key, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	secret, err := n.Catalog().CreateEnrollToken(ctx, "bob", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.Catalog().Enroll(ctx, secret, key.PublicKey().String(), "laptop", nil); err != nil {
		t.Fatal(err)
	}
	waitPeer := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			ps, err := nb.Tunnel().Peers()
			if err != nil {
				t.Fatal(err)
			}
			has := false
			for _, p := range ps {
				has = has || p.PublicKey == key.PublicKey()
			}
			if has == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("node B: peer present %v 5 s after the change on node A, want %v", has, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitPeer(true)
	if err := n.Catalog().SetSuspended(ctx, "bob", true); err != nil {
		t.Fatal(err)
	}
	waitPeer(false)

	var out bytes.Buffer
	if _, err := node.Doctor(ctx, &out, dir, base, node.DoctorOptions{StepTimeout: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "writable (PostgreSQL on "+emu.Hostname()+")") {
		t.Fatalf("doctor does not name the PostgreSQL catalog:\n%s", out.String())
	}
	// The audit log lives in the same database: one audit trail for the fleet.
	if got := testenv.CatalogQuery(t, ctx, emu, `SELECT name || '=' || version FROM schema_versions WHERE name = 'audit'`); strings.Join(got, ",") != "audit=3" {
		t.Fatalf("audit schema in the PostgreSQL catalog: %q, want audit=3", got)
	}
}

// TestCatalogSettingsFromEnv: FERRY_NODE_CATALOG_URL and FERRY_NODE_CATALOG_CLIENT_ID override
// config.json's catalog_url and catalog_client_id.
func TestCatalogSettingsFromEnv(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	if err := node.SaveConfig(path, node.Config{CatalogURL: "postgres://file@db.example.com/c", CatalogClientID: "file-id"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := node.LoadConfig(path)
	if err != nil || cfg.CatalogURL != "postgres://file@db.example.com/c" || cfg.CatalogClientID != "file-id" {
		t.Fatalf("from the file: %q %q %v", cfg.CatalogURL, cfg.CatalogClientID, err)
	}
	t.Setenv("FERRY_NODE_CATALOG_URL", "postgres://env@db.example.com/c")
	t.Setenv("FERRY_NODE_CATALOG_CLIENT_ID", "env-id")
	cfg, err = node.LoadConfig(path)
	if err != nil || cfg.CatalogURL != "postgres://env@db.example.com/c" || cfg.CatalogClientID != "env-id" {
		t.Fatalf("with the environment: %q %q %v", cfg.CatalogURL, cfg.CatalogClientID, err)
	}
}
