package healthview

import "github.com/ferryhq/ferry/node/catalog"

// nodeClusterID is the proxy cluster node n is a worker of ("" for a gateway).
//
// TODO(merge with the clusters branch): return n.ClusterID once catalog.Node has it (nodes.cluster_id).
func nodeClusterID(n catalog.Node) string { return "" }
