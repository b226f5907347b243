package demo

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/node"
)

// The shared catalog of a demo fleet: an Azure Database for PostgreSQL server of its own
// (CatalogServer), whose database CatalogDatabase belongs to the user-assigned identity every node
// logs in with (CatalogIdentity, one identity attached to every node's VM).
const (
	CatalogServer   = "ferrycatalog"
	CatalogDatabase = "ferry"
)

// CatalogIdentity is the nodes' identity for the catalog database; its display name is its role.
var CatalogIdentity = azureemu.Identity{
	ClientID:    "22222222-3333-4444-5555-666666666666",
	ObjectID:    "bbbbbbbb-cccc-4ddd-8eee-ffffffffffff",
	DisplayName: "ferry-fleet",
}

// StartCatalogDB starts the catalog database's server (an emulator named CatalogServer, with cfg's
// listen address, signing key, tenant and system identity: give those of the emulator whose IMDS
// the nodes ask, so that it accepts that IMDS's tokens) and makes CatalogDatabase, owned by
// CatalogIdentity's role.
func StartCatalogDB(ctx context.Context, cfg azureemu.Config) (*azureemu.Emulator, error) {
	cfg.ServerName = CatalogServer
	db, err := azureemu.Start(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("start the catalog database: %w", err)
	}
	if err := db.CreatePrincipal(ctx, CatalogIdentity.DisplayName, CatalogIdentity.ObjectID); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("start the catalog database: %w", err)
	}
	if err := db.CreateDatabase(ctx, CatalogDatabase, CatalogIdentity.DisplayName); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("start the catalog database: %w", err)
	}
	return db, nil
}

// CatalogURL is the URL of the catalog database on db for a node's catalog_url: no password (the
// node logs in with CatalogIdentity's token), TLS verified for the server's name.
func CatalogURL(db *azureemu.Emulator) string {
	_, port, _ := net.SplitHostPort(db.Addr())
	return "postgres://" + CatalogIdentity.DisplayName + "@" + net.JoinHostPort(db.Hostname(), port) + "/" + CatalogDatabase + "?sslmode=verify-full"
}

// WithCatalog makes cfg keep its catalog in the catalog database on db: the URL, the identity, the
// server's CA, a host override to its address and the server on allowed_server_hosts.
func WithCatalog(cfg *node.Config, db *azureemu.Emulator) {
	host := strings.ToLower(db.Hostname())
	cfg.CatalogURL, cfg.CatalogClientID = CatalogURL(db), CatalogIdentity.ClientID
	cfg.CAFiles = append(cfg.CAFiles, db.CACertFile())
	if cfg.HostOverrides == nil {
		cfg.HostOverrides = map[string]string{}
	}
	cfg.HostOverrides[host] = db.Addr()
	cfg.AllowedServerHosts = append(cfg.AllowedServerHosts, host)
}
