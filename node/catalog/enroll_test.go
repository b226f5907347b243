package catalog

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/store/storetest"
)

// TestEnrollIsAtomicWithApply: when apply (adding the WireGuard peer) fails, no device is stored and
// the token stays unused, so it still enrolls a device afterwards; apply sees the device as stored.
func TestEnrollIsAtomicWithApply(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		if err := c.AddUser(ctx, "alice", false); err != nil {
			t.Fatal(err)
		}
		secret, err := c.CreateEnrollToken(ctx, "alice", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		refused := errors.New("peer refused")
		if _, _, err := c.Enroll(ctx, secret, "key1", "laptop", func(Device) error { return refused }); !errors.Is(err, refused) {
			t.Fatalf("Enroll with failing apply = %v, want its error", err)
		}
		if ds, err := c.Devices(ctx); err != nil || len(ds) != 0 {
			t.Fatalf("devices after a failed apply = %+v, %v; want none", ds, err)
		}
		if ts, err := c.PendingEnrollTokens(ctx, ""); err != nil || len(ts) != 1 {
			t.Fatalf("pending tokens after a failed apply = %+v, %v; want the token still unused", ts, err)
		}
		var applied Device
		d, _, err := c.Enroll(ctx, secret, "key2", "laptop", func(d Device) error { applied = d; return nil })
		if err != nil {
			t.Fatalf("Enroll after a failed apply: %v", err)
		}
		if applied != d || d.PublicKey != "key2" || !d.Address.IsValid() {
			t.Fatalf("apply saw %+v, Enroll returned %+v", applied, d)
		}
	})
}

func TestValidateDeviceName(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		tests := []struct {
			name string
			ok   bool
		}{
			{"", true},
			{"eng-laptop", true},
			{"Ana's MacBook Pro (2024)", true},
			{"Müller-PC ☕", true},
			{strings.Repeat("x", 64), true},
			{strings.Repeat("é", 64), true},
			{strings.Repeat("x", 65), false},
			{"laptop\n2026-12-02 admin granted", false},
			{"tab\there", false},
			{"esc\x1b[31mred", false},
			{"nul\x00", false},
			{"del\x7f", false},
			{"bidi\u202egnp.exe", false},
			{"zero\u200bwidth", false},
			{"line\u2028sep", false},
			{"bad\xffutf8", false},
		}
		for _, tt := range tests {
			err := ValidateDeviceName(tt.name)
			if tt.ok && err != nil {
				t.Errorf("ValidateDeviceName(%q) = %v, want ok", tt.name, err)
			}
			if !tt.ok && !errors.Is(err, ErrBadDeviceName) {
				t.Errorf("ValidateDeviceName(%q) = %v, want ErrBadDeviceName", tt.name, err)
			}
		}
		// Enroll checks it too, before the token is looked at, and the token stays unused.
		ctx := context.Background()
		c := openCatalogOn(t, db)
		if err := c.AddUser(ctx, "alice", false); err != nil {
			t.Fatal(err)
		}
		secret, _ := c.CreateEnrollToken(ctx, "alice", time.Hour)
		if _, _, err := c.Enroll(ctx, secret, "key1", strings.Repeat("x", 65), nil); !errors.Is(err, ErrBadDeviceName) {
			t.Fatalf("Enroll with a long name = %v, want ErrBadDeviceName", err)
		}
		if _, _, err := c.Enroll(ctx, secret, "key1", "ok", nil); err != nil {
			t.Fatalf("Enroll after a refused name: %v", err)
		}
	})
}

// TestPendingAndCancelEnrollTokens: unused tokens (expired too) are listed by ID and user; a
// cancelled token no longer enrolls; a used or unknown ID is not found.
func TestPendingAndCancelEnrollTokens(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		for _, u := range []string{"alice", "bob"} {
			if err := c.AddUser(ctx, u, false); err != nil {
				t.Fatal(err)
			}
		}
		a1, _ := c.CreateEnrollToken(ctx, "alice", time.Hour)
		a2, _ := c.CreateEnrollToken(ctx, "alice", -time.Minute)
		b1, _ := c.CreateEnrollToken(ctx, "bob", 2*time.Hour)
		used, _ := c.CreateEnrollToken(ctx, "bob", time.Hour)
		if _, _, err := c.Enroll(ctx, used, "key-used", "x", nil); err != nil {
			t.Fatal(err)
		}
		all, err := c.PendingEnrollTokens(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, tk := range all {
			ids = append(ids, tk.ID+"/"+tk.User)
		}
		want := []string{TokenID(a2) + "/alice", TokenID(a1) + "/alice", TokenID(b1) + "/bob"}
		if strings.Join(ids, " ") != strings.Join(want, " ") {
			t.Fatalf("pending tokens = %v, want %v (soonest expiry first, used one left out)", ids, want)
		}
		if bobs, err := c.PendingEnrollTokens(ctx, "bob"); err != nil || len(bobs) != 1 || bobs[0].ID != TokenID(b1) {
			t.Fatalf("bob's pending tokens = %+v, %v", bobs, err)
		}
		got, err := c.CancelEnrollToken(ctx, strings.ToUpper(TokenID(a1)))
		if err != nil || got.User != "alice" || got.ID != TokenID(a1) {
			t.Fatalf("CancelEnrollToken = %+v, %v", got, err)
		}
		if _, _, err := c.Enroll(ctx, a1, "key-a1", "x", nil); !errors.Is(err, ErrTokenUnknown) {
			t.Fatalf("Enroll with a cancelled token = %v, want ErrTokenUnknown", err)
		}
		for _, id := range []string{TokenID(a1), TokenID(used), "0123456789abcdef", "short", "'; DROP TABLE x --", ""} {
			if _, err := c.CancelEnrollToken(ctx, id); !errors.Is(err, ErrNotFound) {
				t.Errorf("CancelEnrollToken(%q) = %v, want ErrNotFound", id, err)
			}
		}
		if left, _ := c.PendingEnrollTokens(ctx, ""); len(left) != 2 {
			t.Errorf("pending after cancel = %+v, want 2", left)
		}
	})
}
