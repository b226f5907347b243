package catalog

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/store/storetest"
	"github.com/ferryhq/ferry/resource"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openCatalogOn opens the catalog on db (a backend of storetest.Each).
func openCatalogOn(t testing.TB, db *store.DB) *Catalog {
	t.Helper()
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
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
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
		// An address asked for that another resource holds is a conflict too.
		p := res("p")
		p.PortOverride = 15000
		if _, err := c.AddResource(ctx, p); err != nil {
			t.Fatal(err)
		}
		q := res("q")
		q.PortOverride = 15000
		if _, err := c.AddResource(ctx, q); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "15000") {
			t.Fatalf("taken loopback port override: %v, want ErrConflict naming the port", err)
		}
		v := res("v")
		v.ConnectivityMode, v.IPAddress = resource.ModeVirtualNetworking, strings.Split(a.VNAddress, ":")[0]
		if _, err := c.AddResource(ctx, v); !errors.Is(err, ErrConflict) {
			t.Fatalf("taken virtual networking address: %v, want ErrConflict", err)
		}
		got, err := c.ResourceByVNAddress(ctx, mustAP(t, a.VNAddress))
		if err != nil || got.Name != "a" {
			t.Fatalf("ResourceByVNAddress = %+v, %v", got, err)
		}
		if _, err := c.ResourceByVNAddress(ctx, mustAP(t, "100.64.9.9:5432")); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown address: %v", err)
		}
	})
}

func TestEnrollTokens(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
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
	})
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
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
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
	})
}

// TestGivenAddressesChecked: an address given with a resource (the admin API takes the whole
// resource, addresses included) is kept only when it is one the node could have assigned: a
// loopback IP and port, a usable address of the org's VN subnet, and no other resource's. Otherwise
// clients would listen on every interface, or two resources would share an address and the node
// would send one's traffic to the other.
func TestGivenAddressesChecked(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		a, err := c.AddResource(ctx, res("a"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.AddResource(ctx, res("b"))
		if err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name         string
			loopback, vn string
			wantErr      string // "" = kept as given
		}{
			{"every interface", "0.0.0.0:5432", "", "loopback_address"},
			{"a LAN address", "192.168.1.10:5432", "", "loopback_address"},
			{"a name", "localhost:5432", "", "loopback_address"},
			{"another resource's loopback address", a.LoopbackAddress, "", "loopback_address"},
			{"another resource's VN address", "", a.VNAddress, "vn_address"},
			{"outside the subnet", "", "10.0.0.5:5432", "vn_address"},
			{"the resolver's address", "", "100.64.0.2:53", "vn_address"},
			{"a free loopback address", "127.0.0.7:15432", "", ""},
			{"a free VN address", "", "100.64.0.99:5432", ""},
			{"its own addresses", b.LoopbackAddress, b.VNAddress, ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, after, err := c.UpdateResource(ctx, "b", func(r *resource.Resource) {
					if tc.loopback != "" {
						r.LoopbackAddress = tc.loopback
					}
					if tc.vn != "" {
						r.VNAddress = tc.vn
					}
				})
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("update: %v (loopback %s, vn %s), want a refusal naming %s", err, after.LoopbackAddress, after.VNAddress, tc.wantErr)
					}
					got, err := c.ResourceByName(ctx, "b")
					if err != nil || got.LoopbackAddress == tc.loopback || got.VNAddress == tc.vn {
						t.Fatalf("stored anyway: %+v, %v", got, err)
					}
					return
				}
				if err != nil {
					t.Fatalf("update: %v", err)
				}
				if (tc.loopback != "" && after.LoopbackAddress != tc.loopback) || (tc.vn != "" && after.VNAddress != tc.vn) {
					t.Fatalf("addresses %s, %s, want %s, %s", after.LoopbackAddress, after.VNAddress, tc.loopback, tc.vn)
				}
			})
		}
	})
}

// TestSettingsDNSDomain: the org's DNS domain is a name of two labels or more: a top-level domain
// would make clients running as root send every lookup under it (every .com name) to their
// resolver, which answers the catalog's aliases.
func TestSettingsDNSDomain(t *testing.T) {
	for _, tc := range []struct {
		domain string
		ok     bool
	}{
		{"ferry.internal", true},
		{"db.corp.example", true},
		{"ferry.internal.", true},
		{"com", false},
		{"internal", false},
		{"com.", false},
		{"100.64.0.2", false},
		{".", false},
	} {
		if err := ValidateSettings(Settings{DNSDomain: tc.domain}); (err == nil) != tc.ok {
			t.Errorf("dns-domain %q: %v, want ok %v", tc.domain, err, tc.ok)
		}
	}
}
