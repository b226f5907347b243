package api

import (
	"context"
	"net/http"
	"net/url"

	"github.com/ferryhq/ferry/resource"
)

// SecretStoreUpdate is the answer to an update of a secret store: the store before and after.
type SecretStoreUpdate struct {
	Before resource.SecretStore `json:"before"`
	After  resource.SecretStore `json:"after"`
}

// SecretStores lists the secret stores (admin only).
func (c *Client) SecretStores(ctx context.Context) ([]resource.SecretStore, error) {
	var out []resource.SecretStore
	return out, c.do(ctx, http.MethodGet, "/v1/admin/secretstores", nil, &out)
}

// SecretStore returns one secret store by ID or name (admin only).
func (c *Client) SecretStore(ctx context.Context, idOrName string) (resource.SecretStore, error) {
	var out resource.SecretStore
	return out, c.do(ctx, http.MethodGet, "/v1/admin/secretstores/"+url.PathEscape(idOrName), nil, &out)
}

// AddSecretStore adds a secret store (admin only); the answer carries its ID ("se-…").
func (c *Client) AddSecretStore(ctx context.Context, s resource.SecretStore) (resource.SecretStore, error) {
	var out resource.SecretStore
	return out, c.do(ctx, http.MethodPost, "/v1/admin/secretstores", s, &out)
}

// UpdateSecretStore replaces the store's name, vault URI and managed identity (admin only); its ID
// and type stay.
func (c *Client) UpdateSecretStore(ctx context.Context, idOrName string, s resource.SecretStore) (SecretStoreUpdate, error) {
	var out SecretStoreUpdate
	return out, c.do(ctx, http.MethodPut, "/v1/admin/secretstores/"+url.PathEscape(idOrName), s, &out)
}

// DeleteSecretStore deletes a secret store (admin only); one that resources use is refused (409),
// naming them.
func (c *Client) DeleteSecretStore(ctx context.Context, idOrName string) error {
	return c.do(ctx, http.MethodDelete, "/v1/admin/secretstores/"+url.PathEscape(idOrName), nil, nil)
}
