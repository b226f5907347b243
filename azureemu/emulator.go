// Package azureemu emulates, on loopback, the Azure services Ferry talks to:
//
//   - the Azure Instance Metadata Service (IMDS) managed identity token endpoint,
//     GET /metadata/identity/oauth2/token (api-version 2018-02-01), issuing RS256
//     JWT access tokens shaped like Microsoft Entra ID v1 app tokens; and
//   - an Azure Database for PostgreSQL style front: a TLS listener that demands
//     TLS, asks for a cleartext password, accepts only a valid access token for a
//     mapped principal (like pgaadauth_create_principal), and then joins the
//     session to a real PostgreSQL server started from the installed binaries,
//     listening only on a unix socket in the emulator's temp dir; and
//   - Azure Key Vault's secrets (keyvault.go): GET {vault}/secrets/{name}[/{version}] over TLS
//     for *.vault.azure.net, with the bearer challenge, per-identity access, versions, disabled
//     secrets, throttling and outages.
//
// It exists for tests and the demo. Nothing it does leaves loopback.
package azureemu

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/ferryhq/ferry/internal/pgserver"
)

// Resource is the resource URI (and JWT audience) of Azure Database for
// PostgreSQL in Microsoft Entra ID; IMDS is asked for it with
// resource=https://ossrdbms-aad.database.windows.net and the server accepts
// only tokens whose aud claim equals it.
const Resource = "https://ossrdbms-aad.database.windows.net"

// hostSuffix is the DNS suffix of Azure Database for PostgreSQL servers
// (<servername>.postgres.database.azure.com).
const hostSuffix = ".postgres.database.azure.com"

// Identity is a managed identity: its client ID (the appid claim and the IMDS
// client_id parameter), its object ID (the oid claim, which the server maps to
// a role) and its display name. IDs are UUIDs in their canonical text form.
type Identity struct {
	ClientID, ObjectID, DisplayName string
}

// IMDSRequest records one request the IMDS endpoint answered: when, the
// client_id it named ("" for the system-assigned identity), the resource
// parameter as sent, and the HTTP status code of the answer.
type IMDSRequest struct {
	Time     time.Time
	ClientID string
	Resource string
	Status   int
}

// Config configures an Emulator. The zero value is usable.
type Config struct {
	TenantID      string        // Entra ID tenant (tid claim, issuer); default: random UUID
	System        Identity      // system-assigned identity; empty fields are generated (DisplayName "ferry-vm")
	Users         []Identity    // user-assigned identities
	TokenLifetime time.Duration // lifetime of issued tokens; default 1h
	ServerName    string        // server name; default "mypg" -> hostname "mypg.postgres.database.azure.com"
	SingleServer  bool          // Single Server mode: the startup user must be "role@servername"
	PGBinDir      string        // directory holding initdb and postgres; default: auto-detect
	// MaxConnections is the real server's max_connections; default 100. Load tests through the
	// front need more (each front session is one backend).
	MaxConnections int
	Logger         *slog.Logger // default: discard
	// ListenIP is the address the IMDS endpoint, the PostgreSQL front and the Key Vault listen on;
	// default 127.0.0.1. A multi-host test starts the emulator inside a network namespace of its
	// lab and gives the namespace's address here, so that the other hosts reach it.
	ListenIP string

	// SigningKey signs issued tokens; default: a fresh 2048-bit RSA key.
	// Emulators in one process that share a key, TenantID and System identity
	// accept each other's tokens, which matters because MSAL caches
	// managed identity tokens process-wide.
	SigningKey *rsa.PrivateKey
}

// Emulator is a running IMDS endpoint plus PostgreSQL front. Start makes one,
// Close stops it. All methods are safe for concurrent use.
type Emulator struct {
	cfg      Config
	log      *slog.Logger
	tempDir  string
	hostname string
	issuer   string
	keyID    string
	key      *rsa.PrivateKey

	imdsLn  net.Listener
	imdsSrv *http.Server

	pg *pgserver.Server

	ca    *authority
	front *front
	vault *vaultServer

	mu         sync.Mutex
	system     Identity
	users      map[string]Identity // by client ID
	principals map[string]string   // object ID -> role
	requests   []IMDSRequest
	issued     []string // access tokens IMDS handed out
	outage     bool
	tokenFault TokenFault
	imdsFault  IMDSFault
	revoked    map[string]bool // tokens the front refuses as expired although still valid

	closeOnce sync.Once
	closeErr  error
}

