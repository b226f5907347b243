package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/resource"
)

// secretStoresSchema is migration step 2: the secret stores resources read their credentials from.
const secretStoresSchema = `
CREATE TABLE IF NOT EXISTS secret_stores (
	id TEXT PRIMARY KEY,
	name TEXT NOT NULL UNIQUE,
	data TEXT NOT NULL,
	created_at INTEGER NOT NULL
);
`

// AddSecretStore validates s, gives it an ID ("se-…") and stores it; a taken name wraps ErrConflict.
func (c *Catalog) AddSecretStore(ctx context.Context, s resource.SecretStore) (resource.SecretStore, error) {
	s.ID = "se-" + randomHex(8)
	if err := c.storeSecretStore(ctx, &s, true); err != nil {
		return s, fmt.Errorf("add secret store: %w", err)
	}
	return s, nil
}

func (c *Catalog) storeSecretStore(ctx context.Context, s *resource.SecretStore, insert bool) error {
	if err := s.Validate(); err != nil {
		return err
	}
	s.VaultURI, _ = resource.NormalizeVaultURI(s.VaultURI)
	data, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	err = c.write(ctx, func(tx *store.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, c.db.Rebind(`SELECT count(*) FROM secret_stores WHERE name = ? AND id != ?`), s.Name, s.ID).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("a secret store named %q %w", s.Name, ErrConflict)
		}
		var err error
		if insert {
			_, err = tx.ExecContext(ctx, c.db.Rebind(`INSERT INTO secret_stores(id, name, data, created_at) VALUES(?,?,?,?)`), s.ID, s.Name, string(data), time.Now().Unix())
		} else {
			_, err = tx.ExecContext(ctx, c.db.Rebind(`UPDATE secret_stores SET name = ?, data = ? WHERE id = ?`), s.Name, string(data), s.ID)
		}
		return err
	})
	if store.IsConflict(err) {
		return fmt.Errorf("a secret store named %q %w", s.Name, ErrConflict)
	}
	return err
}

// SecretStores returns every secret store, sorted by name.
func (c *Catalog) SecretStores(ctx context.Context) ([]resource.SecretStore, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT data FROM secret_stores ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list secret stores: %w", err)
	}
	defer rows.Close()
	out := []resource.SecretStore{}
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("list secret stores: %w", err)
		}
		var s resource.SecretStore
		if err := json.Unmarshal([]byte(data), &s); err != nil {
			return nil, fmt.Errorf("list secret stores: decode: %w", err)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// SecretStore returns the store with that ID or name; it wraps ErrNotFound.
func (c *Catalog) SecretStore(ctx context.Context, idOrName string) (resource.SecretStore, error) {
	var s resource.SecretStore
	var data string
	err := c.db.QueryRowContext(ctx, c.db.Rebind(`SELECT data FROM secret_stores WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1`), idOrName, idOrName, idOrName).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return s, fmt.Errorf("secret store %q: %w (list them with `ferry admin secretstores list`)", idOrName, ErrNotFound)
	}
	if err != nil {
		return s, fmt.Errorf("secret store %q: %w", idOrName, err)
	}
	if err := json.Unmarshal([]byte(data), &s); err != nil {
		return s, fmt.Errorf("secret store %q: decode: %w", idOrName, err)
	}
	return s, nil
}

// UpdateSecretStore applies edit to the store with that ID or name and stores it; the ID and type
// stay. It returns the store before and after.
func (c *Catalog) UpdateSecretStore(ctx context.Context, idOrName string, edit func(*resource.SecretStore)) (before, after resource.SecretStore, err error) {
	before, err = c.SecretStore(ctx, idOrName)
	if err != nil {
		return before, before, fmt.Errorf("update secret store: %w", err)
	}
	after = before
	edit(&after)
	after.ID = before.ID
	if err := c.storeSecretStore(ctx, &after, false); err != nil {
		return before, after, fmt.Errorf("update secret store %s: %w", before.Name, err)
	}
	return before, after, nil
}

// ErrInUse is returned (wrapped) when an object that others refer to is deleted.
var ErrInUse = errors.New("is in use")

// DeleteSecretStore deletes the store with that ID or name, unless a resource uses it: then the
// error (wrapping ErrInUse) lists those resources. The check and the delete are one transaction, as
// a resource's write and its store check are (checkStore), so neither can slip past the other.
func (c *Catalog) DeleteSecretStore(ctx context.Context, idOrName string) (resource.SecretStore, error) {
	s, err := c.SecretStore(ctx, idOrName)
	if err != nil {
		return s, fmt.Errorf("delete secret store: %w", err)
	}
	tx, err := c.db.Begin(ctx)
	if err != nil {
		return s, fmt.Errorf("delete secret store %s: %w", s.Name, err)
	}
	defer tx.Rollback()
	// The resources' lock: a resource being stored with this store waits, or this delete does.
	if err := tx.Lock(ctx, "catalog.resources"); err != nil {
		return s, fmt.Errorf("delete secret store %s: %w", s.Name, err)
	}
	users, err := resourcesUsing(ctx, tx, func(r resource.Resource) bool { return r.SecretStoreID == s.ID })
	if err != nil {
		return s, fmt.Errorf("delete secret store %s: %w", s.Name, err)
	}
	if len(users) > 0 {
		return s, fmt.Errorf("delete secret store %s (%s): it %w by resources %s: move them to another store first (ferry admin datasources update NAME --secret-store-id ...)",
			s.Name, s.ID, ErrInUse, strings.Join(users, ", "))
	}
	res, err := tx.ExecContext(ctx, c.db.Rebind(`DELETE FROM secret_stores WHERE id = ?`), s.ID)
	if err != nil {
		return s, fmt.Errorf("delete secret store %s: %w", s.Name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return s, fmt.Errorf("delete secret store %s: %w", s.Name, ErrNotFound)
	}
	if err := tx.Notify(ctx); err != nil {
		return s, fmt.Errorf("delete secret store %s: %w", s.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return s, fmt.Errorf("delete secret store %s: commit: %w", s.Name, err)
	}
	return s, nil
}

// resourcesUsing lists the names of the resources for which uses is true.
func resourcesUsing(ctx context.Context, tx *store.Tx, uses func(resource.Resource) bool) ([]string, error) {
	rows, err := tx.QueryContext(ctx, `SELECT name, data FROM resources ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var name, data string
		if err := rows.Scan(&name, &data); err != nil {
			return nil, err
		}
		var r resource.Resource
		if err := json.Unmarshal([]byte(data), &r); err != nil {
			return nil, fmt.Errorf("decode resource %s: %w", name, err)
		}
		if uses(r) {
			out = append(out, name)
		}
	}
	return out, rows.Err()
}

// checkStore refuses a resource that names a secret store the catalog does not have.
func (c *Catalog) checkStore(ctx context.Context, tx *store.Tx, r resource.Resource) error {
	if r.SecretStoreID == "" {
		return nil
	}
	ok, err := c.hasID(ctx, tx.Tx, "secret_stores", r.SecretStoreID)
	if err != nil {
		return fmt.Errorf("check the resource's secret store: %w", err)
	}
	if !ok {
		return &resource.FieldError{Field: "secret-store-id", Message: fmt.Sprintf("no secret store %q: add it with `ferry admin secretstores add azurekeyvault NAME --vault-uri ...`, or list them with `ferry admin secretstores list`", r.SecretStoreID)}
	}
	return nil
}
