package api

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// User is a Ferry user as administrators see it (GET /v1/admin/users).
type User struct {
	Name      string    `json:"name"`
	Admin     bool      `json:"admin"`
	Suspended bool      `json:"suspended"`
	Roles     []string  `json:"roles"`
	Devices   int       `json:"devices"`
	CreatedAt time.Time `json:"created_at"`
}

// NewUser is the body of POST /v1/admin/users.
type NewUser struct {
	Name  string   `json:"name"`
	Admin bool     `json:"admin"`
	Roles []string `json:"roles,omitempty"`
}

// Device is one enrolled device of a user (GET /v1/admin/users/{name}/devices).
type Device struct {
	PublicKey     string    `json:"public_key"` // WireGuard public key, base64
	Name          string    `json:"name"`
	Address       string    `json:"address"` // tunnel address
	EnrolledAt    time.Time `json:"enrolled_at"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
}

// Role is a named set of grants (GET /v1/admin/roles). A grant is a resource name or a tag
// expression such as "tag:env=dev".
type Role struct {
	Name   string   `json:"name"`
	Grants []string `json:"grants"`
	Users  []string `json:"users"`
}

// Activity is one record of the admin activity log (GET /v1/admin/activities).
type Activity struct {
	ID     int64     `json:"id"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Target string    `json:"target"`
	Detail string    `json:"detail,omitempty"`
}

// Token is the answer to POST /v1/admin/users/{name}/enroll. ID names the token in
// EnrollTokens and CancelEnrollToken; the token itself is shown only here.
type Token struct {
	Token     string    `json:"token"`
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// PendingToken is an enrollment token not used yet (GET /v1/admin/enroll-tokens). Expired ones are
// listed until cancelled; they enroll nothing.
type PendingToken struct {
	ID        string    `json:"id"`
	User      string    `json:"user"`
	ExpiresAt time.Time `json:"expires_at"`
	Expired   bool      `json:"expired"`
}

// PendingTokenList is the answer to GET /v1/admin/enroll-tokens.
type PendingTokenList struct {
	Tokens []PendingToken `json:"tokens"`
}

// Users lists users (admin only).
func (c *Client) Users(ctx context.Context) ([]User, error) {
	var out []User
	return out, c.do(ctx, http.MethodGet, "/v1/admin/users", nil, &out)
}

// User returns one user (admin only).
func (c *Client) User(ctx context.Context, name string) (User, error) {
	var out User
	return out, c.do(ctx, http.MethodGet, "/v1/admin/users/"+url.PathEscape(name), nil, &out)
}

// AddUser creates a user (admin only).
func (c *Client) AddUser(ctx context.Context, u NewUser) error {
	return c.do(ctx, http.MethodPost, "/v1/admin/users", u, nil)
}

// SuspendUser suspends (or, with suspended false, reinstates) a user (admin only). A suspended
// user's devices lose their tunnel and open sessions end within seconds.
func (c *Client) SuspendUser(ctx context.Context, name string, suspended bool) error {
	return c.do(ctx, http.MethodPost, "/v1/admin/users/"+url.PathEscape(name)+"/suspend?suspended="+strconv.FormatBool(suspended), nil, nil)
}

// DeleteUser deletes a user and their devices (admin only).
func (c *Client) DeleteUser(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/admin/users/"+url.PathEscape(name), nil, nil)
}

// EnrollUser issues a single-use enrollment token for a user (admin only).
func (c *Client) EnrollUser(ctx context.Context, name string) (Token, error) {
	var out Token
	return out, c.do(ctx, http.MethodPost, "/v1/admin/users/"+url.PathEscape(name)+"/enroll", nil, &out)
}

// EnrollTokens lists the enrollment tokens not used yet, of user or of every user when user is ""
// (admin only).
func (c *Client) EnrollTokens(ctx context.Context, user string) ([]PendingToken, error) {
	var out PendingTokenList
	path := "/v1/admin/enroll-tokens"
	if user != "" {
		path += "?user=" + url.QueryEscape(user)
	}
	return out.Tokens, c.do(ctx, http.MethodGet, path, nil, &out)
}

// CancelEnrollToken cancels the unused enrollment token with this ID, so that it can no longer
// enroll a device, and returns it (admin only).
func (c *Client) CancelEnrollToken(ctx context.Context, id string) (PendingToken, error) {
	var out PendingToken
	return out, c.do(ctx, http.MethodDelete, "/v1/admin/enroll-tokens/"+url.PathEscape(id), nil, &out)
}

// Devices lists a user's devices (admin only).
func (c *Client) Devices(ctx context.Context, user string) ([]Device, error) {
	var out []Device
	return out, c.do(ctx, http.MethodGet, "/v1/admin/users/"+url.PathEscape(user)+"/devices", nil, &out)
}

// DeleteDevice removes a device by its WireGuard public key (admin only).
func (c *Client) DeleteDevice(ctx context.Context, publicKey string) error {
	return c.do(ctx, http.MethodDelete, "/v1/admin/devices?public_key="+url.QueryEscape(publicKey), nil, nil)
}

// Logout removes the calling device from the node.
func (c *Client) Logout(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, "/v1/me/device", nil, nil)
}

// Roles lists roles (admin only).
func (c *Client) Roles(ctx context.Context) ([]Role, error) {
	var out []Role
	return out, c.do(ctx, http.MethodGet, "/v1/admin/roles", nil, &out)
}

// AddRole creates a role (admin only).
func (c *Client) AddRole(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/admin/roles", Role{Name: name}, nil)
}

// DeleteRole deletes a role (admin only).
func (c *Client) DeleteRole(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/admin/roles/"+url.PathEscape(name), nil, nil)
}

// Grant adds a grant (resource name or tag expression) to a role (admin only).
func (c *Client) Grant(ctx context.Context, role, grant string) error {
	return c.do(ctx, http.MethodPost, "/v1/admin/roles/"+url.PathEscape(role)+"/grants?grant="+url.QueryEscape(grant), nil, nil)
}

// Revoke removes a grant from a role (admin only); sessions it allowed end within seconds.
func (c *Client) Revoke(ctx context.Context, role, grant string) error {
	return c.do(ctx, http.MethodDelete, "/v1/admin/roles/"+url.PathEscape(role)+"/grants?grant="+url.QueryEscape(grant), nil, nil)
}

// AssignRole gives a user a role (admin only).
func (c *Client) AssignRole(ctx context.Context, role, user string) error {
	return c.do(ctx, http.MethodPost, "/v1/admin/roles/"+url.PathEscape(role)+"/users/"+url.PathEscape(user), nil, nil)
}

// UnassignRole takes a role from a user (admin only).
func (c *Client) UnassignRole(ctx context.Context, role, user string) error {
	return c.do(ctx, http.MethodDelete, "/v1/admin/roles/"+url.PathEscape(role)+"/users/"+url.PathEscape(user), nil, nil)
}

// Activities returns the newest admin activity records (admin only).
func (c *Client) Activities(ctx context.Context, limit int) ([]Activity, error) {
	var out []Activity
	return out, c.do(ctx, http.MethodGet, "/v1/admin/activities?limit="+strconv.Itoa(limit), nil, &out)
}
