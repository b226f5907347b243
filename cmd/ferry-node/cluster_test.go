package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/store"
)

// TestInitCluster: `ferry-node init --join URL --cluster ID` writes a worker's config naming the
// cluster; an unknown cluster, a malformed ID, or --cluster without --join is refused saying what
// to do.
func TestInitCluster(t *testing.T) {
	ctx := context.Background()
	path := newSQLiteCatalog(t)
	db, err := store.Open(ctx, store.Options{URL: "sqlite:" + path})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := cat.AddCluster(ctx, "prod", "")
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"init", "--public-host", "127.0.0.1", "--enroll-listen", "127.0.0.1:0", "--name", "worker-1"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown cluster", []string{"--join", "sqlite:" + path, "--cluster", "n-00000000000000aa"}, `--cluster: proxy cluster "n-00000000000000aa": not found`},
		{"malformed ID", []string{"--join", "sqlite:" + path, "--cluster", "prod"}, `cluster_id "prod" is not a proxy cluster ID`},
		{"without --join", []string{"--cluster", cl.ID}, "--cluster is for a node joining a deployment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runNode(t, append(append(base, "--state", filepath.Join(t.TempDir(), "n")), tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v: %s; want %q", err, out, tc.want)
			}
		})
	}
	state := filepath.Join(t.TempDir(), "w")
	if out, err := runNode(t, append(base, "--state", state, "--join", "sqlite:"+path, "--cluster", cl.ID)...); err != nil {
		t.Fatalf("init --join --cluster: %v: %s", err, out)
	}
	cfg, err := node.LoadConfig(filepath.Join(state, node.ConfigFile))
	if err != nil || cfg.ClusterID != cl.ID {
		t.Fatalf("config %+v, %v", cfg, err)
	}
}
