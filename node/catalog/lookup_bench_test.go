package catalog

import (
	"context"
	"database/sql"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
)

// BenchmarkResourceByVNAddress measures the node's per-connection lookup of the resource behind a
// virtual networking address in a catalog of 100 resources (SQLite on disk, unique column).
func BenchmarkResourceByVNAddress(b *testing.B) {
	ctx := context.Background()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(b.TempDir(), "c.db")+"?_pragma=foreign_keys(1)&_pragma=busy_timeout(5000)")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	c, err := Open(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	var addrs []netip.AddrPort
	for i := range 100 {
		r, err := c.AddResource(ctx, res(fmt.Sprintf("r%03d", i)))
		if err != nil {
			b.Fatal(err)
		}
		ap, err := netip.ParseAddrPort(r.VNAddress)
		if err != nil {
			b.Fatalf("resource %s: VN address %q: %v", r.Name, r.VNAddress, err)
		}
		addrs = append(addrs, ap)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ap := addrs[i%len(addrs)]
		r, err := c.ResourceByVNAddress(ctx, ap)
		if err != nil {
			b.Fatal(err)
		}
		if r.VNAddress != ap.String() {
			b.Fatalf("looked up %s, got resource at %s", ap, r.VNAddress)
		}
	}
}
