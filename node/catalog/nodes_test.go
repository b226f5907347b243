package catalog

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/store/storetest"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/tunnel"
)

func testNode(t *testing.T, name string) Node {
	t.Helper()
	k, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	return Node{
		ID: NewNodeID(), Name: name, Tags: map[string]string{"region": "westeurope"},
		WireGuardPublicKey: k.PublicKey().String(), WireGuardEndpoint: "gw.example:51820",
		EnrollURL: "https://gw.example:8443", EnrollCertSHA256: strings.Repeat("ab", 32), Version: "v1.0.0",
		StartedAt: now, LastHeartbeat: now,
	}
}

// TestNodeRegisterHeartbeatOffline: a registered node is online; one whose last heartbeat is older
// than NodeOfflineAfter is offline, and a heartbeat brings it back; a clean stop makes it offline
// at once; registering again (a restart) keeps the ID, takes the new key and endpoint and keeps
// the catalog's tags; a heartbeat of a node whose record is gone is ErrNotFound.
func TestNodeRegisterHeartbeatOffline(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		n := testNode(t, "gw-1")
		got, err := c.RegisterNode(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != n.ID || got.Kind != api.NodeKindGateway || !got.Online(time.Now()) || got.State(time.Now()) != api.NodeOnline {
			t.Fatalf("registered = %+v", got)
		}
		for _, ref := range []string{n.ID, "gw-1"} {
			if x, err := c.Node(ctx, ref); err != nil || x.ID != n.ID || x.Tags["region"] != "westeurope" {
				t.Fatalf("Node(%s) = %+v, %v", ref, x, err)
			}
		}
		if _, err := c.Node(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Node(nope) = %v, want ErrNotFound", err)
		}
		old := time.Now().Add(-NodeOfflineAfter - time.Second)
		if err := c.Heartbeat(ctx, n.ID, old); err != nil {
			t.Fatal(err)
		}
		x, _ := c.Node(ctx, n.ID)
		if x.Online(time.Now()) || x.State(time.Now()) != api.NodeOffline {
			t.Fatalf("node with an old heartbeat shows %s", x.State(time.Now()))
		}
		if err := c.Heartbeat(ctx, n.ID, time.Now()); err != nil {
			t.Fatal(err)
		}
		if x, _ = c.Node(ctx, n.ID); !x.Online(time.Now()) {
			t.Fatal("node with a fresh heartbeat is offline")
		}
		if err := c.NodeStopped(ctx, n.ID, time.Now()); err != nil {
			t.Fatal(err)
		}
		if x, _ = c.Node(ctx, n.ID); x.Online(time.Now()) {
			t.Fatal("stopped node shows online")
		}
		// Restart with a new key and endpoint: same record, online again, catalog tags kept.
		if _, err := c.UpdateNodeTags(ctx, "gw-1", map[string]string{"env": "prod"}); err != nil {
			t.Fatal(err)
		}
		again := testNode(t, "gw-1")
		again.ID, again.WireGuardEndpoint = n.ID, "gw.example:51821"
		if x, err = c.RegisterNode(ctx, again); err != nil || !x.Online(time.Now()) || x.WireGuardPublicKey != again.WireGuardPublicKey ||
			x.WireGuardEndpoint != "gw.example:51821" || api.FormatNodeTags(x.Tags) != "env=prod" {
			t.Fatalf("re-register = %+v, %v", x, err)
		}
		if ns, err := c.Nodes(ctx); err != nil || len(ns) != 1 {
			t.Fatalf("Nodes = %+v, %v", ns, err)
		}
		if err := c.Heartbeat(ctx, NewNodeID(), time.Now()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("heartbeat of an unknown node = %v, want ErrNotFound", err)
		}
	})
}

