// Package demo assembles a whole Ferry installation on loopback: a real PostgreSQL behind the Azure
// emulator, a node, an enrolled client daemon, and the reference page's example resource
// azure-pg-mi-prod, connected in loopback mode. The demo command and the end-to-end tests use it.
package demo

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// The reference page's example resource.
const (
	ResourceName = "azure-pg-mi-prod"
	Database     = "production"
	Role         = "mi_user"
	ClientID     = "11111111-2222-3333-4444-555555555555"
	ObjectID     = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
	IdentityName = "ferry-mi-prod"
	// KVResourceName is the demo's resource whose username and client ID come from Key Vault.
	KVResourceName = "azure-pg-mi-kv"
	// KVStoreName is the demo's secret store.
	KVStoreName = "demo-kv"
	// VaultName is the demo's Key Vault (https://ferry-demo-kv.vault.azure.net/), served by the
	// emulator; the node's host overrides send its host name there.
	VaultName = "ferry-demo-kv"
)

// Options tune Start.
type Options struct {
	// Dir is where everything is kept; empty means a new temp dir removed by Close.
	Dir    string
	Logger *slog.Logger
	// NoResource skips adding and connecting azure-pg-mi-prod.
	NoResource bool
	// LoopbackIP is where azure-pg-mi-prod listens (its bind interface); default 127.0.0.1. Tests that
	// run side by side use RandomLoopbackIP so their ports never collide.
	LoopbackIP string
	// SingleServer runs the emulator as Azure Database for PostgreSQL Single Server (logins as
	// "role@servername"); azure-pg-mi-prod then uses Single Server usernames.
	SingleServer bool
	// LoopbackPort is azure-pg-mi-prod's port override (its loopback port);
	// 0 keeps the default (10001).
	LoopbackPort int
	// NodeConfig, if set, adjusts the node's config before the node is created.
	NodeConfig func(*node.Config)
	// TokenLifetime is the lifetime of the emulator's access tokens; 0 keeps its default (1h).
	TokenLifetime time.Duration
	// MaxConnections is the emulator's PostgreSQL max_connections; 0 keeps its default (100).
	MaxConnections int
	// Nodes, when above 1, starts that many nodes (in this process, on loopback ports the system
	// picks) sharing one catalog: the catalog database's server (StartCatalogDB) next to the
	// emulator, each node logging in to it with CatalogIdentity. The client enrolls with the first.
	// 0 or 1: the single node with its SQLite catalog.
	Nodes int
	// KeyVault also adds the secret store demo-kv (the emulator's Key Vault ferry-demo-kv, read with
	// the VM's system-assigned identity) and the resource azure-pg-mi-kv, whose username and client
	// ID come from its secret pg-login ({"user": …, "client": …}), and connects it.
	KeyVault bool
}

// NodeConfig is the configuration of the demo's node for the emulator emu: on loopback (enrollment
// and WireGuard on ports the system picks), IMDS, the CA, the server and the vault all the
// emulator's.
func NodeConfig(emu *azureemu.Emulator) node.Config {
	return node.Config{
		PublicHost:    "127.0.0.1",
		EnrollListen:  "127.0.0.1:0",
		WireGuardPort: 0,
		IMDSEndpoint:  emu.IMDSEndpoint(),
		CAFiles:       []string{emu.CACertFile()},
		HostOverrides: map[string]string{
			strings.ToLower(emu.Hostname()): emu.Addr(),
			azureemu.VaultHost(VaultName):   emu.VaultAddr(),
		},
		// The access token goes to the emulator's server and nowhere else (not even the Azure
		// domains: no real Azure server belongs to a demo).
		AllowedServerHosts: []string{strings.ToLower(emu.Hostname())},
		// Every other hostname fails to resolve at once, without a query leaving the machine.
		DNSServer: "127.0.0.1:9",
	}
}

// RandomLoopbackIP returns a random address of 127.0.0.0/8 other than 127.0.0.1 (Linux routes the
// whole range to the loopback interface).
func RandomLoopbackIP() string {
	return fmt.Sprintf("127.%d.%d.%d", 1+mrand.IntN(254), mrand.IntN(256), 1+mrand.IntN(254))
}

// Env is a running demo installation.
type Env struct {
	Emu    *azureemu.Emulator
	Node   *node.Node
	Daemon *client.Daemon
	Dirs   client.Dirs
	// NodeDir is the node's state directory.
	NodeDir string
	// Nodes and NodeDirs are every node and its state directory (Node and NodeDir first); more
	// than one with Options.Nodes.
	Nodes    []*node.Node
	NodeDirs []string
	// CatalogDB is the shared catalog database's server (Options.Nodes above 1).
	CatalogDB *azureemu.Emulator
	// Resource is azure-pg-mi-prod as connected (unless Options.NoResource).
	Resource client.ResourceStatus
	// KVResource is azure-pg-mi-kv as connected (with Options.KeyVault).
	KVResource client.ResourceStatus

	dir     string
	ownsDir bool
}

