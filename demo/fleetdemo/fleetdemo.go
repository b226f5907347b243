//go:build linux

// Package fleetdemo runs ferry-demo's fleet (-nodes N): the Azure emulator and the shared catalog
// database in the demo's process, each node a ferry-node process of its own, and the demo's admin
// client in the demo's process. As root, every node runs in a network namespace of its own with
// its own address, the emulator and the catalog on a host of their own (a demo/fleet lab), and the
// demo's own namespace joined to the lab's bridge (netlab.Lab.AttachHere), so that the person
// running the demo reaches every node from their shell as they would reach VMs. Otherwise the
// ferry-node processes listen on loopback ports of their own. With Options.Routing (3 nodes or
// more) the fleet has a proxy cluster whose worker is the last node and an egress-filtered
// resource, to show how resources are routed (issue 16).
package fleetdemo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/fleet"
	"github.com/ferryhq/ferry/internal/netlab"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// Options tune Start.
type Options struct {
	// Nodes is the number of ferry-node processes (2 or more).
	Nodes int
	// Netns runs each node in a network namespace of its own (needs what netlab needs: root and
	// ip); false runs them on loopback.
	Netns bool
	// NodeBinary is the ferry-node to run; empty builds one (fleet.BuildNode) into Dir.
	NodeBinary string
	// Dir is where everything is kept; empty means a new temp dir removed by Close.
	Dir    string
	Logger *slog.Logger
	// Client is what the admin client adds and connects (demo.Options' LoopbackIP, LoopbackPort,
	// KeyVault, NoResource; its Logger is Logger).
	Client demo.Options
	// Node, if set, adjusts node i's config (0 for node-1) before it is made: its name, tags and
	// anything else a node of the demo should have. A node whose config names a proxy cluster
	// (ClusterID) is joined as its worker once the admin client has made the cluster with that ID.
	Node func(i int, cfg *node.Config)
	// Routing (3 nodes or more) shows proxy clusters and egress filters: node-2 is a gateway tagged
	// env=prod, the last node a worker of the proxy cluster ClusterName (ID ClusterID, the reference
	// page's example) tagged env=prod, and the admin client adds and connects ClusterResource
	// (carried by the cluster's worker only) and EgressResource (egress filter tag:env=prod: carried
	// by node-2 only).
	Routing bool
}

// The demo's proxy cluster and routed resources (Options.Routing).
const (
	ClusterName     = "demo-edge"
	ClusterID       = "n-1a2b345c67890123"
	ClusterResource = "azure-pg-mi-edge"
	EgressResource  = "azure-pg-mi-egress"
	EgressFilter    = "tag:env=prod"
)

// Fleet is a running demo fleet.
type Fleet struct {
	// Lab is the nodes' lab (nil on loopback); Attachment links this process's namespace to it.
	Lab        *netlab.Lab
	Attachment netlab.Attachment
	// Catalog is the emulator and the shared catalog database (on the lab's host "catalog", or on
	// loopback).
	Catalog *fleet.Catalog
	// Nodes are node-1 … node-N, each a ferry-node process; NodeBinary the ferry-node they run.
	Nodes      []*fleet.Node
	NodeBinary string
	// Client is the demo's admin device, enrolled with node-1.
	Client demo.AdminClient
	// ClusterResource and EgressResource are the routed resources as connected (Options.Routing).
	ClusterResource, EgressResource client.ResourceStatus

	dir     string
	ownsDir bool
}