// TestNodeConflicts: a name or WireGuard key held by another node is ErrConflict, naming the
// holder; bad fields are refused with a message naming them.
func TestNodeConflicts(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		a := testNode(t, "gw-a")
		if _, err := c.RegisterNode(ctx, a); err != nil {
			t.Fatal(err)
		}
		sameName := testNode(t, "gw-a")
		sameKey := testNode(t, "gw-b")
		sameKey.WireGuardPublicKey = a.WireGuardPublicKey
		for _, tc := range []struct {
			name string
			n    Node
			want string
		}{
			{"name", sameName, `name "gw-a" is held by node ` + a.ID},
			{"key", sameKey, "WireGuard public key"},
		} {
			_, err := c.RegisterNode(ctx, tc.n)
			if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want ErrConflict naming %q", tc.name, err, tc.want)
			}
		}
		bad := func(edit func(*Node)) Node { n := testNode(t, "gw-x"); edit(&n); return n }
		for _, tc := range []struct {
			name string
			n    Node
			want string
		}{
			{"id", bad(func(n *Node) { n.ID = "n-XYZ" }), "node ID"},
			{"name", bad(func(n *Node) { n.Name = "GW_1" }), "node name"},
			{"name like an id", bad(func(n *Node) { n.Name = a.ID }), "form of a node ID"},
			{"kind", bad(func(n *Node) { n.Kind = "relay" }), "node kind"},
			{"tags", bad(func(n *Node) { n.Tags = map[string]string{"a b": "c"} }), "key"},
			{"key", bad(func(n *Node) { n.WireGuardPublicKey = "nope" }), "WireGuard public key"},
			{"endpoint", bad(func(n *Node) { n.WireGuardEndpoint = "gw.example" }), "WireGuard endpoint"},
			// Every client refuses a list with an endpoint it cannot dial (client.checkNodeList):
			// such a node must not get into the list at all.
			{"endpoint port 65536", bad(func(n *Node) { n.WireGuardEndpoint = "gw.example:65536" }), "bad port"},
			{"endpoint named port", bad(func(n *Node) { n.WireGuardEndpoint = "gw.example:wireguard" }), "bad port"},
			{"endpoint IPv6 zone", bad(func(n *Node) { n.WireGuardEndpoint = "[fe80::1%eth0]:51820" }), "cannot be a node"},
			{"endpoint unspecified", bad(func(n *Node) { n.WireGuardEndpoint = "0.0.0.0:51820" }), "cannot be a node"},
			{"endpoint control char", bad(func(n *Node) { n.WireGuardEndpoint = "gw\x1b\u202e.example:51820" }), "neither an IP address nor a DNS name"},
			{"enroll url", bad(func(n *Node) { n.EnrollURL = "http://gw.example:8443" }), "enrollment URL"},
			{"fingerprint", bad(func(n *Node) { n.EnrollCertSHA256 = "ab" }), "fingerprint"},
			{"version", bad(func(n *Node) { n.Version = "" }), "version"},
		} {
			if _, err := c.RegisterNode(ctx, tc.n); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want an error naming %q", tc.name, err, tc.want)
			}
		}
		if ns, _ := c.Nodes(ctx); len(ns) != 1 {
			t.Fatalf("refused registrations stored nodes: %+v", ns)
		}
	})
}

// TestDeleteNodeRefusedWhileOnline: deleting a node with a fresh heartbeat is refused naming it
// and its heartbeat age; once its heartbeat is old, or it stopped, it is deleted.
func TestDeleteNodeRefusedWhileOnline(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		for _, tc := range []struct {
			name    string
			offline func(id string) error
		}{
			{"heartbeat too old", func(id string) error { return c.Heartbeat(ctx, id, time.Now().Add(-NodeOfflineAfter-2*time.Second)) }},
			{"stopped", func(id string) error { return c.NodeStopped(ctx, id, time.Now()) }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				n := testNode(t, "gw-del")
				if _, err := c.RegisterNode(ctx, n); err != nil {
					t.Fatal(err)
				}
				_, err := c.DeleteNode(ctx, "gw-del")
				if !errors.Is(err, ErrNodeOnline) || !strings.Contains(err.Error(), "node gw-del is online (last heartbeat 0s ago); stop it first") {
					t.Fatalf("delete online node: %v", err)
				}
				if _, err := c.Node(ctx, n.ID); err != nil {
					t.Fatalf("refused delete removed the node: %v", err)
				}
				if err := tc.offline(n.ID); err != nil {
					t.Fatal(err)
				}
				if _, err := c.DeleteNode(ctx, n.ID); err != nil {
					t.Fatalf("delete offline node: %v", err)
				}
				if _, err := c.Node(ctx, n.ID); !errors.Is(err, ErrNotFound) {
					t.Fatalf("deleted node still there: %v", err)
				}
				if _, err := c.DeleteNode(ctx, n.ID); !errors.Is(err, ErrNotFound) {
					t.Fatalf("delete again: %v, want ErrNotFound", err)
				}
			})
		}
	})
}

// TestUpdateNodeTags: tags replace the old ones; invalid tags and unknown nodes are refused.
func TestUpdateNodeTags(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		n := testNode(t, "gw-t")
		if _, err := c.RegisterNode(ctx, n); err != nil {
			t.Fatal(err)
		}
		got, err := c.UpdateNodeTags(ctx, "gw-t", map[string]string{"env": "prod", "region": "northeurope"})
		if err != nil || api.FormatNodeTags(got.Tags) != "env=prod,region=northeurope" {
			t.Fatalf("update = %+v, %v", got, err)
		}
		if _, err := c.UpdateNodeTags(ctx, "gw-t", map[string]string{"env": ""}); err == nil || !strings.Contains(err.Error(), "no value") {
			t.Fatalf("empty value: %v", err)
		}
		if _, err := c.UpdateNodeTags(ctx, "nope", nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown node: %v", err)
		}
		if got, err = c.UpdateNodeTags(ctx, n.ID, nil); err != nil || len(got.Tags) != 0 {
			t.Fatalf("clear tags = %+v, %v", got, err)
		}
		if x, _ := c.Node(ctx, n.ID); len(x.Tags) != 0 {
			t.Fatalf("stored tags after clear = %v", x.Tags)
		}
	})
}

