package migrate_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/catalog/migrate"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// TestMigrateClusters: moving a SQLite catalog to PostgreSQL keeps its proxy clusters, which node
// is a worker of which, and the resources naming them.
func TestMigrateClusters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	src, err := store.Open(ctx, store.Options{URL: "sqlite:" + filepath.Join(t.TempDir(), "ferry.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cat, err := catalog.Open(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.AddUser(ctx, "admin", true); err != nil {
		t.Fatal(err)
	}
	cl, err := cat.AddCluster(ctx, "prod", "")
	if err != nil {
		t.Fatal(err)
	}
	k, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for _, n := range []catalog.Node{
		{ID: catalog.NewNodeID(), Name: "worker-1", ClusterID: cl.ID, WireGuardPublicKey: k.PublicKey().String()},
		{ID: catalog.NewNodeID(), Name: "gw-1", WireGuardPublicKey: k.PublicKey().String()},
	} {
		if n.Name == "gw-1" {
			k2, _ := tunnel.GenerateKey()
			n.WireGuardPublicKey = k2.PublicKey().String()
		}
		n.WireGuardEndpoint, n.EnrollURL, n.EnrollCertSHA256, n.Version = "w.example:51820", "https://w.example:8443", strings.Repeat("ab", 32), "v1"
		n.StartedAt, n.LastHeartbeat = old, old
		if _, err := cat.RegisterNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	r := resource.New("in-prod")
	r.Hostname, r.Database, r.Username, r.ProxyClusterID = "mypg.postgres.database.azure.com", "production", "mi_user", cl.ID
	if _, err := cat.AddResource(ctx, r); err != nil {
		t.Fatal(err)
	}
	dst, err := store.Open(ctx, store.Options{URL: pgtest.Start(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := migrate.Run(ctx, src, dst, migrate.Options{}); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	to, err := catalog.Open(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	got, err := to.Cluster(ctx, "prod")
	if err != nil || got.ID != cl.ID || len(got.Workers) != 1 {
		t.Fatalf("cluster in the target: %+v, %v", got, err)
	}
	if w, err := to.Node(ctx, "worker-1"); err != nil || w.ClusterID != cl.ID || w.Kind != "worker" {
		t.Fatalf("worker in the target: %+v, %v", w, err)
	}
	if g, err := to.Node(ctx, "gw-1"); err != nil || g.ClusterID != "" || g.Kind != "gateway" {
		t.Fatalf("gateway in the target: %+v, %v", g, err)
	}
	if _, err := to.DeleteCluster(ctx, "prod"); err == nil || !strings.Contains(err.Error(), "in-prod") {
		t.Fatalf("delete of the used cluster in the target: %v", err)
	}
}
