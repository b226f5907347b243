// Command ferry-demo runs a whole Ferry installation on loopback: a real PostgreSQL behind the Azure
// emulator, a node, an enrolled client daemon and the example resource azure-pg-mi-prod, connected in
// loopback mode, plus the secret store demo-kv (the emulator's Key Vault) and azure-pg-mi-kv, whose
// username and client ID the node reads from it. When ready it prints
//
//	export FERRY_CONFIG_DIR=… FERRY_RUNTIME_DIR=…
//	ready: host=127.0.0.1 port=10001 dbname=production user=mi_user sslmode=disable
//	ready-kv: host=127.0.0.1 port=10002 dbname=production user='' sslmode=disable
//
// Paste the export line into another shell as is to use `ferry status`, `ferry connect` and
// `ferry admin` as the demo's admin; give the ready line to psql. Ctrl-C tears everything down.
//
// -nodes N (2 or more) starts N nodes sharing one PostgreSQL catalog (an Azure Database for
// PostgreSQL server of the emulator's, which the nodes log in to with their managed identity), each
// a ferry-node process of its own (built from this source tree with go build, or -ferry-node). As
// root each runs in a network namespace of its own with its own address, the emulator and the
// catalog on a host of their own, and this machine's namespace joined to the lab's bridge so that
// the ferry CLI in any shell of the machine reaches every node; otherwise (or with -netns=false)
// the nodes listen on loopback ports of their own. It prints, per node, its name, state directory,
// addresses, a `ferry login` command for another device through it and its doctor command, then a
// "nodes:" line. On other systems than Linux the nodes run inside the demo's process.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/node"
)

func main() {
	verbose := flag.Bool("verbose", false, "log what every part does")
	ip := flag.String("ip", "127.0.0.1", "loopback IP azure-pg-mi-prod listens on")
	port := flag.Int("port", 0, "loopback port for azure-pg-mi-prod (1024-64999; default: the first free one from 10001)")
	nodes := flag.Int("nodes", 1, "number of nodes sharing one PostgreSQL catalog, each a ferry-node process (1: the single-node demo with the SQLite catalog)")
	netns := flag.Bool("netns", true, "with -nodes: run each node in a network namespace of its own with its own address when root (false: ferry-node processes on loopback ports)")
	nodeBinary := flag.String("ferry-node", "", "with -nodes: the ferry-node binary to run (default: build it from this source tree into the demo's temp dir)")
	flag.Parse()
	if err := checkNodes(*nodes); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-demo:", err)
		os.Exit(2)
	}
	// SIGHUP too: closing the terminal must tear the demo down as Ctrl-C does.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	o := fleetOptions{
		nodes: *nodes, netns: *netns, nodeBinary: *nodeBinary, ip: *ip, port: *port,
		logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	}
	if *nodes > 1 {
		os.Exit(runFleet(ctx, o))
	}
	os.Exit(runInProcess(ctx, o))
}

// fleetOptions are ferry-demo's flags.
type fleetOptions struct {
	nodes      int
	netns      bool
	nodeBinary string
	ip         string
	port       int
	logger     *slog.Logger
}

// runInProcess runs the demo with its nodes inside this process (the single-node demo) until ctx
// ends, and returns the exit code.
func runInProcess(ctx context.Context, o fleetOptions) int {
	if o.nodes > 1 {
		fmt.Fprintf(os.Stderr, "starting PostgreSQL, the Azure emulator, the catalog database, %d ferry-nodes and a client daemon…\n", o.nodes)
	} else {
		fmt.Fprintln(os.Stderr, "starting PostgreSQL, the Azure emulator, ferry-node and a client daemon…")
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	env, err := demo.Start(startCtx, demo.Options{Logger: o.logger, LoopbackIP: o.ip, LoopbackPort: o.port, KeyVault: true, Nodes: o.nodes})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "ferry-demo: interrupted while starting; everything started is stopped")
			return 130
		}
		startFailed(err)
		return 1
	}
	fmt.Println(env.EnvLine())
	fmt.Println("ready: " + client.ConnString(env.Resource))
	fmt.Println("ready-kv: " + client.ConnString(env.KVResource))
	if o.nodes > 1 {
		if err := printNodes(ctx, env); err != nil {
			fmt.Fprintln(os.Stderr, "ferry-demo:", err)
		}
	} else {
		fmt.Println("node: --state " + env.NodeDir)
	}
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "stopping…")
	if err := env.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-demo: stop:", err)
		return 1
	}
	return 0
}

// startFailed says why the demo could not start, and what to do when an address was taken.
func startFailed(err error) {
	fmt.Fprintln(os.Stderr, "ferry-demo:", err)
	if strings.Contains(err.Error(), "address already in use") {
		fmt.Fprintln(os.Stderr, "ferry-demo: another program holds that address; choose another with -port 10101 or -ip 127.0.0.2")
	}
}

// checkNodes says why ferry-demo cannot start n nodes, or nil when it can.
func checkNodes(n int) error {
	if n < 1 {
		return fmt.Errorf("-nodes %d: give 1 or more nodes (1, the default, is the single-node demo)", n)
	}
	return nil
}

// printNodes prints, for each node of a fleet, its state directory, endpoints and the command that
// enrolls another device of the admin through it (a single-use token).
func printNodes(ctx context.Context, env *demo.Env) error {
	fmt.Println("catalog: " + demo.CatalogURL(env.CatalogDB))
	for i, n := range env.Nodes {
		tok, err := n.EnrollToken(ctx, node.DefaultAdmin)
		if err != nil {
			return fmt.Errorf("node-%d: %w", i+1, err)
		}
		fmt.Printf("node-%d: --state %s (enroll https://%s, wireguard udp %d)\n", i+1, env.NodeDirs[i], n.EnrollAddr(), n.WireGuardPort())
		fmt.Printf("node-%d-enroll: ferry login %s\n", i+1, tok)
	}
	return nil
}
