//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/fleetdemo"
	"github.com/ferryhq/ferry/internal/netlab"
	"github.com/ferryhq/ferry/node"
)

// runFleet runs -nodes N (N >= 2): each node a ferry-node process, in a network namespace of its
// own when netns is set and this process may make one (root, ip), on loopback otherwise (saying
// why in one line). It prints the lines the README shows, waits for ctx and stops everything; its
// result is the exit code.
func runFleet(ctx context.Context, o fleetOptions) int {
	netns := o.netns
	if netns {
		if os.Geteuid() != 0 {
			fmt.Fprintf(os.Stderr, "ferry-demo: not root, so no network namespaces: the %d nodes run as ferry-node processes on loopback ports of their own (as root each gets a namespace and an address)\n", o.nodes)
			netns = false
		} else if err := netlab.Check(); err != nil {
			fmt.Fprintf(os.Stderr, "ferry-demo: no network namespaces (%v): the %d nodes run as ferry-node processes on loopback ports of their own\n", strings.TrimPrefix(err.Error(), "netlab: "), o.nodes)
			netns = false
		}
	}
	if o.nodeBinary == "" {
		fmt.Fprintln(os.Stderr, "building ferry-node (go build ./cmd/ferry-node)…")
	}
	where := "on loopback"
	if netns {
		where = "each in a network namespace of its own"
	}
	fmt.Fprintf(os.Stderr, "starting PostgreSQL, the Azure emulator, the catalog database, %d ferry-node processes (%s) and a client daemon…\n", o.nodes, where)
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute) // the first go build of ferry-node takes a while
	f, err := fleetdemo.Start(startCtx, fleetdemo.Options{
		Nodes: o.nodes, Netns: netns, NodeBinary: o.nodeBinary, Logger: o.logger, Routing: true,
		Client: demo.Options{LoopbackIP: o.ip, LoopbackPort: o.port, KeyVault: true},
	})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "ferry-demo: interrupted while starting; everything started is stopped")
			return 130
		}
		startFailed(err)
		return 1
	}
	code := 0
	if err := printFleet(ctx, os.Stdout, f); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-demo:", err)
		code = 1
	} else {
		for _, n := range f.Nodes {
			go func() {
				select {
				case <-n.Done():
					if ctx.Err() == nil {
						fmt.Fprintf(os.Stderr, "ferry-demo: %s (ferry-node) exited; the others keep running. Its log:\n%s", n.Name, n.Log())
					}
				case <-ctx.Done():
				}
			}()
		}
		<-ctx.Done()
	}
	fmt.Fprintln(os.Stderr, "stopping…")
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-demo: stop:", err)
		return 1
	}
	return code
}

// printFleet prints the admin client's lines (as the single-node demo), the catalog, the ferry-node
// binary, and per node its name, state directory, addresses and the commands that use it (an
// enrollment token of its own, doctor); the last line ("nodes: …") says the fleet is ready.
func printFleet(ctx context.Context, w io.Writer, f *fleetdemo.Fleet) error {
	fmt.Fprintln(w, demo.EnvLine(f.Client.Dirs))
	fmt.Fprintln(w, "ready: "+client.ConnString(f.Client.Resource))
	fmt.Fprintln(w, "ready-kv: "+client.ConnString(f.Client.KVResource))
	if f.Lab != nil {
		fmt.Fprintf(w, "catalog: %s (server at %s, namespace %s)\n", f.Catalog.CatalogURL(), f.Catalog.DB.Addr(), f.Catalog.Host.NS)
	} else {
		fmt.Fprintf(w, "catalog: %s (server at %s)\n", f.Catalog.CatalogURL(), f.Catalog.DB.Addr())
	}
	if f.ClusterResource.Name != "" {
		// With 3 nodes or more: the proxy cluster and the egress filter (fleetdemo.Options.Routing).
		last := f.Nodes[len(f.Nodes)-1].Name
		fmt.Fprintf(w, "ready-cluster: %s\n", client.ConnString(f.ClusterResource))
		fmt.Fprintf(w, "ready-egress: %s\n", client.ConnString(f.EgressResource))
		fmt.Fprintf(w, "cluster: %s %s, worker %s (tags env=prod,tier=edge); %s goes through it (--proxy-cluster-id=%s)\n",
			fleetdemo.ClusterName, fleetdemo.ClusterID, last, fleetdemo.ClusterResource, fleetdemo.ClusterID)
		fmt.Fprintf(w, "egress: %s has --egress-filter=%s: only the gateway %s (tags env=prod) carries it\n",
			fleetdemo.EgressResource, fleetdemo.EgressFilter, f.Nodes[1].Name)
	}
	fmt.Fprintln(w, "ferry-node: "+f.NodeBinary)
	for _, n := range f.Nodes {
		tok, err := n.EnrollToken(ctx, node.DefaultAdmin)
		if err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		inNS := ""
		if f.Lab != nil {
			fmt.Fprintf(w, "%s: --state %s address %s namespace %s (enroll https://%s, wireguard udp %s:%d)\n",
				n.Name, n.Dir, n.PublicHost(), n.Host.NS, n.EnrollAddr(), n.PublicHost(), n.WireGuardPort())
			inNS = "ip netns exec " + n.Host.NS + " "
		} else {
			fmt.Fprintf(w, "%s: --state %s address %s (enroll https://%s, wireguard udp %s:%d)\n",
				n.Name, n.Dir, n.PublicHost(), n.EnrollAddr(), n.PublicHost(), n.WireGuardPort())
		}
		fmt.Fprintf(w, "%s-enroll: ferry login %s\n", n.Name, tok)
		fmt.Fprintf(w, "%s-doctor: %s%s doctor --state %s\n", n.Name, inNS, f.NodeBinary, n.Dir)
	}
	if f.Lab != nil {
		fmt.Fprintf(w, "nodes: %d ferry-node processes, each in a network namespace of its own on %s; this machine reaches them through %s (%s)\n",
			len(f.Nodes), f.Lab.Subnet(), f.Attachment.Interface, f.Attachment.Addr)
	} else {
		fmt.Fprintf(w, "nodes: %d ferry-node processes on loopback\n", len(f.Nodes))
	}
	return nil
}