// TestExists: a database without Ferry's tables (a fresh one, or another application's) is no
// catalog, and looking does not change it; after Open it is one.
func TestExists(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		if _, err := db.ExecContext(ctx, `CREATE TABLE users (name TEXT)`); err != nil {
			t.Fatal(err)
		}
		if ok, err := Exists(ctx, db); err != nil || ok {
			t.Fatalf("Exists on another application's database = %v, %v; want false", ok, err)
		}
		if ok, err := Exists(ctx, db); err != nil || ok {
			t.Fatalf("Exists twice = %v, %v; want false", ok, err)
		}
		if _, err := db.ExecContext(ctx, `DROP TABLE users`); err != nil {
			t.Fatal(err)
		}
		openCatalogOn(t, db)
		if ok, err := Exists(ctx, db); err != nil || !ok {
			t.Fatalf("Exists on a catalog = %v, %v; want true", ok, err)
		}
	})
}

// TestInstanceHeartbeat: two processes registering one node ID (a copied state directory: same
// ID, same WireGuard key) do not take the record from each other unnoticed: the one registered
// first gets ErrNodeReplaced naming the other's start and endpoint, and writes nothing; the one
// registered last keeps heartbeating.
func TestInstanceHeartbeat(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		first := testNode(t, "gw-a")
		first.StartedAt = time.Now().Add(-time.Minute)
		a, err := c.RegisterNode(ctx, first)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.InstanceHeartbeat(ctx, a.ID, a.StartedAt, time.Now()); err != nil {
			t.Fatalf("heartbeat of the only process: %v", err)
		}
		copied := first
		copied.StartedAt, copied.WireGuardEndpoint = time.Now(), "gw-copy.example:51820"
		b, err := c.RegisterNode(ctx, copied)
		if err != nil {
			t.Fatal(err)
		}
		stale := time.Now().Add(-NodeOfflineAfter - time.Minute)
		err = c.InstanceHeartbeat(ctx, a.ID, a.StartedAt, stale)
		if !errors.Is(err, ErrNodeReplaced) || !strings.Contains(err.Error(), "gw-copy.example:51820") || !strings.Contains(err.Error(), "state directory") {
			t.Fatalf("heartbeat of the replaced process: %v, want ErrNodeReplaced naming the other's endpoint", err)
		}
		if x, err := c.Node(ctx, a.ID); err != nil || !x.Online(time.Now()) || x.WireGuardEndpoint != "gw-copy.example:51820" {
			t.Fatalf("the replaced process wrote the record: %+v, %v", x, err)
		}
		if err := c.InstanceHeartbeat(ctx, b.ID, b.StartedAt, time.Now()); err != nil {
			t.Fatalf("heartbeat of the last registered process: %v", err)
		}
		if err := c.InstanceHeartbeat(ctx, NewNodeID(), b.StartedAt, time.Now()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("heartbeat of an unknown node: %v, want ErrNotFound", err)
		}
	})
}

// TestRegisterNodeRecorded: a node that clients will trust for the first time (new, or a known ID
// with a new WireGuard key) is in the admin activity log; a restart with the same key is not.
func TestRegisterNodeRecorded(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		n := testNode(t, "gw-a")
		for _, step := range []struct {
			name string
			edit func(*Node)
			want []string // in the detail of a new node.register entry; nil = no entry
		}{
			{"new", func(*Node) {}, []string{n.ID, "wireguard_public_key=" + n.WireGuardPublicKey}},
			{"restart", func(x *Node) { x.StartedAt = time.Now().Add(time.Second) }, nil},
			{"new key", func(x *Node) { x.WireGuardPublicKey = testNode(t, "x").WireGuardPublicKey }, []string{"the node's key changed; it was " + n.WireGuardPublicKey}},
		} {
			before, err := c.Activities(ctx, 100)
			if err != nil {
				t.Fatal(err)
			}
			step.edit(&n)
			if _, err := c.RegisterNode(ctx, n); err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			after, err := c.Activities(ctx, 100)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case step.want == nil && len(after) != len(before):
				t.Errorf("%s: recorded %+v", step.name, after[0])
			case step.want != nil && (len(after) != len(before)+1 || after[0].Action != "node.register" || after[0].Target != "gw-a"):
				t.Errorf("%s: activities %+v, want one node.register of gw-a", step.name, after)
			case step.want != nil:
				for _, w := range step.want {
					if !strings.Contains(after[0].Detail, w) {
						t.Errorf("%s: detail %q lacks %q", step.name, after[0].Detail, w)
					}
				}
			}
		}
	})
}
