package catalog

import (
	"context"
	"errors"
	"testing"

	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/store/storetest"
	"github.com/ferryhq/ferry/resource"
)

// TestDNSNameUniqueWhateverItsCase: DNS names are case-insensitive, and clients resolve a
// resource's subdomain in lower case, so "PG" would answer for "pg": a second resource (or an
// update of one) may not take an existing DNS name in another case.
func TestDNSNameUniqueWhateverItsCase(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		a := res("a")
		a.Subdomain = "pg.prod"
		if _, err := c.AddResource(ctx, a); err != nil {
			t.Fatal(err)
		}
		b := res("b")
		b.Subdomain = "PG.Prod"
		if _, err := c.AddResource(ctx, b); !errors.Is(err, ErrConflict) {
			t.Fatalf("add with the DNS name in capitals: %v, want ErrConflict", err)
		}
		b.Subdomain = "other"
		if _, err := c.AddResource(ctx, b); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.UpdateResource(ctx, "b", func(r *resource.Resource) { r.Subdomain = "pg.PROD" }); !errors.Is(err, ErrConflict) {
			t.Fatalf("update to the DNS name in capitals: %v, want ErrConflict", err)
		}
		if _, _, err := c.UpdateResource(ctx, "a", func(r *resource.Resource) { r.Subdomain = "PG.prod" }); err != nil {
			t.Fatalf("a resource changes the case of its own DNS name: %v", err)
		}
	})
}