// Start starts the fleet; on error everything started so far is stopped.
func Start(ctx context.Context, opt Options) (f *Fleet, err error) {
	if opt.Nodes < 2 {
		return nil, fmt.Errorf("fleetdemo: %d nodes: a fleet has 2 or more", opt.Nodes)
	}
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f = &Fleet{dir: opt.Dir, NodeBinary: opt.NodeBinary}
	if f.dir == "" {
		if f.dir, err = os.MkdirTemp("", "ferry-demo-"); err != nil {
			return nil, fmt.Errorf("fleetdemo: %w", err)
		}
		f.ownsDir = true
	}
	defer func() {
		if err != nil {
			_ = f.Close()
		}
	}()
	if f.NodeBinary == "" {
		if f.NodeBinary, err = fleet.BuildNode(ctx, filepath.Join(f.dir, "bin")); err != nil {
			return nil, fmt.Errorf("fleetdemo: build ferry-node: %w", err)
		}
	}
	hosts := make([]*netlab.Host, opt.Nodes)
	catHost := netlab.Here()
	if opt.Netns {
		if f.Lab, err = netlab.New(ctx); err != nil {
			return nil, fmt.Errorf("fleetdemo: %w", err)
		}
		if catHost, err = f.Lab.AddHost(ctx, "catalog"); err != nil {
			return nil, fmt.Errorf("fleetdemo: %w", err)
		}
		for i := range hosts {
			if hosts[i], err = f.Lab.AddHost(ctx, nodeName(i)); err != nil {
				return nil, fmt.Errorf("fleetdemo: %w", err)
			}
		}
		if f.Attachment, err = f.Lab.AttachHere(ctx); err != nil {
			return nil, fmt.Errorf("fleetdemo: %w", err)
		}
	} else {
		for i := range hosts {
			hosts[i] = netlab.Here()
		}
	}
	if f.Catalog, err = fleet.StartCatalog(ctx, f.Lab, catHost, log); err != nil {
		return nil, fmt.Errorf("fleetdemo: %w", err)
	}
	if err := f.Catalog.StartDB(ctx); err != nil {
		return nil, fmt.Errorf("fleetdemo: %w", err)
	}
	bins := fleet.Binaries{Node: f.NodeBinary}
	var ports *portPicker
	if !opt.Netns {
		ports = &portPicker{}
		defer ports.release()
	}
	cfgs := make([]node.Config, opt.Nodes)
	for i, h := range hosts {
		if cfgs[i], err = f.nodeConfig(h, i, ports); err != nil {
			return nil, err
		}
		if opt.Routing && opt.Nodes >= 3 && i == 1 {
			cfgs[i].Tags = map[string]string{"env": "prod"}
		}
		if opt.Routing && opt.Nodes >= 3 && i == opt.Nodes-1 {
			cfgs[i].Tags, cfgs[i].ClusterID = map[string]string{"env": "prod", "tier": "edge"}, ClusterID
		}
		if opt.Node != nil {
			opt.Node(i, &cfgs[i])
		}
	}
	if cfgs[0].ClusterID != "" {
		return nil, errors.New("fleetdemo: node-1 makes the deployment: it cannot be a proxy cluster's worker")
	}
	ports.release() // the nodes take them now
	// node-1 makes the deployment; the gateways join it, all at once, and then all start at once;
	// the workers join once the admin client has made their clusters.
	f.Nodes = make([]*fleet.Node, opt.Nodes)
	if f.Nodes[0], err = fleet.InitNode(ctx, bins, hosts[0], filepath.Join(f.dir, nodeName(0)), cfgs[0]); err != nil {
		return nil, fmt.Errorf("fleetdemo: %w", err)
	}
	var gateways, workers []int
	for i := 1; i < opt.Nodes; i++ {
		if cfgs[i].ClusterID != "" {
			workers = append(workers, i)
		} else {
			gateways = append(gateways, i)
		}
	}
	join := func(idx []int) error {
		err := each(len(idx), func(j int) (err error) {
			i := idx[j]
			f.Nodes[i], err = fleet.JoinNode(ctx, bins, hosts[i], filepath.Join(f.dir, nodeName(i)), cfgs[i])
			return err
		})
		if err != nil {
			return err
		}
		// Each ready when this namespace reaches it: where the person running the demo is.
		return each(len(idx), func(j int) error { return f.Nodes[idx[j]].Start(ctx, netlab.Here()) })
	}
	if err := join(append([]int{}, gateways...)); err != nil {
		return nil, fmt.Errorf("fleetdemo: %w", err)
	}
	if err := f.Nodes[0].Start(ctx, netlab.Here()); err != nil {
		return nil, fmt.Errorf("fleetdemo: %w", err)
	}
	copt := opt.Client
	copt.Logger = log
	if f.Client, err = demo.StartAdminClient(ctx, f.dir, f.Catalog.Emu, f.Nodes[0].AdminToken, copt); err != nil {
		return nil, fmt.Errorf("fleetdemo: %w", err)
	}
	made := map[string]bool{}
	for _, i := range workers {
		id := cfgs[i].ClusterID
		if made[id] {
			continue
		}
		name := ClusterName
		if id != ClusterID {
			name = "cluster-" + id[len(id)-6:]
		}
		if _, err := f.Client.Daemon.API().AddCluster(ctx, api.ClusterAdd{Name: name, ID: id}); err != nil {
			return nil, fmt.Errorf("fleetdemo: add proxy cluster %s (%s): %w", name, id, err)
		}
		made[id] = true
	}
	if err := join(workers); err != nil {
		return nil, fmt.Errorf("fleetdemo: %w", err)
	}
	if opt.Routing && opt.Nodes >= 3 {
		if f.ClusterResource, err = f.addRouted(ctx, ClusterResource, opt.Client.LoopbackIP, func(r *resource.Resource) { r.ProxyClusterID = ClusterID }); err != nil {
			return nil, err
		}
		if f.EgressResource, err = f.addRouted(ctx, EgressResource, opt.Client.LoopbackIP, func(r *resource.Resource) { r.EgressFilter = EgressFilter }); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// addRouted adds a resource on the emulator's server as the admin client, with edit's proxy cluster
// or egress filter, listening on ip (a port of its own), and connects it.
func (f *Fleet) addRouted(ctx context.Context, name, ip string, edit func(*resource.Resource)) (client.ResourceStatus, error) {
	r := resource.New(name)
	r.Hostname, r.Database, r.Username, r.ManagedIdentityClientID = f.Catalog.Emu.Hostname(), demo.Database, demo.Role, demo.ClientID
	r.BindInterface = ip
	r.Tags = map[string]string{"env": "production", "team": "data"}
	edit(&r)
	if _, err := f.Client.Daemon.API().AddDatasource(ctx, r); err != nil {
		return client.ResourceStatus{}, fmt.Errorf("fleetdemo: add %s: %w", name, err)
	}
	rs, err := f.Client.Daemon.Connect(ctx, name)
	if err != nil {
		return client.ResourceStatus{}, fmt.Errorf("fleetdemo: %w", err)
	}
	return rs, nil
}

// each runs fn(0) … fn(n-1) at once and returns their errors joined.
func each(n int, fn func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// nodeName is the name of node i (0-based): node-1, node-2, ….
func nodeName(i int) string { return "node-" + strconv.Itoa(i+1) }

// nodeConfig is node i's config on host h: in a lab (ports nil), the defaults' ports at the
// host's address; on loopback, ports of its own from ports, and its metrics endpoint on one too.
func (f *Fleet) nodeConfig(h *netlab.Host, i int, ports *portPicker) (node.Config, error) {
	cfg := f.Catalog.NodeConfig(h)
	cfg.Name = nodeName(i)
	if ports == nil {
		return cfg, nil
	}
	enroll, err := ports.pick("tcp")
	if err != nil {
		return cfg, err
	}
	wg, err := ports.pick("udp")
	if err != nil {
		return cfg, err
	}
	metrics, err := ports.pick("tcp")
	if err != nil {
		return cfg, err
	}
	cfg.EnrollListen, cfg.WireGuardPort = h.HostPort(enroll), wg
	cfg.MetricsListen = net.JoinHostPort("127.0.0.1", strconv.Itoa(metrics))
	return cfg, nil
}

// portPicker picks free ports of 127.0.0.1 and holds them until release, so that no two picks are
// the same port.
type portPicker struct{ held []io.Closer }

// pick is a port of 127.0.0.1 that nothing else listens on (network "tcp" or "udp").
func (p *portPicker) pick(network string) (int, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("fleetdemo: pick a UDP port: %w", err)
		}
		p.held = append(p.held, c)
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("fleetdemo: pick a TCP port: %w", err)
	}
	p.held = append(p.held, ln)
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// release lets the picked ports go (nil: nothing).
func (p *portPicker) release() {
	if p == nil {
		return
	}
	for _, c := range p.held {
		_ = c.Close()
	}
	p.held = nil
}

// Dir is the fleet's directory (the nodes' state directories, the client's, the built ferry-node).
func (f *Fleet) Dir() string { return f.dir }

// Close stops the admin client, the nodes (SIGTERM, all at once, SIGKILL after 10 s), the emulator
// and the catalog database, removes the lab (its namespaces and the link to this namespace) and,
// when Start made it, the directory.
func (f *Fleet) Close() error {
	errs := []error{f.Client.Close()}
	errs = append(errs, each(len(f.Nodes), func(i int) error {
		n := f.Nodes[i]
		if n == nil {
			return nil
		}
		if err := n.Stop(); err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		return nil
	}))
	if f.Catalog != nil {
		errs = append(errs, f.Catalog.Close())
	}
	if f.Lab != nil {
		errs = append(errs, f.Lab.Close())
	}
	if f.ownsDir {
		errs = append(errs, os.RemoveAll(f.dir))
	}
	return errors.Join(errs...)
}
