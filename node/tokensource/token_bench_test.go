package tokensource

import (
	"context"
	"testing"

	"github.com/ferryhq/ferry/azureemu"
)

// BenchmarkTokenCacheHit measures Token for an identity whose token MSAL already holds (the path
// every proxied login takes after the first): no IMDS request. It uses a fresh identity, since
// MSAL's cache is process-wide (see the tests). The emulator's IMDS log shows whether any
// iteration went to IMDS.
func BenchmarkTokenCacheHit(b *testing.B) {
	for _, k := range []string{"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"} {
		b.Setenv(k, "")
	}
	id := identity("bench-cache-hit")
	ctx := context.Background()
	e, err := azureemu.Start(ctx, azureemu.Config{Users: []azureemu.Identity{id}})
	if err != nil {
		b.Fatalf("start Azure emulator: %v", err)
	}
	b.Cleanup(func() { _ = e.Close() })
	s, err := New(Config{IMDSEndpoint: e.IMDSEndpoint()})
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := s.Token(ctx, id.ClientID); err != nil {
		b.Fatalf("first token: %v", err)
	}
	fetched := len(e.IMDSRequests())
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, _, err := s.Token(ctx, id.ClientID); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if n := len(e.IMDSRequests()); n != fetched {
		b.Fatalf("%d IMDS requests during the loop: not a cache hit", n-fetched)
	}
}
