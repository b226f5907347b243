package catalog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/store/storetest"
	"github.com/ferryhq/ferry/resource"
)

// TestSecretStoreDeleteRacesResourceAdd: a store deleted while resources naming it are added never
// leaves a resource pointing at a store that is gone; each add either lands before the delete (which
// is then refused, naming it) or after it (and is refused).
func TestSecretStoreDeleteRacesResourceAdd(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		for i := range 20 {
			st, err := c.AddSecretStore(ctx, resource.SecretStore{Name: fmt.Sprintf("kv%d", i), Type: resource.SecretStoreTypeAzureKeyVault, VaultURI: "https://kvtest.vault.azure.net/"})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				r := res(fmt.Sprintf("r%d", i))
				r.Username, r.SecretStoreID, r.UsernamePath = "", st.ID, "pg-user"
				_, _ = c.AddResource(ctx, r)
			}()
			var delErr error
			go func() {
				defer wg.Done()
				_, delErr = c.DeleteSecretStore(ctx, st.ID)
			}()
			wg.Wait()
			_, storeErr := c.SecretStore(ctx, st.ID)
			r, resErr := c.ResourceByName(ctx, fmt.Sprintf("r%d", i))
			switch {
			case resErr == nil && errors.Is(storeErr, ErrNotFound):
				t.Fatalf("round %d: resource %s names the deleted store %s (delete: %v)", i, r.Name, st.ID, delErr)
			case resErr == nil && (delErr == nil || !errors.Is(delErr, ErrInUse)):
				t.Fatalf("round %d: the resource landed but the delete said %v", i, delErr)
			}
		}
		// A store nobody uses goes; a second delete says it is not there.
		st, err := c.AddSecretStore(ctx, resource.SecretStore{Name: "free", Type: resource.SecretStoreTypeAzureKeyVault, VaultURI: "https://kvtest.vault.azure.net/"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.DeleteSecretStore(ctx, "free"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.DeleteSecretStore(ctx, st.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second delete: %v", err)
		}
	})
}
