package catalog

import (
	"context"
	"database/sql"
	"errors"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/ferryhq/ferry/resource"
)

func openCatalog(t *testing.T) *Catalog {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "c.db")+"?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c, err := Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func res(name string) resource.Resource {
	r := resource.New(name)
	r.Hostname = "mypg.postgres.database.azure.com"
	r.Database = "production"
	r.Username = "mi_user"
	return r
}

func TestAddResourceAssignsStableUniqueAddresses(t *testing.T) {
	ctx := context.Background()
	c := openCatalog(t)
	a, err := c.AddResource(ctx, res("a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.AddResource(ctx, res("b"))
	if err != nil {
		t.Fatal(err)
	}
	if a.LoopbackAddress != "127.0.0.1:10001" || b.LoopbackAddress != "127.0.0.1:10002" {
		t.Fatalf("loopback addresses %s, %s", a.LoopbackAddress, b.LoopbackAddress)
	}
	if a.VNAddress == b.VNAddress || a.ConnectivityMode != resource.ModeLoopback {
		t.Fatalf("VN addresses %s, %s; mode %q", a.VNAddress, b.VNAddress, a.ConnectivityMode)
	}
	if _, err := c.AddResource(ctx, res("a")); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate name: %v, want ErrConflict", err)
	}
	bad := res("c")
	bad.Database = ""
	var fe *resource.FieldError
	if _, err := c.AddResource(ctx, bad); !errors.As(err, &fe) || fe.Field != "database" {
		t.Fatalf("invalid resource: %v", err)
	}
	d := res("d")
	d.Subdomain = "pg"
	if _, err := c.AddResource(ctx, d); err != nil {
		t.Fatal(err)
	}
	e := res("e")
	e.Subdomain = "pg"
	if _, err := c.AddResource(ctx, e); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate DNS name: %v", err)
	}
	got, err := c.ResourceByVNAddress(ctx, mustAP(t, a.VNAddress))
	if err != nil || got.Name != "a" {
		t.Fatalf("ResourceByVNAddress = %+v, %v", got, err)
	}
	if _, err := c.ResourceByVNAddress(ctx, mustAP(t, "100.64.9.9:5432")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown address: %v", err)
	}
}

func TestEnrollTokens(t *testing.T) {
	ctx := context.Background()
	c := openCatalog(t)
	if err := c.AddUser(ctx, "admin", true); err != nil {
		t.Fatal(err)
	}
	good, _ := c.CreateEnrollToken(ctx, "admin", time.Hour)
	expired, _ := c.CreateEnrollToken(ctx, "admin", -time.Second)
	d, u, err := c.Enroll(ctx, good, "key1", "laptop", nil)
	if err != nil || u.Name != "admin" || !u.Admin || d.Address.String() != "198.18.0.2" {
		t.Fatalf("Enroll = %+v %+v %v", d, u, err)
	}
	cases := []struct {
		secret, key string
		want        error
	}{
		{good, "key2", ErrTokenUsed},
		{expired, "key3", ErrTokenExpired},
		{"nonsense", "key4", ErrTokenUnknown},
	}
	for _, tc := range cases {
		if _, _, err := c.Enroll(ctx, tc.secret, tc.key, "x", nil); !errors.Is(err, tc.want) {
			t.Errorf("Enroll(%s) = %v, want %v", tc.key, err, tc.want)
		}
	}
	got, err := c.UserByDevice(ctx, d.Address)
	if err != nil || got.Name != "admin" {
		t.Fatalf("UserByDevice = %+v, %v", got, err)
	}
}

func mustAP(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// TestNoTwoResourcesOnOneLoopbackSocket: a resource cannot name, in another spelling, the loopback
// address another resource holds: ::ffff:127.0.0.1 with port 10001 is the IPv4 socket
// 127.0.0.1:10001, which the client listens on for the first resource.
func TestNoTwoResourcesOnOneLoopbackSocket(t *testing.T) {
	ctx := context.Background()
	c := openCatalog(t)
	a, err := c.AddResource(ctx, res("a"))
	if err != nil || a.LoopbackAddress != "127.0.0.1:10001" {
		t.Fatalf("first resource: %s, %v", a.LoopbackAddress, err)
	}
	for _, prop := range []string{"bind-interface", "ip-address"} {
		b := res("b-" + prop)
		b.PortOverride = 10001
		if prop == "bind-interface" {
			b.BindInterface = "::ffff:127.0.0.1"
		} else {
			b.ConnectivityMode = resource.ModeLoopback
			b.IPAddress = "::ffff:127.0.0.1"
		}
		if got, err := c.AddResource(ctx, b); err == nil {
			t.Errorf("%s ::ffff:127.0.0.1: stored on %s while %s holds 127.0.0.1:10001", prop, got.LoopbackAddress, a.Name)
		}
	}
}
