package catalog

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/store/storetest"
	"github.com/ferryhq/ferry/resource"
)

// TestClusterAddListShow: a new proxy cluster gets an ID of the product page's form, or the one
// given; names are DNS labels that do not look like IDs, unique, as IDs are; list is by name with
// each cluster's workers, show finds one by ID or name.
func TestClusterAddListShow(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		prod, err := c.AddCluster(ctx, "prod", "")
		if err != nil {
			t.Fatal(err)
		}
		if !api.ValidClusterID(prod.ID) || prod.Name != "prod" || prod.CreatedAt.IsZero() {
			t.Fatalf("added %+v", prod)
		}
		page, err := c.AddCluster(ctx, "page", "n-1a2b345c67890123")
		if err != nil || page.ID != "n-1a2b345c67890123" {
			t.Fatalf("add with the page's ID: %+v, %v", page, err)
		}
		for _, tc := range []struct {
			name, cname, id string
			want            error
			msg             string
		}{
			{"taken name", "prod", "", ErrConflict, "prod"},
			{"taken ID", "other", "n-1a2b345c67890123", ErrConflict, "n-1a2b345c67890123"},
			{"upper case", "Prod", "", nil, "DNS label"},
			{"empty", "", "", nil, "DNS label"},
			{"dash at end", "prod-", "", nil, "DNS label"},
			{"ID-shaped name", "n-0000000000000001", "", nil, "form of a cluster ID"},
			{"bad ID", "x", "n-XYZ", nil, "16 lower-case hex"},
			{"ID too short", "x", "n-1a2b", nil, "16 lower-case hex"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := c.AddCluster(ctx, tc.cname, tc.id)
				if err == nil || !strings.Contains(err.Error(), tc.msg) || (tc.want != nil && !errors.Is(err, tc.want)) {
					t.Fatalf("AddCluster(%q, %q) = %v, want %v naming %q", tc.cname, tc.id, err, tc.want, tc.msg)
				}
			})
		}
		w := testNode(t, "worker-1")
		w.ClusterID = prod.ID
		if _, err := c.RegisterNode(ctx, w); err != nil {
			t.Fatal(err)
		}
		list, err := c.Clusters(ctx)
		if err != nil || len(list) != 2 || list[0].Name != "page" || list[1].Name != "prod" {
			t.Fatalf("Clusters = %+v, %v", list, err)
		}
		if len(list[0].Workers) != 0 || len(list[1].Workers) != 1 || list[1].Workers[0] != w.ID {
			t.Fatalf("workers: %+v", list)
		}
		for _, ref := range []string{prod.ID, "prod"} {
			got, err := c.Cluster(ctx, ref)
			if err != nil || got.ID != prod.ID || len(got.Workers) != 1 || !got.CreatedAt.Equal(prod.CreatedAt) {
				t.Fatalf("Cluster(%s) = %+v, %v", ref, got, err)
			}
		}
		if _, err := c.Cluster(ctx, "n-0000000000000000"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "n-0000000000000000") {
			t.Fatalf("unknown cluster: %v", err)
		}
	})
}

// TestClusterNodes: a node registered with a cluster is its worker (kind worker), one without is a
// gateway, a node naming a cluster that does not exist is refused naming it, and a restart with
// another cluster (or none) moves the node.
func TestClusterNodes(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		cl, err := c.AddCluster(ctx, "prod", "")
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, cluster, kind string
			wantErr             string
		}{
			{"gateway", "", api.NodeKindGateway, ""},
			{"worker", cl.ID, api.NodeKindWorker, ""},
			{"unknown cluster", "n-00000000000000ff", "", "proxy cluster n-00000000000000ff (config \"cluster_id\") not found"},
			{"malformed cluster", "prod", "", "is not n- and 16"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				n := testNode(t, strings.ReplaceAll(tc.name, " ", "-"))
				n.ClusterID = tc.cluster
				got, err := c.RegisterNode(ctx, n)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("RegisterNode = %+v, %v; want %q", got, err, tc.wantErr)
					}
					if _, err := c.Node(ctx, n.ID); !errors.Is(err, ErrNotFound) {
						t.Fatalf("refused node was stored: %v", err)
					}
					return
				}
				if err != nil || got.Kind != tc.kind || got.ClusterID != tc.cluster {
					t.Fatalf("RegisterNode = %+v, %v", got, err)
				}
				again, err := c.Node(ctx, n.ID)
				if err != nil || again.Kind != tc.kind || again.ClusterID != tc.cluster {
					t.Fatalf("Node = %+v, %v", again, err)
				}
			})
		}
		// A worker restarted without a cluster is a gateway again.
		w, err := c.Node(ctx, "worker")
		if err != nil {
			t.Fatal(err)
		}
		w.ClusterID, w.Kind = "", ""
		if got, err := c.RegisterNode(ctx, w); err != nil || got.Kind != api.NodeKindGateway || got.ClusterID != "" {
			t.Fatalf("re-register as gateway: %+v, %v", got, err)
		}
	})
}

