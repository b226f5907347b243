package catalog

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/ferryhq/ferry/node/store/storetest"
)

// BenchmarkResourceByVNAddress measures the node's per-connection lookup of the resource behind a
// virtual networking address in a catalog of 100 resources (SQLite on disk, unique column).
func BenchmarkResourceByVNAddress(b *testing.B) {
	ctx := context.Background()
	c := openCatalogOn(b, storetest.SQLite(b))
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
