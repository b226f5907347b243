package session

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/netstack"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/pgproxy"
	"github.com/ferryhq/ferry/node/store/storetest"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// TestRevocationWithoutNodeList: the node list is read for routing only; when it cannot be read
// (here one node record whose tags do not decode, as a hand edit or another release could leave)
// while the rest of the catalog answers, reconcile still ends the sessions the catalog no longer
// allows, judging the route by this node's last known record as admission does. It used to end
// nothing at all: a bad node record anywhere in the fleet stopped every revocation.
func TestRevocationWithoutNodeList(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := storetest.Open(t, filepath.Join(t.TempDir(), "catalog.db"))
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	r := resource.New("pg")
	r.Hostname, r.Database, r.Username = "mypg.postgres.database.azure.com", "app", "app"
	if r, err = cat.AddResource(ctx, r); err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return cat.AddUser(ctx, "alice", false) },
		func() error { return cat.AddRole(ctx, "eng") },
		func() error { return cat.GrantToRole(ctx, "eng", catalog.Grant("pg")) },
		func() error { return cat.AssignRole(ctx, "eng", "alice") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	secret, err := cat.CreateEnrollToken(ctx, "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	k, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	dev, _, err := cat.Enroll(ctx, secret, k.PublicKey().String(), "laptop", func(catalog.Device) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	self := catalog.Node{ID: catalog.NewNodeID(), Name: "gw-1", Tags: map[string]string{"env": "prod"}}

	ended := make(chan error, 1)
	m := New(ctx, Config{
		Catalog: cat,
		NodeID:  self.ID,
		Self:    func() catalog.Node { return self },
		Target:  func(r resource.Resource) pgproxy.Target { return pgproxy.Target{Resource: r.Name} },
		Serve: func(ctx context.Context, c net.Conn, _ pgproxy.Target, s pgproxy.Session) {
			if s.Denied != nil {
				ended <- s.Denied
				return
			}
			<-ctx.Done()
			ended <- context.Cause(ctx)
		},
	})
	ap, err := netip.ParseAddrPort(r.VNAddress)
	if err != nil {
		t.Fatal(err)
	}
	serve, err := m.Admit(ctx, netstack.Flow{Local: ap, Remote: netip.AddrPortFrom(dev.Address, 50000)})
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go serve(a)
	for len(m.sessions.snapshot()) == 0 {
		select {
		case err := <-ended:
			t.Fatalf("session ended at once: %v", err)
		case <-ctx.Done():
			t.Fatal("the session did not start")
		case <-time.After(10 * time.Millisecond):
		}
	}

	// A node record whose tags do not decode: Nodes fails, the rest of the catalog answers.
	bad := catalog.Node{ID: catalog.NewNodeID(), Name: "gw-bad", Tags: map[string]string{}}
	k2, _ := tunnel.GenerateKey()
	bad.WireGuardPublicKey, bad.WireGuardEndpoint, bad.EnrollURL, bad.Version = k2.PublicKey().String(), "gw.example:51820", "https://gw.example:8443", "v0"
	bad.EnrollCertSHA256 = strings.Repeat("ab", 32)
	bad.StartedAt, bad.LastHeartbeat = time.Now(), time.Now()
	if _, err := cat.RegisterNode(ctx, bad); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `UPDATE nodes SET tags = '{not json' WHERE name = 'gw-bad'`); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Nodes(ctx); err == nil {
		t.Fatal("the node list still reads")
	}
	if err := cat.RevokeFromRole(ctx, "eng", catalog.Grant("pg")); err != nil {
		t.Fatal(err)
	}
	_ = m.endSessions(ctx)
	select {
	case err := <-ended:
		var ref *pgproxy.Refusal
		if !errors.As(err, &ref) || ref.Outcome != audit.OutcomeRevoked {
			t.Fatalf("session ended with %v, want a revocation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked session still runs after reconcile: the unreadable node list stopped the revocation")
	}
}
