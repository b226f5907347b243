package upstream

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/ferryhq/ferry/resource"
)

// TestTargetHostOverrideAnyCaseTrailingDot: the proxy finds a host override for a resource's
// hostname in any letter case and with a trailing dot, as the health check (run.resolve) and the
// allow-list do; otherwise "mypg.postgres.database.azure.com." would be checked healthy through the
// override (a private endpoint) while its sessions went wherever public DNS points.
func TestTargetHostOverrideAnyCaseTrailingDot(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	up := New(Config{HostOverrides: map[string]string{"mypg.postgres.database.azure.com": ln.Addr().String()}})
	for _, host := range []string{"mypg.postgres.database.azure.com", "MyPG.Postgres.Database.Azure.COM", "mypg.postgres.database.azure.com."} {
		r := resource.New("r")
		r.Hostname = host
		tg := up.Target(r)
		if tg.Dial == nil {
			t.Errorf("hostname %q: no host override used", host)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := tg.Dial(ctx, "tcp", net.JoinHostPort(host, "5432"))
		cancel()
		if err != nil {
			t.Errorf("hostname %q: dial through the override: %v", host, err)
			continue
		}
		if got := c.RemoteAddr().String(); got != ln.Addr().String() {
			t.Errorf("hostname %q: dialled %s, want the override %s", host, got, ln.Addr())
		}
		c.Close()
	}
}

// TestLookupHostOverride: the lookup handed to pgx (the catalog database) finds a host override in
// any letter case and with a trailing dot, as Target does, and is nil when there is nothing to
// apply, so that pgx's own lookup runs.
func TestLookupHostOverride(t *testing.T) {
	if Lookup(nil, "") != nil {
		t.Fatal("a lookup without overrides or DNS server; want nil")
	}
	lookup := Lookup(map[string]string{"cat.postgres.database.azure.com": "127.0.0.1:6432"}, "")
	for _, host := range []string{"cat.postgres.database.azure.com", "CAT.Postgres.Database.Azure.com."} {
		got, err := lookup(context.Background(), host)
		if err != nil || len(got) != 1 || got[0] != "127.0.0.1:6432" {
			t.Errorf("lookup(%q) = %v, %v; want the override", host, got, err)
		}
	}
	if got, err := lookup(context.Background(), "localhost"); err != nil || len(got) == 0 {
		t.Errorf("lookup(localhost) = %v, %v; want the system's answer", got, err)
	}
}
