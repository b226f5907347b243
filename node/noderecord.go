package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/internal/version"
	"github.com/ferryhq/ferry/node/catalog"
)

// nodeFile keeps the node's identity in the state directory: its ID, made by init and kept for
// good (the name and tags are in config.json, for people to edit).
const nodeFile = "node.json"

type nodeIdentity struct {
	ID string `json:"id"`
}

// defaultNodeName makes a node name of a host name: its first label, lower case, other characters
// as dashes; "node" when nothing usable is left.
func defaultNodeName(host string) string {
	label, _, _ := strings.Cut(strings.ToLower(host), ".")
	b := []byte(label)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			b[i] = '-'
		}
	}
	name := strings.Trim(string(b[:min(len(b), 63)]), "-")
	if api.ValidateNodeName(name) != nil {
		return "node"
	}
	return name
}

// writeNodeIdentity gives the node in dir a new ID.
func writeNodeIdentity(dir string) (string, error) {
	id := catalog.NewNodeID()
	b, _ := json.Marshal(nodeIdentity{ID: id})
	if err := os.WriteFile(filepath.Join(dir, nodeFile), append(b, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", nodeFile, err)
	}
	return id, nil
}

// nodeID reads the node's ID from dir, making one for a state directory from before node IDs.
func nodeID(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, nodeFile))
	if errors.Is(err, os.ErrNotExist) {
		return writeNodeIdentity(dir)
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", nodeFile, err)
	}
	var id nodeIdentity
	if err := json.Unmarshal(b, &id); err != nil || !api.ValidNodeID(id.ID) {
		return "", fmt.Errorf("%s: no node ID (n- and 16 hex digits) in it; restore it from a backup, or remove it to register as a new node", filepath.Join(dir, nodeFile))
	}
	return id.ID, nil
}

// selfRecord is the node's own catalog record as of now.
func (n *Node) selfRecord(cert tls.Certificate) (catalog.Node, error) {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return catalog.Node{}, fmt.Errorf("enrollment certificate: %w", err)
	}
	_, enrollPort, _ := net.SplitHostPort(n.enrollLn.Addr().String())
	now := time.Now()
	return catalog.Node{
		ID:                 n.id,
		Name:               n.cfg.Name,
		ClusterID:          n.cfg.ClusterID, // a worker of it when set (RegisterNode sets Kind)
		Tags:               n.lastTags(),
		WireGuardPublicKey: n.pub.String(),
		WireGuardEndpoint:  net.JoinHostPort(n.cfg.PublicHost, strconv.Itoa(int(n.tun.Port()))),
		EnrollURL:          "https://" + net.JoinHostPort(n.cfg.PublicHost, enrollPort),
		EnrollCertSHA256:   api.CertSHA256(leaf),
		Version:            shortVersion(version.Read()),
		StartedAt:          now,
		LastHeartbeat:      now,
	}, nil
}

// lastTags are the tags the node last knew it had: config.json's until it registered, then its
// catalog record's as of its last heartbeat. They only matter when the record is inserted (the
// first registration, or again after the record was deleted): an existing record keeps the
// catalog's tags, and a deleted one comes back with what an admin last set, not config.json's first
// tags (which could put the node back in an egress filter an admin moved it out of).
func (n *Node) lastTags() map[string]string {
	if s := n.self.Load(); s != nil {
		return s.Tags
	}
	return n.cfg.Tags
}

// shortVersion is the module version and, when known, the first 12 digits of the revision.
func shortVersion(in version.Info) string {
	v := in.Module
	if in.Revision != "" {
		v += " (" + in.Revision[:min(12, len(in.Revision))]
		if in.Modified {
			v += "+modified"
		}
		v += ")"
	}
	return v
}

// register puts the node's record in the catalog (start and after its record was deleted).
func (n *Node) register(ctx context.Context) error {
	rec, err := n.selfRecord(n.enrollCert)
	if err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	stored, err := n.cat.RegisterNode(ctx, rec)
	if err != nil {
		return err
	}
	n.startedAt.Store(stored.StartedAt.Unix())
	n.self.Store(&stored)
	n.authz.Kick() // the read cache's snapshot gets the node's own record
	// config.json's tags are the first ones only: say so when they no longer are the node's.
	if len(n.cfg.Tags) > 0 && api.FormatNodeTags(n.cfg.Tags) != api.FormatNodeTags(stored.Tags) {
		n.log.Warn("config.json's tags are not this node's tags in the catalog, which apply: they only set a new node's first tags; change them with `ferry admin nodes update "+stored.Name+" --tags ...`",
			"config_tags", api.FormatNodeTags(n.cfg.Tags), "catalog_tags", api.FormatNodeTags(stored.Tags))
	}
	return nil
}

// heartbeatLoop writes the node's heartbeat every catalog.NodeHeartbeatInterval until the node
// closes; a record deleted meanwhile (the node was offline long enough) is registered again.
func (n *Node) heartbeatLoop() {
	defer n.wg.Done()
	every := catalog.NodeHeartbeatInterval
	if n.cfg.HeartbeatTestInterval > 0 {
		every = n.cfg.HeartbeatTestInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(n.ctx, every)
		err := n.cat.InstanceHeartbeat(ctx, n.id, time.Unix(n.startedAt.Load(), 0), time.Now())
		if errors.Is(err, catalog.ErrNotFound) {
			err = n.register(ctx)
		} else if err == nil {
			// The node's own record as the catalog has it now (an admin may have changed its tags):
			// what admission falls back to while the record is missing, and what registering again
			// after a deletion keeps (lastTags).
			if rec, rerr := n.cat.Node(ctx, n.id); rerr == nil {
				n.self.Store(&rec)
			}
		}
		cancel()
		// A record another process holds (a copied state directory) is left to it: taking it back
		// would make the two swap the node's endpoint every heartbeat. The error says what to do.
		if err != nil && n.ctx.Err() == nil {
			n.log.Error("node heartbeat", "err", err)
		}
	}
}

// markStopped records a clean stop, so that the node shows offline at once.
func (n *Node) markStopped() {
	if n.cat == nil || n.id == "" || !n.registered {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.cat.NodeStopped(ctx, n.id, time.Now()); err != nil {
		n.log.Error("record node stop", "err", err)
	}
}

// ID returns the node's ID ("n-…").
func (n *Node) ID() string { return n.id }
