package catalog

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/resource"
)

// UserInfo is a user as administrators see it.
type UserInfo struct {
	User
	Roles     []string
	Devices   int
	CreatedAt time.Time
}

// Users lists every user, sorted by name.
func (c *Catalog) Users(ctx context.Context) ([]UserInfo, error) {
	return c.queryUsers(ctx, "")
}

// queryUsers lists users (table alias u) with an optional WHERE clause and its arguments, by name.
func (c *Catalog) queryUsers(ctx context.Context, where string, args ...any) ([]UserInfo, error) {
	rows, err := c.db.QueryContext(ctx, c.db.Rebind(`SELECT u.name, u.admin, u.suspended, u.created_at,
		(SELECT count(*) FROM devices d WHERE d.user_name = u.name),
		COALESCE((SELECT string_agg(r.role, ',' ORDER BY r.role) FROM user_roles r WHERE r.user_name = u.name), '')
		FROM users u `+where+` ORDER BY u.name`), args...)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	var out []UserInfo
	for rows.Next() {
		var u UserInfo
		var at int64
		var roles string
		if err := rows.Scan(&u.Name, &u.Admin, &u.Suspended, &at, &u.Devices, &roles); err != nil {
			return nil, fmt.Errorf("list users: %w", err)
		}
		u.CreatedAt = time.Unix(at, 0).UTC()
		if roles != "" {
			u.Roles = strings.Split(roles, ",")
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// UserInfo returns one user; it wraps ErrNotFound.
func (c *Catalog) UserInfo(ctx context.Context, name string) (UserInfo, error) {
	us, err := c.queryUsers(ctx, `WHERE u.name = ?`, name)
	if err != nil {
		return UserInfo{}, err
	}
	if len(us) == 0 {
		return UserInfo{}, fmt.Errorf("user %q: %w", name, ErrNotFound)
	}
	return us[0], nil
}

// execOne runs one write (query with ? placeholders) that must change a row, in a transaction that
// announces the change (Catalog.write). A unique violation wraps ErrConflict; a missing row, or one
// a foreign key names, ErrNotFound.
func (c *Catalog) execOne(ctx context.Context, what string, query string, args ...any) error {
	errNone := errors.New("no row changed")
	err := c.write(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, c.db.Rebind(query), args...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errNone
		}
		return nil
	})
	switch {
	case err == nil:
		return nil
	case store.IsConflict(err):
		return fmt.Errorf("%s: %w", what, ErrConflict)
	case store.IsForeignKeyViolation(err), errors.Is(err, errNone):
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// SetSuspended suspends or reinstates a user; it wraps ErrNotFound.
func (c *Catalog) SetSuspended(ctx context.Context, name string, suspended bool) error {
	return c.execOne(ctx, "suspend user "+name, `UPDATE users SET suspended = ? WHERE name = ?`, suspended, name)
}

// DeleteUser deletes a user with its devices, role memberships and enrollment tokens.
func (c *Catalog) DeleteUser(ctx context.Context, name string) error {
	return c.execOne(ctx, "delete user "+name, `DELETE FROM users WHERE name = ?`, name)
}

// DevicesOf lists a user's devices.
func (c *Catalog) DevicesOf(ctx context.Context, user string) ([]Device, error) {
	return c.queryDevices(ctx, `WHERE d.user_name = ?`, user)
}

// DeviceByAddress returns the device with tunnel address addr; it wraps ErrNotFound.
func (c *Catalog) DeviceByAddress(ctx context.Context, addr netip.Addr) (Device, error) {
	ds, err := c.queryDevices(ctx, `WHERE d.address = ?`, addr.String())
	if err != nil {
		return Device{}, err
	}
	if len(ds) == 0 {
		return Device{}, fmt.Errorf("device %s: %w", addr, ErrNotFound)
	}
	return ds[0], nil
}

// DeviceByPublicKey returns the device with WireGuard public key publicKey (base64); it wraps
// ErrNotFound.
func (c *Catalog) DeviceByPublicKey(ctx context.Context, publicKey string) (Device, error) {
	ds, err := c.queryDevices(ctx, `WHERE d.public_key = ?`, publicKey)
	if err != nil {
		return Device{}, err
	}
	if len(ds) == 0 {
		return Device{}, fmt.Errorf("device with key %s: %w", publicKey, ErrNotFound)
	}
	return ds[0], nil
}

// DeleteDevice removes a device by its WireGuard public key; it wraps ErrNotFound.
func (c *Catalog) DeleteDevice(ctx context.Context, publicKey string) error {
	return c.execOne(ctx, "delete device", `DELETE FROM devices WHERE public_key = ?`, publicKey)
}

// Grant is what a role grants: one resource by name, or every resource whose tags match a tag
// expression ("tag:env=dev").
type Grant string

// IsTag reports whether the grant is a tag expression.
func (g Grant) IsTag() bool { return strings.HasPrefix(string(g), "tag:") }

// Validate checks a grant's form.
func (g Grant) Validate() error {
	if strings.TrimSpace(string(g)) == "" {
		return errors.New("a grant is a resource name or a tag expression such as tag:env=dev")
	}
	if g.IsTag() {
		if _, err := resource.ParseTagFilter(string(g)); err != nil {
			return fmt.Errorf("grant %q: %w", g, err)
		}
	}
	return nil
}

// Matches reports whether the grant covers resource r.
func (g Grant) Matches(r resource.Resource) bool {
	if !g.IsTag() {
		return string(g) == r.Name
	}
	f, err := resource.ParseTagFilter(string(g))
	return err == nil && f.Match(r.Tags)
}

// Role is a named set of grants held by users.
type Role struct {
	Name   string
	Grants []Grant
	Users  []string
}

// AddRole creates a role; a taken name wraps ErrConflict.
func (c *Catalog) AddRole(ctx context.Context, name string) error {
	if strings.TrimSpace(name) == "" || strings.ContainsAny(name, "\"<>,") {
		return fmt.Errorf("add role: %q is not a valid role name", name)
	}
	err := c.write(ctx, func(tx *store.Tx) error {
		_, err := tx.ExecContext(ctx, c.db.Rebind(`INSERT INTO roles(name, created_at) VALUES(?, ?)`), name, time.Now().Unix())
		return err
	})
	if store.IsConflict(err) {
		return fmt.Errorf("add role: a role named %q %w", name, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("add role %s: %w", name, err)
	}
	return nil
}

// DeleteRole deletes a role, its grants and its memberships.
func (c *Catalog) DeleteRole(ctx context.Context, name string) error {
	return c.execOne(ctx, "delete role "+name, `DELETE FROM roles WHERE name = ?`, name)
}

// Roles lists every role with its grants and users, sorted by name.
func (c *Catalog) Roles(ctx context.Context) ([]Role, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT name FROM roles ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list roles: %w", err)
	}
	var out []Role
	idx := map[string]int{}
	for rows.Next() {
		var r Role
		if err := rows.Scan(&r.Name); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list roles: %w", err)
		}
		idx[r.Name] = len(out)
		out = append(out, r)
	}
	rows.Close()
	if err := c.collect(ctx, `SELECT role, grant_expr FROM role_grants ORDER BY grant_expr`, func(role, v string) {
		if i, ok := idx[role]; ok {
			out[i].Grants = append(out[i].Grants, Grant(v))
		}
	}); err != nil {
		return nil, err
	}
	if err := c.collect(ctx, `SELECT role, user_name FROM user_roles ORDER BY user_name`, func(role, v string) {
		if i, ok := idx[role]; ok {
			out[i].Users = append(out[i].Users, v)
		}
	}); err != nil {
		return nil, err
	}
	return out, nil
}

func (c *Catalog) collect(ctx context.Context, query string, add func(a, b string)) error {
	rows, err := c.db.QueryContext(ctx, query)
	if err != nil {
		return fmt.Errorf("list roles: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var a, b string
		if err := rows.Scan(&a, &b); err != nil {
			return fmt.Errorf("list roles: %w", err)
		}
		add(a, b)
	}
	return rows.Err()
}

// GrantToRole adds a grant to a role. Granting a resource name that does not exist yet is allowed
// (it takes effect when the resource is created).
func (c *Catalog) GrantToRole(ctx context.Context, role string, g Grant) error {
	if err := g.Validate(); err != nil {
		return err
	}
	return c.execOne(ctx, fmt.Sprintf("grant %s to role %s", g, role), `INSERT INTO role_grants(role, grant_expr) VALUES(?, ?)`, role, string(g))
}

// RevokeFromRole removes a grant from a role; it wraps ErrNotFound.
func (c *Catalog) RevokeFromRole(ctx context.Context, role string, g Grant) error {
	return c.execOne(ctx, fmt.Sprintf("revoke %s from role %s", g, role), `DELETE FROM role_grants WHERE role = ? AND grant_expr = ?`, role, string(g))
}

// AssignRole gives a user a role.
func (c *Catalog) AssignRole(ctx context.Context, role, user string) error {
	return c.execOne(ctx, fmt.Sprintf("assign role %s to %s", role, user), `INSERT INTO user_roles(user_name, role) VALUES(?, ?)`, user, role)
}

// UnassignRole takes a role from a user; it wraps ErrNotFound.
func (c *Catalog) UnassignRole(ctx context.Context, role, user string) error {
	return c.execOne(ctx, fmt.Sprintf("unassign role %s from %s", role, user), `DELETE FROM user_roles WHERE user_name = ? AND role = ?`, user, role)
}

// grantsOf returns the grants of every role the user holds.
func (c *Catalog) grantsOf(ctx context.Context, user string) ([]Grant, error) {
	rows, err := c.db.QueryContext(ctx, c.db.Rebind(`SELECT g.grant_expr FROM role_grants g JOIN user_roles u ON u.role = g.role WHERE u.user_name = ?`), user)
	if err != nil {
		return nil, fmt.Errorf("read grants of %s: %w", user, err)
	}
	defer rows.Close()
	var out []Grant
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return nil, fmt.Errorf("read grants of %s: %w", user, err)
		}
		out = append(out, Grant(g))
	}
	return out, rows.Err()
}

// Access answers which resources users may reach. It is a snapshot: take a new one after changes.
type Access struct {
	user   User
	grants []Grant
}

// NewAccess is the access of user u holding grants (the grants of u's roles), for a copy of the
// catalog kept elsewhere (the node's read cache, node/catcache).
func NewAccess(u User, grants []Grant) Access {
	if u.Admin || u.Suspended {
		return Access{user: u}
	}
	return Access{user: u, grants: grants}
}

// AccessOf returns the access of user u (as returned by UserByDevice).
func (c *Catalog) AccessOf(ctx context.Context, u User) (Access, error) {
	if u.Admin || u.Suspended {
		return Access{user: u}, nil
	}
	g, err := c.grantsOf(ctx, u.Name)
	return Access{user: u, grants: g}, err
}

// Allows reports whether the user may reach r: admins reach everything, suspended users nothing,
// others what a grant of one of their roles covers.
func (a Access) Allows(r resource.Resource) bool {
	if a.user.Suspended {
		return false
	}
	if a.user.Admin {
		return true
	}
	for _, g := range a.grants {
		if g.Matches(r) {
			return true
		}
	}
	return false
}

// Activity is one record of the admin activity log.
type Activity struct {
	ID     int64
	Time   time.Time
	Actor  string
	Action string
	Target string
	Detail string
}

// RecordActivity appends to the admin activity log.
func (c *Catalog) RecordActivity(ctx context.Context, a Activity) error {
	if a.Time.IsZero() {
		a.Time = time.Now()
	}
	_, err := c.db.ExecContext(ctx, c.db.Rebind(`INSERT INTO admin_activity(time, actor, action, target, detail) VALUES(?,?,?,?,?)`),
		a.Time.UnixMilli(), a.Actor, a.Action, a.Target, a.Detail)
	if err != nil {
		return fmt.Errorf("record admin activity: %w", err)
	}
	return nil
}

// Activities returns the newest limit records of the admin activity log, newest first.
func (c *Catalog) Activities(ctx context.Context, limit int) ([]Activity, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := c.db.QueryContext(ctx, c.db.Rebind(`SELECT id, time, actor, action, target, detail FROM admin_activity ORDER BY id DESC LIMIT ?`), limit)
	if err != nil {
		return nil, fmt.Errorf("read admin activity: %w", err)
	}
	defer rows.Close()
	var out []Activity
	for rows.Next() {
		var a Activity
		var ms int64
		if err := rows.Scan(&a.ID, &ms, &a.Actor, &a.Action, &a.Target, &a.Detail); err != nil {
			return nil, fmt.Errorf("read admin activity: %w", err)
		}
		a.Time = time.UnixMilli(ms).UTC()
		out = append(out, a)
	}
	return out, rows.Err()
}

// ActiveDevices returns the devices whose users are not suspended: the node's WireGuard peers.
func (c *Catalog) ActiveDevices(ctx context.Context) ([]Device, error) {
	return c.queryDevices(ctx, `JOIN users u ON u.name = d.user_name WHERE NOT u.suspended`)
}
