package node

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/routing"
	"github.com/ferryhq/ferry/node/store/storetest"
)

// TestDoctorSelfWithoutRecord: `ferry-node doctor` checks a resource from this host only when the
// node is one of its candidates. Without the node's record in the catalog (a node initialised and
// not started yet, or its record deleted) it judges by the node's config (its cluster and tags), as
// admission does, instead of checking every resource: a worker of another cluster, or a node the
// egress filter leaves out, does not open connections to the server.
func TestDoctorSelfWithoutRecord(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	db := storetest.Open(t, filepath.Join(dir, "catalog.db"))
	cat, err := catalog.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	const cl = "n-1a2b345c67890123"
	for _, tc := range []struct {
		name    string
		id      string // node.json's ID; "" writes none
		cfg     Config
		cluster string
		filter  string
		serves  bool
	}{
		{"record missing, tags leave it out", catalog.NewNodeID(), Config{Name: "gw-dev", Tags: map[string]string{"env": "dev"}}, "", "tag:env=prod", false},
		{"record missing, tags match", catalog.NewNodeID(), Config{Name: "gw-prod", Tags: map[string]string{"env": "prod"}}, "", "tag:env=prod", true},
		{"record missing, a worker of another cluster", catalog.NewNodeID(), Config{Name: "w-1", ClusterID: "n-00000000000000aa"}, cl, "", false},
		{"record missing, a worker, a gateway resource", catalog.NewNodeID(), Config{Name: "w-1", ClusterID: cl}, "", "", false},
		{"no node.json, untagged", "", Config{Name: "gw"}, "", "tag:env=prod", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sdir := t.TempDir()
			if tc.id != "" {
				b, _ := json.Marshal(nodeIdentity{ID: tc.id})
				if err := os.WriteFile(filepath.Join(sdir, nodeFile), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			self := doctorSelf(ctx, sdir, tc.cfg, cat)
			ok, why, err := routing.Serves(tc.cluster, tc.filter, self)
			if err != nil || ok != tc.serves {
				t.Errorf("Serves(%q, %q, %+v) = %v %q %v, want %v", tc.cluster, tc.filter, self, ok, why, err, tc.serves)
			}
		})
	}
}
