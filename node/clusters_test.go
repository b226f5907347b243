package node_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node"
)

// TestInitJoinCluster: `init --join ... --cluster ID` makes a worker of an existing proxy cluster:
// it runs and registers with kind worker and the cluster, and the cluster lists it. A cluster that
// does not exist, an ID of the wrong form, or --cluster on a deployment's first node is refused
// with an error saying what to do, leaving no files.
func TestInitJoinCluster(t *testing.T) {
	a := startBareNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := a.Catalog().AddCluster(ctx, "prod", "")
	if err != nil {
		t.Fatal(err)
	}
	shared := "sqlite:" + filepath.Join(a.dir, "ferry.db")
	for _, tc := range []struct {
		name, cluster string
		join          bool
		want          string
	}{
		{"unknown cluster", "n-00000000000000aa", true, `--cluster: proxy cluster "n-00000000000000aa": not found`},
		{"malformed ID", "prod", true, `cluster_id "prod" is not a proxy cluster ID`},
		{"first node", cl.ID, false, "--cluster is for a node joining a deployment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := a.cfg
			c.CatalogURL, c.Name, c.ClusterID = shared, "gw-c", tc.cluster
			if !tc.join {
				c.CatalogURL = "sqlite:" + filepath.Join(t.TempDir(), "new.db")
			}
			dir := filepath.Join(t.TempDir(), "c")
			if tc.join {
				err = node.Join(ctx, dir, c)
			} else {
				_, err = node.Init(ctx, dir, c, node.DefaultAdmin)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("a failed init left %d files", len(entries))
			}
		})
	}

	cfg := a.cfg
	cfg.CatalogURL, cfg.Name, cfg.ClusterID = shared, "worker-1", cl.ID
	dirB := filepath.Join(t.TempDir(), "b")
	if err := node.Join(ctx, dirB, cfg); err != nil {
		t.Fatal(err)
	}
	saved, err := node.LoadConfig(filepath.Join(dirB, node.ConfigFile))
	if err != nil || saved.ClusterID != cl.ID {
		t.Fatalf("joined config %+v, %v", saved, err)
	}
	nb := &bareNode{dir: dirB, cfg: saved, log: &syncBuffer{}}
	nb.start(t)
	w, err := a.Catalog().Node(ctx, nb.ID())
	if err != nil || w.Kind != api.NodeKindWorker || w.ClusterID != cl.ID {
		t.Fatalf("worker's record %+v, %v", w, err)
	}
	if g, err := a.Catalog().Node(ctx, a.ID()); err != nil || g.Kind != api.NodeKindGateway || g.ClusterID != "" {
		t.Fatalf("gateway's record %+v, %v", g, err)
	}
	got, err := a.Catalog().Cluster(ctx, "prod")
	if err != nil || len(got.Workers) != 1 || got.Workers[0] != nb.ID() {
		t.Fatalf("cluster %+v, %v", got, err)
	}
}