// AdminClient is the demo's client: a device of the first admin with its daemon running in this
// process, and the demo's resources added and connected through it.
type AdminClient struct {
	Daemon *client.Daemon
	Dirs   client.Dirs
	// Resource is azure-pg-mi-prod as connected (unless Options.NoResource).
	Resource client.ResourceStatus
	// KVResource is azure-pg-mi-kv as connected (with Options.KeyVault).
	KVResource client.ResourceStatus
}

// Start builds the installation. On error everything started so far is stopped.
func Start(ctx context.Context, opt Options) (env *Env, err error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Env{dir: opt.Dir}
	if e.dir == "" {
		if e.dir, err = os.MkdirTemp("", "ferry-demo-"); err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		e.ownsDir = true
	}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	emuCfg := azureemu.Config{
		Users:          []azureemu.Identity{{ClientID: ClientID, ObjectID: ObjectID, DisplayName: IdentityName}},
		SingleServer:   opt.SingleServer,
		TokenLifetime:  opt.TokenLifetime,
		MaxConnections: opt.MaxConnections,
		Logger:         log.With("component", "azureemu"),
	}
	if opt.Nodes > 1 {
		// The catalog database's server accepts the tokens of this emulator's IMDS.
		if emuCfg.SigningKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		emuCfg.Users = append(emuCfg.Users, CatalogIdentity)
	}
	e.Emu, err = azureemu.Start(ctx, emuCfg)
	if err != nil {
		return nil, fmt.Errorf("demo: start Azure emulator: %w", err)
	}
	if err := e.Emu.CreatePrincipal(ctx, Role, ObjectID); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if err := e.Emu.CreateDatabase(ctx, Database, Role); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	cfg := NodeConfig(e.Emu)
	if opt.Nodes > 1 {
		e.CatalogDB, err = StartCatalogDB(ctx, azureemu.Config{
			SigningKey: emuCfg.SigningKey, TenantID: e.Emu.TenantID(), System: e.Emu.System(),
			Logger: log.With("component", "azureemu", "server", CatalogServer),
		})
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		WithCatalog(&cfg, e.CatalogDB)
	}
	if opt.NodeConfig != nil {
		opt.NodeConfig(&cfg)
	}
	for i := range max(opt.Nodes, 1) {
		dir := filepath.Join(e.dir, "node")
		if i > 0 {
			dir = filepath.Join(e.dir, fmt.Sprintf("node-%d", i+1))
		}
		ncfg := cfg
		if opt.Nodes > 1 {
			ncfg.Name = fmt.Sprintf("node-%d", i+1) // node names are unique in a deployment
		}
		if err := initNode(ctx, dir, ncfg, i == 0); err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		nlog := log.With("component", "node")
		if opt.Nodes > 1 {
			nlog = nlog.With("node", ncfg.Name)
		}
		n, err := node.Start(ctx, dir, ncfg, nlog)
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		e.Nodes, e.NodeDirs = append(e.Nodes, n), append(e.NodeDirs, dir)
	}
	e.Node, e.NodeDir = e.Nodes[0], e.NodeDirs[0]
	tok, err := e.Node.EnrollToken(ctx, node.DefaultAdmin)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	c, err := StartAdminClient(ctx, e.dir, e.Emu, tok, opt)
	if err != nil {
		return nil, err
	}
	e.Daemon, e.Dirs, e.Resource, e.KVResource = c.Daemon, c.Dirs, c.Resource, c.KVResource
	return e, nil
}