// TestClusterReferences: a resource naming a proxy cluster that does not exist is refused on add
// and on update, naming the ID; a cluster that resources name, or that has workers, cannot be
// deleted (the error lists them); once they are gone it can.
func TestClusterReferences(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		cl, err := c.AddCluster(ctx, "prod", "")
		if err != nil {
			t.Fatal(err)
		}
		missing := "n-1a2b345c67890123"
		for _, tc := range []struct {
			name    string
			cluster string
			wantErr string
		}{
			{"missing cluster", missing, `proxy-cluster-id: no proxy cluster "n-1a2b345c67890123"`},
			{"existing cluster", cl.ID, ""},
			{"gateways", "", ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := res("r-" + strings.ReplaceAll(tc.name, " ", "-"))
				r.ProxyClusterID = tc.cluster
				_, err := c.AddResource(ctx, r)
				var fe *resource.FieldError
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &fe) {
						t.Fatalf("AddResource = %v, want a field error %q", err, tc.wantErr)
					}
					if _, err := c.ResourceByName(ctx, r.Name); !errors.Is(err, ErrNotFound) {
						t.Fatalf("refused resource was stored: %v", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
			})
		}
		if _, _, err := c.UpdateResource(ctx, "r-gateways", func(r *resource.Resource) { r.ProxyClusterID = missing }); err == nil || !strings.Contains(err.Error(), missing) {
			t.Fatalf("update to a missing cluster: %v", err)
		}
		if r, _ := c.ResourceByName(ctx, "r-gateways"); r.ProxyClusterID != "" {
			t.Fatalf("refused update was stored: %+v", r)
		}
		w := testNode(t, "worker-1")
		w.ClusterID = cl.ID
		if _, err := c.RegisterNode(ctx, w); err != nil {
			t.Fatal(err)
		}
		_, err = c.DeleteCluster(ctx, "prod")
		if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "r-existing-cluster") {
			t.Fatalf("delete a used cluster: %v", err)
		}
		if _, _, err := c.UpdateResource(ctx, "r-existing-cluster", func(r *resource.Resource) { r.ProxyClusterID = "" }); err != nil {
			t.Fatal(err)
		}
		_, err = c.DeleteCluster(ctx, cl.ID)
		if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "worker-1") {
			t.Fatalf("delete a cluster with a worker: %v", err)
		}
		if err := c.NodeStopped(ctx, w.ID, w.StartedAt); err != nil {
			t.Fatal(err)
		}
		if _, err := c.DeleteNode(ctx, w.ID); err != nil {
			t.Fatal(err)
		}
		if got, err := c.DeleteCluster(ctx, cl.ID); err != nil || got.ID != cl.ID {
			t.Fatalf("delete an unused cluster: %+v, %v", got, err)
		}
		if _, err := c.DeleteCluster(ctx, cl.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second delete: %v", err)
		}
	})
}

// TestClusterIDsAreNotNodeIDs: proxy cluster IDs and node IDs have the same form (n- and 16 hex
// digits), and an admin may choose a cluster's ID. One ID never names both a node and a cluster,
// so that "proxy cluster n-…" in a route, a refusal or a log never reads as the node with that ID:
// a cluster cannot take a node's ID, nor a node a cluster's.
func TestClusterIDsAreNotNodeIDs(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		c := openCatalogOn(t, db)
		n := testNode(t, "gw-1")
		if _, err := c.RegisterNode(ctx, n); err != nil {
			t.Fatal(err)
		}
		if cl, err := c.AddCluster(ctx, "lookalike", n.ID); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "gw-1") {
			t.Fatalf("AddCluster with node gw-1's ID %s = %+v, %v; want a conflict naming the node", n.ID, cl, err)
		}
		cl, err := c.AddCluster(ctx, "prod", "")
		if err != nil {
			t.Fatal(err)
		}
		m := testNode(t, "gw-2")
		m.ID = cl.ID
		if got, err := c.RegisterNode(ctx, m); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "prod") {
			t.Fatalf("RegisterNode with cluster prod's ID %s = %+v, %v; want a conflict naming the cluster", cl.ID, got, err)
		}
	})
}
