package api

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"time"
)

// Cluster is a proxy cluster: a named group of nodes (its workers) that alone carry the resources
// whose proxy_cluster_id is its ID. Resources without one are carried by the gateways.
type Cluster struct {
	ID        string    `json:"id"`   // "n-" and 16 lower-case hex digits, e.g. n-1a2b345c67890123
	Name      string    `json:"name"` // a DNS label, unique in the deployment
	CreatedAt time.Time `json:"created_at"`
	Workers   []string  `json:"workers"` // IDs of its worker nodes
}

// ClusterList is the answer of GET /v1/admin/clusters.
type ClusterList struct {
	Clusters []Cluster `json:"clusters"`
}

// ClusterAdd is the body of POST /v1/admin/clusters. ID is optional: empty gives a new one; an
// admin sets it to recreate a cluster that resources (such as a copied configuration) already name.
type ClusterAdd struct {
	Name string `json:"name"`
	ID   string `json:"id,omitempty"`
}

var clusterIDRE = regexp.MustCompile(`^n-[0-9a-f]{16}$`)

// ValidClusterID reports whether id has the form of a proxy cluster ID: "n-" and 16 lower-case hex
// digits (the product page's form, as node IDs).
func ValidClusterID(id string) bool { return clusterIDRE.MatchString(id) }

// ValidateClusterName checks a proxy cluster name: a DNS label (1-63 lower-case letters, digits and
// dashes, no dash at either end) that does not look like a cluster ID, so that a name never hides
// another cluster.
func ValidateClusterName(name string) error {
	if !nodeNameRE.MatchString(name) {
		return fmt.Errorf("proxy cluster name %q is invalid: use 1-63 lower-case letters, digits and dashes, starting and ending with a letter or digit (a DNS label, such as prod-westeurope)", name)
	}
	if ValidClusterID(name) {
		return fmt.Errorf("proxy cluster name %q has the form of a cluster ID (n- and 16 hex digits); choose another name", name)
	}
	return nil
}

// Clusters lists the proxy clusters (admin only).
func (c *Client) Clusters(ctx context.Context) ([]Cluster, error) {
	var out ClusterList
	return out.Clusters, c.do(ctx, http.MethodGet, "/v1/admin/clusters", nil, &out)
}

// Cluster returns one proxy cluster by ID or name (admin only).
func (c *Client) Cluster(ctx context.Context, idOrName string) (Cluster, error) {
	var out Cluster
	return out, c.do(ctx, http.MethodGet, "/v1/admin/clusters/"+url.PathEscape(idOrName), nil, &out)
}

// AddCluster adds a proxy cluster (admin only); in.ID empty gives a new ID.
func (c *Client) AddCluster(ctx context.Context, in ClusterAdd) (Cluster, error) {
	var out Cluster
	return out, c.do(ctx, http.MethodPost, "/v1/admin/clusters", in, &out)
}

// DeleteCluster deletes a proxy cluster (admin only); one that resources name or that has workers
// is refused (409), naming them.
func (c *Client) DeleteCluster(ctx context.Context, idOrName string) (Cluster, error) {
	var out Cluster
	return out, c.do(ctx, http.MethodDelete, "/v1/admin/clusters/"+url.PathEscape(idOrName), nil, &out)
}