// Start starts the emulator: the IMDS endpoint on 127.0.0.1 (Config.ListenIP), a fresh
// PostgreSQL cluster (initdb into a temp dir; as an unprivileged user when
// running as root) and the TLS front on 127.0.0.1 (Config.ListenIP). ctx bounds the startup only.
func Start(ctx context.Context, cfg Config) (*Emulator, error) {
	e, err := newEmulator(cfg)
	if err != nil {
		return nil, err
	}
	if err := e.start(ctx); err != nil {
		_ = e.Close()
		return nil, err
	}
	return e, nil
}

func newEmulator(cfg Config) (*Emulator, error) {
	if cfg.TenantID == "" {
		cfg.TenantID = uuid.NewString()
	}
	if cfg.TokenLifetime <= 0 {
		cfg.TokenLifetime = time.Hour
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "mypg"
	}
	if strings.ContainsAny(cfg.ServerName, "./@ ") {
		return nil, fmt.Errorf("start azure emulator: server name %q must be a single DNS label", cfg.ServerName)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ListenIP == "" {
		cfg.ListenIP = "127.0.0.1"
	}
	if net.ParseIP(cfg.ListenIP) == nil {
		return nil, fmt.Errorf("start azure emulator: listen IP %q is not an IP address", cfg.ListenIP)
	}
	sys := cfg.System
	if sys.ClientID == "" {
		sys.ClientID = uuid.NewString()
	}
	if sys.ObjectID == "" {
		sys.ObjectID = uuid.NewString()
	}
	if sys.DisplayName == "" {
		sys.DisplayName = "ferry-vm"
	}
	key := cfg.SigningKey
	if key == nil {
		var err error
		key, err = rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("start azure emulator: generate token signing key: %w", err)
		}
	}
	e := &Emulator{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "azureemu"),
		hostname:   cfg.ServerName + hostSuffix,
		issuer:     "https://sts.windows.net/" + cfg.TenantID + "/",
		keyID:      keyID(&key.PublicKey),
		key:        key,
		system:     sys,
		users:      make(map[string]Identity),
		principals: make(map[string]string),
		revoked:    make(map[string]bool),
	}
	for _, id := range cfg.Users {
		e.AddUserIdentity(id)
	}
	return e, nil
}

func (e *Emulator) start(ctx context.Context) error {
	dir, err := makeTempDir()
	if err != nil {
		return fmt.Errorf("start azure emulator: %w", err)
	}
	e.tempDir = dir

	if err := e.startIMDS(); err != nil {
		return fmt.Errorf("start azure emulator: %w", err)
	}
	e.ca, err = newAuthority(dir, e.hostname)
	if err != nil {
		return fmt.Errorf("start azure emulator: %w", err)
	}
	if err := e.startVault(); err != nil {
		return fmt.Errorf("start azure emulator: %w", err)
	}
	e.pg, err = startPostgres(ctx, e.log, e.cfg.PGBinDir, dir, e.cfg.MaxConnections)
	if err != nil {
		return fmt.Errorf("start azure emulator: %w", err)
	}
	e.front, err = startFront(e)
	if err != nil {
		return fmt.Errorf("start azure emulator: %w", err)
	}
	e.log.Info("azure emulator started", "imds", e.IMDSEndpoint(), "postgres", e.Addr(), "hostname", e.hostname, "tenant", e.cfg.TenantID)
	return nil
}

// Close stops the front, PostgreSQL and IMDS, and removes the temp dir.
// It is idempotent.
func (e *Emulator) Close() error {
	e.closeOnce.Do(func() {
		var errs []error
		if e.front != nil {
			e.front.close()
		}
		e.closeVault()
		if e.imdsSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := e.imdsSrv.Shutdown(ctx); err != nil {
				_ = e.imdsSrv.Close()
			}
			cancel()
		}
		if e.pg != nil {
			if err := e.pg.Stop(); err != nil {
				errs = append(errs, err)
			}
		}
		if e.tempDir != "" {
			if err := os.RemoveAll(e.tempDir); err != nil {
				errs = append(errs, fmt.Errorf("remove temp dir: %w", err))
			}
		}
		if err := errors.Join(errs...); err != nil {
			e.closeErr = fmt.Errorf("close azure emulator: %w", err)
		}
	})
	return e.closeErr
}

// IMDSEndpoint is the scheme and host of the IMDS endpoint, e.g.
// "http://127.0.0.1:41234" (Config.ListenIP; no path); the token path is
// /metadata/identity/oauth2/token as on 169.254.169.254.
func (e *Emulator) IMDSEndpoint() string { return "http://" + e.imdsLn.Addr().String() }

