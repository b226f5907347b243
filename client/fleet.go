package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/tunnel"
)

// nodesInterval is how often the daemon reads the deployment's node list from the control API.
const nodesInterval = 30 * time.Second

// maxNodes bounds the node list the client accepts.
const maxNodes = api.MaxGatewayNodes

// KnownNode is one node of the deployment as the client knows it: how to reach it through WireGuard
// and whether the catalog says it is online: the control API's api.GatewayNode (GET /v1/nodes), kept
// in the client's state.
type KnownNode struct {
	ID                 string            `json:"id"`
	Name               string            `json:"name"`
	WireGuardEndpoint  string            `json:"wireguard_endpoint"`
	WireGuardPublicKey string            `json:"wireguard_public_key"`
	Tags               map[string]string `json:"tags,omitempty"`
	State              string            `json:"state"` // "online" or "offline"
}

func (n KnownNode) online() bool { return n.State == api.NodeOnline }

// label is how logs and status name the node: its name, else its endpoint.
func (n KnownNode) label() string {
	if n.Name != "" {
		return n.Name
	}
	return n.WireGuardEndpoint
}

// errBadNodeList is wrapped by every refusal of a node list.
var errBadNodeList = errors.New("node list refused")

// checkNodeList validates a node list from the control API before the client trusts any of it: a
// node in it becomes a WireGuard peer that the client's connections may be routed to. The list must
// name the node that served it (servedBy: the key the tunnel authenticated), every key must be a
// usable WireGuard peer key (checkKey: not the device's own, not a low-order point) named once, and
// every endpoint a host (IP address or DNS name) and port. One bad entry refuses the whole list: a
// node that serves a mangled list is not trusted with the rest of it.
func checkNodeList(list []KnownNode, servedBy tunnel.Key, checkKey func(tunnel.Key) error) error {
	if len(list) == 0 {
		return fmt.Errorf("%w: it is empty", errBadNodeList)
	}
	if len(list) > maxNodes {
		return fmt.Errorf("%w: %d nodes, at most %d", errBadNodeList, len(list), maxNodes)
	}
	seen := map[tunnel.Key]bool{}
	ids, names := map[string]bool{}, map[string]bool{}
	for i, n := range list {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w: node %d (%q): %s", errBadNodeList, i+1, printable(n.Name), fmt.Sprintf(format, args...))
		}
		if err := api.ValidateNodeName(n.Name); err != nil {
			return bad("unusable name: %v", err)
		}
		if !api.ValidNodeID(n.ID) {
			return bad("unusable ID %q", printable(n.ID))
		}
		// The catalog holds one node per ID and per name: a list naming one twice (two keys under
		// one name) would let status and logs call a node by another's name.
		if ids[n.ID] {
			return bad("ID %s is named twice", n.ID)
		}
		if names[n.Name] {
			return bad("name %s is named twice", n.Name)
		}
		ids[n.ID], names[n.Name] = true, true
		if err := api.ValidateNodeTags(n.Tags); err != nil {
			return bad("%v", err)
		}
		k, err := tunnel.ParseKey(n.WireGuardPublicKey)
		if err != nil {
			return bad("WireGuard public key: %v", err)
		}
		if err := checkKey(k); err != nil {
			return bad("WireGuard public key: %v", err)
		}
		if seen[k] {
			return bad("WireGuard public key %s is named twice", k)
		}
		seen[k] = true
		if err := api.ValidateNodeEndpoint(n.WireGuardEndpoint); err != nil {
			return bad("%v", err)
		}
		if n.State != api.NodeOnline && n.State != api.NodeOffline {
			return bad("unknown state %q", printable(n.State))
		}
	}
	if !seen[servedBy] {
		return fmt.Errorf("%w: it does not name the node that served it (key %s)", errBadNodeList, servedBy)
	}
	return nil
}

// printable makes s safe to put in a log line or an error shown in a terminal.
func printable(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
}

// fetchNodes reads the node list (GET /v1/nodes) from the node in use, through the tunnel.
func (d *Daemon) fetchNodes(ctx context.Context) ([]KnownNode, error) {
	list, err := d.api.GatewayNodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out := make([]KnownNode, len(list))
	for i, n := range list {
		out[i] = KnownNode(n)
	}
	return out, nil
}
