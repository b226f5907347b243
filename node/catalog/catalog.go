// Package catalog is the node's store of resources, users, devices, enrollment tokens and org
// settings, kept in SQLite (modernc.org/sqlite, no cgo). Every write runs in a transaction, so
// uniqueness of names and addresses holds under concurrent admins.
package catalog

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/resource"
)

// ErrNotFound is returned (wrapped) when a named object does not exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned (wrapped) when a name or address is already taken.
var ErrConflict = errors.New("already exists")

// Catalog is the node's catalog. It is safe for concurrent use.
type Catalog struct {
	db *sql.DB
}

const schema = `
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
	name TEXT PRIMARY KEY,
	id TEXT NOT NULL UNIQUE,
	vn_address TEXT NOT NULL UNIQUE,
	loopback_address TEXT NOT NULL UNIQUE,
	subdomain TEXT NOT NULL DEFAULT '',
	data TEXT NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS resources_subdomain ON resources(subdomain) WHERE subdomain != '';
CREATE TABLE IF NOT EXISTS users (
	name TEXT PRIMARY KEY,
	admin INTEGER NOT NULL DEFAULT 0,
	suspended INTEGER NOT NULL DEFAULT 0,
	created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS roles (
	name TEXT PRIMARY KEY,
	created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS role_grants (
	role TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
	grant_expr TEXT NOT NULL,
	PRIMARY KEY (role, grant_expr)
);
CREATE TABLE IF NOT EXISTS user_roles (
	user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
	role TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
	PRIMARY KEY (user_name, role)
);
CREATE TABLE IF NOT EXISTS admin_activity (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	time INTEGER NOT NULL,
	actor TEXT NOT NULL,
	action TEXT NOT NULL,
	target TEXT NOT NULL,
	detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS devices (
	public_key TEXT PRIMARY KEY,
	user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
	address TEXT NOT NULL UNIQUE,
	name TEXT NOT NULL,
	enrolled_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS enroll_tokens (
	secret_sha256 TEXT PRIMARY KEY,
	user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
	expires_at INTEGER NOT NULL,
	used_at INTEGER
);
`

// migrations bring the catalog's schema forward: step i takes it from version i to i+1. Append new
// steps; never edit a released one.
func migrations() []string { return []string{schema, secretStoresSchema, nodesSchema} }

// Open migrates the catalog's schema forward (its version is kept in a table of its own) and
// returns the catalog.
func Open(ctx context.Context, db *sql.DB) (*Catalog, error) {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS catalog_schema (version INTEGER NOT NULL)`); err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	var version int
	err := db.QueryRowContext(ctx, `SELECT version FROM catalog_schema`).Scan(&version)
	if errors.Is(err, sql.ErrNoRows) {
		_, err = db.ExecContext(ctx, `INSERT INTO catalog_schema(version) VALUES(0)`)
	}
	if err != nil {
		return nil, fmt.Errorf("open catalog: read schema version: %w", err)
	}
	steps := migrations()
	if version > len(steps) {
		return nil, fmt.Errorf("open catalog: its schema version %d is newer than this ferry-node knows (%d); run a newer ferry-node", version, len(steps))
	}
	for v := version; v < len(steps); v++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return nil, fmt.Errorf("open catalog: migrate to %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, steps[v]); err != nil {
			tx.Rollback()
			return nil, fmt.Errorf("open catalog: migrate to %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE catalog_schema SET version = ?`, v+1); err != nil {
			tx.Rollback()
			return nil, fmt.Errorf("open catalog: migrate to %d: %w", v+1, err)
		}
		if err := tx.Commit(); err != nil {
			return nil, fmt.Errorf("open catalog: migrate to %d: %w", v+1, err)
		}
	}
	return &Catalog{db: db}, nil
}

// Setting keys.
const (
	SettingVNSubnet    = "vn_subnet"
	SettingDefaultMode = "connectivity_mode"
	SettingDNSDomain   = "dns_domain"
)

// DefaultDNSDomain is the org domain resource aliases live under unless changed.
const DefaultDNSDomain = "ferry.internal"

// SettingLoopbackRange is the key of the loopback range setting.
const SettingLoopbackRange = "loopback_range"

