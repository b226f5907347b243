// Package route holds the full-path tests of "a node carries only the resources it is a candidate
// for" (issue 16): a device that aims its own WireGuard tunnel at a node that is not one of a
// resource's candidate nodes (node/routing: the resource's proxy cluster's workers or the gateways,
// narrowed by its egress filter) gets FATAL 28000 naming the resource and the node, or FATAL 08001
// when no online node is a candidate; each is recorded in the connection log with the node's ID,
// which `ferry admin logs connections --node` filters on; a session through a node whose tags stop
// matching ends. Real pgconn frontends go through hand-made WireGuard tunnels to each node's proxy
// and on to the Azure emulator's real PostgreSQL, on both catalog backends. It has no code of its
// own; the tests are a test binary of their own.
package route
