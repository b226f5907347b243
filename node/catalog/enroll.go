package catalog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxDeviceNameLen is the longest device name enrollment accepts, in characters.
const MaxDeviceNameLen = 64

// ErrBadDeviceName is returned (wrapped) for a device name that is too long, not UTF-8, or holds
// a character that is not printable (control, format or line-breaking characters).
var ErrBadDeviceName = errors.New("invalid device name")

// ValidateDeviceName checks a device name: at most MaxDeviceNameLen printable characters (letters,
// marks, digits, punctuation, symbols and the ASCII space), so that it prints as one honest line in
// listings and logs. The empty name is allowed (the client sends its host name, which may be
// unknown).
func ValidateDeviceName(name string) error {
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: it is not UTF-8 text", ErrBadDeviceName)
	}
	if n := utf8.RuneCountInString(name); n > MaxDeviceNameLen {
		return fmt.Errorf("%w: %d characters, at most %d are allowed; choose a shorter name", ErrBadDeviceName, n, MaxDeviceNameLen)
	}
	for i, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w: character %U at byte %d is not printable; use letters, digits, punctuation and spaces", ErrBadDeviceName, r, i)
		}
	}
	return nil
}

// EnrollTokenInfo is an unused enrollment token as administrators see it. The secret itself is
// never stored; ID is derived from its SHA-256 and names the token for CancelEnrollToken.
type EnrollTokenInfo struct {
	ID        string
	User      string
	ExpiresAt time.Time
}

// tokenIDLen is the length of a token ID: the first 16 hex digits (64 bits) of the secret's SHA-256.
const tokenIDLen = 16

// TokenID returns the ID of the enrollment token with this secret.
func TokenID(secret string) string { return sha256Hex(secret)[:tokenIDLen] }

// PendingEnrollTokens lists the enrollment tokens not used yet (expired ones included), of user or
// of every user when user is "", soonest expiry first.
func (c *Catalog) PendingEnrollTokens(ctx context.Context, user string) ([]EnrollTokenInfo, error) {
	rows, err := c.db.QueryContext(ctx, c.db.Rebind(`SELECT substr(secret_sha256, 1, ?), user_name, expires_at FROM enroll_tokens
		WHERE used_at IS NULL AND (? = '' OR user_name = ?) ORDER BY expires_at, secret_sha256`), tokenIDLen, user, user)
	if err != nil {
		return nil, fmt.Errorf("list enrollment tokens: %w", err)
	}
	defer rows.Close()
	var out []EnrollTokenInfo
	for rows.Next() {
		var t EnrollTokenInfo
		var at int64
		if err := rows.Scan(&t.ID, &t.User, &at); err != nil {
			return nil, fmt.Errorf("list enrollment tokens: %w", err)
		}
		t.ExpiresAt = time.Unix(at, 0).UTC()
		out = append(out, t)
	}
	return out, rows.Err()
}

// CancelEnrollToken deletes the unused enrollment token with this ID, so that it can no longer
// enroll a device, and returns it. An ID of no unused token wraps ErrNotFound (a used token has
// nothing left to cancel: remove its device instead).
func (c *Catalog) CancelEnrollToken(ctx context.Context, id string) (EnrollTokenInfo, error) {
	var t EnrollTokenInfo
	id = strings.ToLower(id)
	if len(id) != tokenIDLen || !isLowerHex(id) {
		return t, fmt.Errorf("cancel enrollment token: %q is not a token ID (%d hex digits, as `ferry admin users enroll --list` shows): %w", id, tokenIDLen, ErrNotFound)
	}
	var at int64
	err := c.db.QueryRowContext(ctx, c.db.Rebind(`DELETE FROM enroll_tokens WHERE substr(secret_sha256, 1, ?) = ? AND used_at IS NULL
		RETURNING substr(secret_sha256, 1, ?), user_name, expires_at`), tokenIDLen, id, tokenIDLen).Scan(&t.ID, &t.User, &at)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return t, fmt.Errorf("cancel enrollment token %s: no unused token has this ID: %w", id, ErrNotFound)
		}
		return t, fmt.Errorf("cancel enrollment token %s: %w", id, err)
	}
	t.ExpiresAt = time.Unix(at, 0).UTC()
	return t, nil
}

func isLowerHex(s string) bool {
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return false
		}
	}
	return true
}