// StartAdminClient enrolls the demo's client with token (the first admin's, issued by a node whose
// config came from NodeConfig(emu)) keeping its state under dir (client, run), runs its daemon in
// this process, and, unless opt.NoResource, adds and connects azure-pg-mi-prod (and with
// opt.KeyVault the secret store demo-kv and azure-pg-mi-kv) on emu's server. On error the daemon
// is stopped; otherwise Close stops it.
func StartAdminClient(ctx context.Context, dir string, emu *azureemu.Emulator, token string, opt Options) (c AdminClient, err error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c.Dirs = client.Dirs{Config: filepath.Join(dir, "client"), Runtime: filepath.Join(dir, "run")}
	if _, err := client.Login(ctx, c.Dirs, token, "demo"); err != nil {
		return c, fmt.Errorf("demo: %w", err)
	}
	if c.Daemon, err = client.StartDaemon(ctx, c.Dirs, log.With("component", "client")); err != nil {
		return c, fmt.Errorf("demo: %w", err)
	}
	defer func() {
		if err != nil {
			_ = c.Daemon.Close()
			c.Daemon = nil
		}
	}()
	if opt.NoResource {
		return c, nil
	}
	r := resource.New(ResourceName)
	r.Hostname = emu.Hostname()
	r.Database = Database
	r.Username = Role
	r.ManagedIdentityClientID = ClientID
	r.Subdomain = ResourceName
	r.BindInterface = opt.LoopbackIP
	r.UseAzureSingleServerUsernames = opt.SingleServer
	r.PortOverride = opt.LoopbackPort
	r.Tags = map[string]string{"env": "production", "team": "data"}
	if _, err := c.Daemon.API().AddDatasource(ctx, r); err != nil {
		return c, fmt.Errorf("demo: add %s: %w", ResourceName, err)
	}
	if c.Resource, err = c.Daemon.Connect(ctx, ResourceName); err != nil {
		return c, fmt.Errorf("demo: %w", err)
	}
	if opt.KeyVault {
		if err := c.addKeyVault(ctx, emu, opt); err != nil {
			return c, fmt.Errorf("demo: %w", err)
		}
	}
	return c, nil
}

// Close stops the client's daemon.
func (c *AdminClient) Close() error {
	if c.Daemon == nil {
		return nil
	}
	return c.Daemon.Close()
}

// initNode makes a node's state in dir. The first node of a shared catalog (or the single node)
// makes the catalog and its first admin; the others join it (ferry-node init --join).
func initNode(ctx context.Context, dir string, cfg node.Config, first bool) error {
	if first || cfg.CatalogURL == "" {
		_, err := node.Init(ctx, dir, cfg, node.DefaultAdmin)
		return err
	}
	return node.Join(ctx, dir, cfg)
}

// addKeyVault puts the login of azure-pg-mi-prod's identity into the emulator's Key Vault, lets the
// VM's system-assigned identity read it, and adds the store and azure-pg-mi-kv reading from it.
func (c *AdminClient) addKeyVault(ctx context.Context, emu *azureemu.Emulator, opt Options) error {
	login, err := json.Marshal(map[string]string{"user": Role, "client": ClientID})
	if err != nil {
		return err
	}
	if _, err := emu.SetSecret(VaultName, "pg-login", string(login)); err != nil {
		return err
	}
	emu.GrantSecretsUser(VaultName, emu.System().ObjectID)
	st, err := c.Daemon.API().AddSecretStore(ctx, resource.SecretStore{Name: KVStoreName, Type: resource.SecretStoreTypeAzureKeyVault, VaultURI: emu.VaultURI(VaultName)})
	if err != nil {
		return fmt.Errorf("add secret store %s: %w", KVStoreName, err)
	}
	r := resource.New(KVResourceName)
	r.Hostname = emu.Hostname()
	r.Database = Database
	r.SecretStoreID, r.UsernamePath, r.ManagedIdentityClientIDPath = st.ID, "pg-login?key=user", "pg-login?key=client"
	r.Subdomain = KVResourceName
	r.BindInterface = opt.LoopbackIP
	r.UseAzureSingleServerUsernames = opt.SingleServer
	r.Tags = map[string]string{"env": "production", "team": "data"}
	if _, err := c.Daemon.API().AddDatasource(ctx, r); err != nil {
		return fmt.Errorf("add %s: %w", KVResourceName, err)
	}
	if c.KVResource, err = c.Daemon.Connect(ctx, KVResourceName); err != nil {
		return err
	}
	return nil
}

// EnvLine is the shell command that makes the ferry CLI talk to this demo's daemon (EnvLine).
func (e *Env) EnvLine() string { return EnvLine(e.Dirs) }

// EnvLine is the shell command that makes the ferry CLI use the client state in d: an export of
// FERRY_CONFIG_DIR and FERRY_RUNTIME_DIR, quoted so that it can be pasted into a POSIX shell as is.
func EnvLine(d client.Dirs) string {
	return "export " + client.EnvConfigDir + "=" + shellQuote(d.Config) + " " + client.EnvRuntimeDir + "=" + shellQuote(d.Runtime)
}

// shellQuote quotes s for a POSIX shell, leaving it bare when it holds only characters no shell
// treats specially.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/@+,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Close stops everything and removes the demo's directory when Start made it.
func (e *Env) Close() error {
	var errs []error
	if e.Daemon != nil {
		errs = append(errs, e.Daemon.Close())
	}
	for _, n := range e.Nodes {
		errs = append(errs, n.Close())
	}
	if e.CatalogDB != nil {
		errs = append(errs, e.CatalogDB.Close())
	}
	if e.Emu != nil {
		errs = append(errs, e.Emu.Close())
	}
	if e.ownsDir {
		errs = append(errs, os.RemoveAll(e.dir))
	}
	return errors.Join(errs...)
}
