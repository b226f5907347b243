// Package routing decides which nodes of a fleet may carry a resource's connections: the workers
// of the resource's proxy cluster (or, without one, the gateways: nodes in no cluster), narrowed
// to the nodes whose tags match the resource's egress filter (resource/tagexpr). The node's
// admission, the health scheduler and the control API's routes all ask this package, so they agree.
package routing

import (
	"fmt"

	"github.com/ferryhq/ferry/resource/tagexpr"
)

// Node is what routing needs to know of a node.
type Node struct {
	ID        string
	Name      string
	ClusterID string // the proxy cluster it is a worker of; "" for a gateway
	Tags      map[string]string
	Online    bool
}

// Choice is where a resource's connections may go.
type Choice struct {
	// Candidates are the nodes that may carry it, online or not, in the order given.
	Candidates []Node
	// Online are the candidates that are online.
	Online []Node
	// Reason says why no node can carry it when Online is empty ("no node can reach it: …").
	Reason string
}

// Candidates returns the nodes of nodes that may carry a resource with this proxy cluster ID and
// egress filter (either may be empty). The error is the filter's parse error.
func Candidates(clusterID, egressFilter string, nodes []Node) (Choice, error) {
	var filter *tagexpr.Expr
	if egressFilter != "" {
		e, err := tagexpr.Parse(egressFilter)
		if err != nil {
			return Choice{}, fmt.Errorf("routing: %w", err)
		}
		filter = e
	}
	var c Choice
	inGroup, inGroupOnline := 0, 0
	for _, n := range nodes {
		if n.ClusterID != clusterID {
			continue
		}
		inGroup++
		if n.Online {
			inGroupOnline++
		}
		if filter != nil && !filter.Match(n.Tags) {
			continue
		}
		c.Candidates = append(c.Candidates, n)
		if n.Online {
			c.Online = append(c.Online, n)
		}
	}
	if len(c.Online) > 0 {
		return c, nil
	}
	group := "gateway"
	if clusterID != "" {
		group = "worker of proxy cluster " + clusterID
	}
	switch {
	case inGroup == 0 && clusterID != "":
		c.Reason = fmt.Sprintf("no node can reach it: proxy cluster %s has no workers", clusterID)
	case inGroup == 0:
		c.Reason = "no node can reach it: the deployment has no gateway (every node is a proxy cluster worker)"
	case filter != nil && len(c.Candidates) == 0:
		c.Reason = fmt.Sprintf("no node can reach it: no %s matches egress filter %s", group, filter)
	case filter != nil:
		c.Reason = fmt.Sprintf("no node can reach it: no online %s matches egress filter %s", group, filter)
	case inGroupOnline == 0 && clusterID != "":
		c.Reason = fmt.Sprintf("no node can reach it: no worker of proxy cluster %s is online", clusterID)
	default:
		c.Reason = "no node can reach it: no gateway is online"
	}
	return c, nil
}

// Serves reports whether self may carry a resource with this proxy cluster ID and egress filter,
// and when it may not, why (naming the cluster or the filter, never a secret). Whether self is
// online does not matter: a node that serves a connection is running. The error is the filter's
// parse error; callers refuse the connection then (fail closed).
func Serves(clusterID, egressFilter string, self Node) (bool, string, error) {
	switch {
	case clusterID != "" && self.ClusterID != clusterID:
		return false, fmt.Sprintf("the resource is carried by proxy cluster %s", clusterID), nil
	case clusterID == "" && self.ClusterID != "":
		return false, fmt.Sprintf("the resource is carried by gateways, and this node is a worker of proxy cluster %s", self.ClusterID), nil
	}
	if egressFilter == "" {
		return true, "", nil
	}
	e, err := tagexpr.Parse(egressFilter)
	if err != nil {
		return false, "", fmt.Errorf("routing: %w", err)
	}
	if !e.Match(self.Tags) {
		return false, fmt.Sprintf("the node's tags do not match egress filter %s", e), nil
	}
	return true, "", nil
}