// Setting returns a setting's value, or def when it is not set.
func (c *Catalog) Setting(ctx context.Context, key, def string) (string, error) {
	var v string
	err := c.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return def, nil
	}
	if err != nil {
		return "", fmt.Errorf("read setting %s: %w", key, err)
	}
	return v, nil
}

// SetSetting stores a setting.
func (c *Catalog) SetSetting(ctx context.Context, key, value string) error {
	_, err := c.db.ExecContext(ctx, `INSERT INTO settings(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`, key, value)
	if err != nil {
		return fmt.Errorf("store setting %s: %w", key, err)
	}
	return nil
}

// VNSubnet returns the org's virtual networking subnet (default 100.64.0.0/10).
func (c *Catalog) VNSubnet(ctx context.Context) (netip.Prefix, error) {
	v, err := c.Setting(ctx, SettingVNSubnet, resource.DefaultVNSubnet.String())
	if err != nil {
		return netip.Prefix{}, err
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read setting %s: %q is not a subnet: %w", SettingVNSubnet, v, err)
	}
	return p, nil
}

var userNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`)

// User is a person who may enroll devices. Admin is the admin permission level: it gates every admin
// API call and reaches every resource.
type User struct {
	Name      string
	Admin     bool
	Suspended bool
}

// AddUser creates a user; a taken name wraps ErrConflict.
func (c *Catalog) AddUser(ctx context.Context, name string, admin bool) error {
	if !userNameRE.MatchString(name) {
		return fmt.Errorf("add user: %q is not a valid user name (letters, digits and . _ @ -, starting with a letter or digit)", name)
	}
	_, err := c.db.ExecContext(ctx, `INSERT INTO users(name, admin, created_at) VALUES(?,?,?)`, name, admin, time.Now().Unix())
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return fmt.Errorf("add user: a user named %q %w", name, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("add user %s: %w", name, err)
	}
	return nil
}

// CreateEnrollToken issues a single-use enrollment secret for user, valid for ttl. Only the secret's
// SHA-256 is stored.
func (c *Catalog) CreateEnrollToken(ctx context.Context, user string, ttl time.Duration) (string, error) {
	secret := randomToken()
	_, err := c.db.ExecContext(ctx, `INSERT INTO enroll_tokens(secret_sha256, user_name, expires_at) VALUES(?,?,?)`,
		sha256Hex(secret), user, time.Now().Add(ttl).Unix())
	if err != nil {
		return "", fmt.Errorf("create enrollment token for %s: %w", user, err)
	}
	return secret, nil
}

// Device is one enrolled WireGuard key of a user.
type Device struct {
	PublicKey  string
	User       string
	Address    netip.Addr // tunnel address
	Name       string
	EnrolledAt time.Time
}

// Enrollment errors a person may see.
var (
	ErrTokenUsed     = errors.New("this enrollment token has already been used; ask your administrator for a new one")
	ErrTokenExpired  = errors.New("this enrollment token has expired; ask your administrator for a new one")
	ErrTokenUnknown  = errors.New("this enrollment token is not known to the node; check that you copied it in full")
	ErrUserSuspended = errors.New("this user is suspended; ask your administrator")
)

// Enroll redeems secret for the device with WireGuard public key publicKey: the token is marked used,
// a tunnel address is allocated in api.TunnelSubnet and the device is stored. apply (may be nil)
// runs inside the transaction with the new device, before it commits: it makes the device a
// WireGuard peer, and when it fails nothing is stored and the token stays unused. Errors:
// ErrBadDeviceName, ErrTokenUnknown, ErrTokenUsed, ErrTokenExpired, ErrUserSuspended (wrapped),
// a conflict when the key is already enrolled, or apply's error. The caller checks the key itself
// (the catalog does not know the node's key).
func (c *Catalog) Enroll(ctx context.Context, secret, publicKey, deviceName string, apply func(Device) error) (Device, User, error) {
	var d Device
	var u User
	if err := ValidateDeviceName(deviceName); err != nil {
		return d, u, fmt.Errorf("enroll: %w", err)
	}
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return d, u, fmt.Errorf("enroll: %w", err)
	}
	defer tx.Rollback()
	var expires int64
	var used sql.NullInt64
	err = tx.QueryRowContext(ctx, `SELECT user_name, expires_at, used_at FROM enroll_tokens WHERE secret_sha256 = ?`, sha256Hex(secret)).Scan(&u.Name, &expires, &used)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return d, u, fmt.Errorf("enroll: %w", ErrTokenUnknown)
	case err != nil:
		return d, u, fmt.Errorf("enroll: %w", err)
	case used.Valid:
		return d, u, fmt.Errorf("enroll: %w", ErrTokenUsed)
	case time.Now().Unix() > expires:
		return d, u, fmt.Errorf("enroll: %w", ErrTokenExpired)
	}
	if err := tx.QueryRowContext(ctx, `SELECT admin, suspended FROM users WHERE name = ?`, u.Name).Scan(&u.Admin, &u.Suspended); err != nil {
		return d, u, fmt.Errorf("enroll: user %s: %w", u.Name, err)
	}
	if u.Suspended {
		return d, u, fmt.Errorf("enroll: %w", ErrUserSuspended)
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM devices WHERE public_key = ?`, publicKey).Scan(&n); err != nil {
		return d, u, fmt.Errorf("enroll: %w", err)
	}
	if n > 0 {
		return d, u, fmt.Errorf("enroll: this device key %w; log out first or use a new key", ErrConflict)
	}
	taken := map[netip.Addr]bool{}
	rows, err := tx.QueryContext(ctx, `SELECT address FROM devices`)
	if err != nil {
		return d, u, fmt.Errorf("enroll: %w", err)
	}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err == nil {
			if ip, err := netip.ParseAddr(a); err == nil {
				taken[ip] = true
			}
		}
	}
	rows.Close()
	for ip := api.NodeTunnelAddress.Next(); api.TunnelSubnet.Contains(ip); ip = ip.Next() {
		if !taken[ip] {
			d.Address = ip
			break
		}
	}
	if !d.Address.IsValid() {
		return d, u, fmt.Errorf("enroll: no tunnel address left in %s", api.TunnelSubnet)
	}
	d.PublicKey, d.User, d.Name, d.EnrolledAt = publicKey, u.Name, deviceName, time.Now().UTC()
	if _, err := tx.ExecContext(ctx, `INSERT INTO devices(public_key, user_name, address, name, enrolled_at) VALUES(?,?,?,?,?)`,
		d.PublicKey, d.User, d.Address.String(), d.Name, d.EnrolledAt.Unix()); err != nil {
		return d, u, fmt.Errorf("enroll: store device: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE enroll_tokens SET used_at = ? WHERE secret_sha256 = ?`, time.Now().Unix(), sha256Hex(secret)); err != nil {
		return d, u, fmt.Errorf("enroll: mark token used: %w", err)
	}
	if apply != nil {
		if err := apply(d); err != nil {
			return d, u, fmt.Errorf("enroll: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return d, u, fmt.Errorf("enroll: commit: %w", err)
	}
	return d, u, nil
}

// Devices returns every enrolled device.
func (c *Catalog) Devices(ctx context.Context) ([]Device, error) {
	return c.queryDevices(ctx, "")
}

// queryDevices lists devices (table alias d) with an optional JOIN/WHERE clause and its arguments,
// by address.
func (c *Catalog) queryDevices(ctx context.Context, clause string, args ...any) ([]Device, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT d.public_key, d.user_name, d.address, d.name, d.enrolled_at FROM devices d `+clause+` ORDER BY d.address`, args...)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		var d Device
		var addr string
		var at int64
		if err := rows.Scan(&d.PublicKey, &d.User, &addr, &d.Name, &at); err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		d.Address, _ = netip.ParseAddr(addr)
		d.EnrolledAt = time.Unix(at, 0).UTC()
		out = append(out, d)
	}
	return out, rows.Err()
}

// UserByDevice returns the user owning the device with tunnel address addr; it wraps ErrNotFound.
func (c *Catalog) UserByDevice(ctx context.Context, addr netip.Addr) (User, error) {
	var u User
	err := c.db.QueryRowContext(ctx, `SELECT u.name, u.admin, u.suspended FROM devices d JOIN users u ON u.name = d.user_name WHERE d.address = ?`, addr.String()).Scan(&u.Name, &u.Admin, &u.Suspended)
	if errors.Is(err, sql.ErrNoRows) {
		return u, fmt.Errorf("look up device %s: %w", addr, ErrNotFound)
	}
	if err != nil {
		return u, fmt.Errorf("look up device %s: %w", addr, err)
	}
	return u, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func sha256Hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}
