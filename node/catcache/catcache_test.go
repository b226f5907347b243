package catcache_test

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/catcache"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestAnswersFromSnapshotWhileStopped: with the catalog's PostgreSQL stopped, the cache answers
// each authorisation read the snapshot holds (device → user, the user's access, resource by VN
// address, the resource list, the node list as of the snapshot's time), refuses the rest with an *UnreachableError (never ErrNotFound: a
// device missing from the snapshot is not a deleted one), reports since when; once the server is
// back, a refresh reads the catalog again, and with it a grant revoked meanwhile.
func TestAnswersFromSnapshotWhileStopped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := pgtest.NewServer(t)
	name, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(ctx, store.Options{URL: srv.URL(name)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	r := resource.New("orders")
	r.Hostname, r.Database, r.Username = "orders.postgres.database.azure.com", "orders", "app"
	r.ManagedIdentityClientID = "11111111-2222-3333-4444-555555555555"
	if r, err = cat.AddResource(ctx, r); err != nil {
		t.Fatal(err)
	}
	vn := netip.MustParseAddrPort(r.VNAddress)
	for _, step := range []func() error{
		func() error { return cat.AddUser(ctx, "eng", false) },
		func() error { return cat.AddRole(ctx, "readers") },
		func() error { return cat.GrantToRole(ctx, "readers", catalog.Grant("orders")) },
		func() error { return cat.AssignRole(ctx, "readers", "eng") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	dev := enroll(t, ctx, cat, "eng")
	nk, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	beat := time.Now()
	if _, err := cat.RegisterNode(ctx, catalog.Node{ID: catalog.NewNodeID(), Name: "gw-1", Tags: map[string]string{"env": "prod"},
		WireGuardPublicKey: nk.PublicKey().String(), WireGuardEndpoint: "127.0.0.1:9", EnrollURL: "https://127.0.0.1:9",
		EnrollCertSHA256: strings.Repeat("ab", 32), Version: "test", StartedAt: beat, LastHeartbeat: beat}); err != nil {
		t.Fatal(err)
	}

	c := catcache.New(cat, slog.New(slog.DiscardHandler))
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			_ = srv.Start(context.Background())
		}
	}()

	u, err := c.UserByDevice(ctx, dev.Address)
	if err != nil || u.Name != "eng" {
		t.Fatalf("UserByDevice while stopped: %+v, %v", u, err)
	}
	if st := c.Status(); st.Reachable || st.DownSince.IsZero() || st.Err == nil {
		t.Fatalf("status while stopped: %+v", st)
	}
	acc, err := c.AccessOf(ctx, u)
	if err != nil || !acc.Allows(r) {
		t.Fatalf("AccessOf while stopped: %v, allows %v", err, acc.Allows(r))
	}
	if got, err := c.ResourceByVNAddress(ctx, vn); err != nil || got.Name != "orders" {
		t.Fatalf("ResourceByVNAddress while stopped: %+v, %v", got, err)
	}
	if rs, err := c.Resources(ctx); err != nil || len(rs) != 1 {
		t.Fatalf("Resources while stopped: %+v, %v", rs, err)
	}
	// The node list, as of the snapshot's time (no heartbeat can be read meanwhile).
	if ns, at, err := c.NodesAsOf(ctx); err != nil || len(ns) != 1 || ns[0].Name != "gw-1" || ns[0].Tags["env"] != "prod" ||
		!at.Equal(c.Status().SnapshotAt) || !ns[0].Online(at) {
		t.Fatalf("NodesAsOf while stopped: %+v as of %v, %v; want gw-1 as of the snapshot (%v)", ns, at, err, c.Status().SnapshotAt)
	}
	for what, err := range map[string]error{
		"an unknown device":   second(c.UserByDevice(ctx, netip.MustParseAddr("198.18.9.9"))),
		"an unknown resource": second(c.ResourceByVNAddress(ctx, netip.MustParseAddrPort("100.64.9.9:5432"))),
		"an unknown user":     second(c.AccessOf(ctx, catalog.User{Name: "nobody"})),
		"a refresh":           c.Refresh(ctx),
		"Unreachable":         c.Unreachable(),
	} {
		var ue *catcache.UnreachableError
		if errors.Is(err, catalog.ErrNotFound) || !catcache.IsUnreachable(err) {
			t.Errorf("%s while stopped: %v; want unreachable, not ErrNotFound", what, err)
		}
		if what != "a refresh" && !errors.As(err, &ue) {
			t.Errorf("%s while stopped: %T %v; want *UnreachableError", what, err, err)
		}
	}

	// Revoked while this cache cannot see it: the revocation applies once the catalog is back.
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	if err := cat.RevokeFromRole(ctx, "readers", catalog.Grant("orders")); err != nil {
		t.Fatal(err)
	}
	if acc, err := c.AccessOf(ctx, u); err != nil || !acc.Allows(r) {
		t.Fatalf("AccessOf before the cache saw the catalog again: %v; the snapshot's answer was expected", err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if st := c.Status(); !st.Reachable || st.Err != nil {
		t.Fatalf("status after recovery: %+v", st)
	}
	if acc, err := c.AccessOf(ctx, u); err != nil || acc.Allows(r) {
		t.Fatalf("AccessOf after recovery: %v, allows %v; want the revocation", err, acc.Allows(r))
	}
}

func second[T any](_ T, err error) error { return err }

// enroll makes a device of user through an enrollment token, as `ferry login` does.
func enroll(t *testing.T, ctx context.Context, cat *catalog.Catalog, user string) catalog.Device {
	t.Helper()
	tok, err := cat.CreateEnrollToken(ctx, user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	k, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := cat.Enroll(ctx, tok, k.PublicKey().String(), "laptop", func(catalog.Device) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSnapshotWithoutNodeList: a node list that cannot be read (one node record whose tags do not
// decode) while the rest of the catalog answers does not keep the snapshot from being refreshed:
// a grant revoked before an outage is not in the snapshot the outage is answered from. The new
// snapshot keeps the node list of the previous one. It used to keep the whole old snapshot, so an
// outage brought back access revoked any time since the bad record appeared.
func TestSnapshotWithoutNodeList(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := pgtest.NewServer(t)
	name, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(ctx, store.Options{URL: srv.URL(name)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	r := resource.New("orders")
	r.Hostname, r.Database, r.Username = "orders.postgres.database.azure.com", "orders", "app"
	if r, err = cat.AddResource(ctx, r); err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return cat.AddUser(ctx, "eng", false) },
		func() error { return cat.AddRole(ctx, "readers") },
		func() error { return cat.GrantToRole(ctx, "readers", catalog.Grant("orders")) },
		func() error { return cat.AssignRole(ctx, "readers", "eng") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	dev := enroll(t, ctx, cat, "eng")
	beat := time.Now()
	for _, n := range []string{"gw-1", "gw-bad"} {
		nk, err := tunnel.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cat.RegisterNode(ctx, catalog.Node{ID: catalog.NewNodeID(), Name: n, Tags: map[string]string{"env": "prod"},
			WireGuardPublicKey: nk.PublicKey().String(), WireGuardEndpoint: "127.0.0.1:9", EnrollURL: "https://127.0.0.1:9",
			EnrollCertSHA256: strings.Repeat("ab", 32), Version: "test", StartedAt: beat, LastHeartbeat: beat}); err != nil {
			t.Fatal(err)
		}
	}
	c := catcache.New(cat, slog.New(slog.DiscardHandler))
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `UPDATE nodes SET tags = '{not json' WHERE name = 'gw-bad'`); err != nil {
		t.Fatal(err)
	}
	if err := cat.RevokeFromRole(ctx, "readers", catalog.Grant("orders")); err != nil {
		t.Fatal(err)
	}
	_ = c.Refresh(ctx) // the node list fails; the rest is read
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Start(context.Background()) }()
	u, err := c.UserByDevice(ctx, dev.Address)
	if err != nil {
		t.Fatalf("UserByDevice while stopped: %v", err)
	}
	if acc, err := c.AccessOf(ctx, u); err != nil || acc.Allows(r) {
		t.Fatalf("AccessOf while stopped: %v, allows %v; want the revocation made before the outage", err, acc.Allows(r))
	}
	if ns, _, err := c.NodesAsOf(ctx); err != nil || len(ns) != 2 {
		t.Fatalf("NodesAsOf while stopped: %+v, %v; want the previous snapshot's two nodes", ns, err)
	}
}