// Hostname is the server's DNS name, "<servername>.postgres.database.azure.com",
// which the front's certificate names. It does not resolve: dial Addr.
func (e *Emulator) Hostname() string { return e.hostname }

// Addr is "127.0.0.1:PORT" (Config.ListenIP) of the TLS PostgreSQL front.
func (e *Emulator) Addr() string { return e.front.ln.Addr().String() }

// ServerName is the first label of Hostname (the Single Server user suffix).
func (e *Emulator) ServerName() string { return e.cfg.ServerName }

// TenantID is the Entra ID tenant of issued tokens.
func (e *Emulator) TenantID() string { return e.cfg.TenantID }

// CACertPEM is the PEM-encoded certificate of the emulator's CA, which signs
// the front's server certificate.
func (e *Emulator) CACertPEM() []byte { return e.ca.certPEM }

// CACertFile is the path of a file holding CACertPEM (for sslrootcert).
func (e *Emulator) CACertFile() string { return e.ca.certFile }

// System is the system-assigned managed identity.
func (e *Emulator) System() Identity {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.system
}

// AddUserIdentity assigns a user-assigned managed identity to the emulated VM.
// Empty ClientID or ObjectID are not generated: give both.
func (e *Emulator) AddUserIdentity(id Identity) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.users[strings.ToLower(id.ClientID)] = id
}

// identityFor finds the identity IMDS should issue for: the system-assigned
// one when clientID and objectID are empty, else the user-assigned identity
// with that client ID or object ID.
func (e *Emulator) identityFor(clientID, objectID string) (Identity, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case clientID != "":
		id, ok := e.users[strings.ToLower(clientID)]
		return id, ok
	case objectID != "":
		for _, id := range e.users {
			if strings.EqualFold(id.ObjectID, objectID) {
				return id, true
			}
		}
		return Identity{}, false
	default:
		return e.system, true
	}
}

// roleFor returns the role mapped to a principal's object ID.
func (e *Emulator) roleFor(objectID string) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.principals[strings.ToLower(objectID)]
	return r, ok
}

// CreatePrincipal does what pgaadauth_create_principal does on Azure: it
// creates role with LOGIN on the server and maps the Entra ID object ID to it,
// so tokens whose oid claim is objectID log in as role.
func (e *Emulator) CreatePrincipal(ctx context.Context, role string, objectID string) error {
	if role == "" {
		return errors.New("create principal: empty role name")
	}
	if _, err := uuid.Parse(objectID); err != nil {
		return fmt.Errorf("create principal %q: object ID %q is not a UUID: %w", role, objectID, err)
	}
	if err := e.Exec(ctx, "CREATE ROLE "+quoteIdent(role)+" LOGIN"); err != nil {
		return fmt.Errorf("create principal %q: %w", role, err)
	}
	e.mu.Lock()
	e.principals[strings.ToLower(objectID)] = role
	e.mu.Unlock()
	return nil
}

// CreateDatabase creates database name owned by role owner.
func (e *Emulator) CreateDatabase(ctx context.Context, name, owner string) error {
	sql := "CREATE DATABASE " + quoteIdent(name)
	if owner != "" {
		sql += " OWNER " + quoteIdent(owner)
	}
	if err := e.Exec(ctx, sql); err != nil {
		return fmt.Errorf("create database %q: %w", name, err)
	}
	return nil
}

// Exec runs sql (one or more statements, simple query protocol) as the
// superuser on the real server.
func (e *Emulator) Exec(ctx context.Context, sql string) error {
	return e.pg.Exec(ctx, sql)
}

// SuperuserConnString is a libpq/pgx keyword/value connection string that
// reaches the real server as its superuser over the unix socket (no TLS,
// trust auth), bypassing the front.
func (e *Emulator) SuperuserConnString() string { return e.pg.ConnString("postgres") }

// IMDSRequests returns a copy of the requests IMDS has answered, oldest first.
func (e *Emulator) IMDSRequests() []IMDSRequest {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]IMDSRequest(nil), e.requests...)
}

// IssuedTokens returns every access token IMDS has handed out, oldest first: for tests that check
// where tokens travel.
func (e *Emulator) IssuedTokens() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.issued...)
}

// SetIMDSOutage turns an IMDS outage on or off. While on, every token request
// gets HTTP 503 with an IMDS-style error body, as IMDS answers while it is
// unavailable or being updated.
func (e *Emulator) SetIMDSOutage(on bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.outage = on
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
