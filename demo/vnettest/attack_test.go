package vnettest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// abandonConnects makes n connections to addr from inside the namespace and closes each while it
// is still being set up, as a client that gave up (or a port scanner) does: the client's SYN-ACK
// then meets no socket and gets a RST.
const abandonConnects = `
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((host, port))
    s.close()
`

// TestVNAbandonedConnects: connections to a virtual-networking address that their local client
// abandons before the handshake completes (any local user can make them: the route is the
// machine's) leave nothing behind: the resource still answers and the daemon stops at once on
// SIGTERM, instead of waiting forever for sessions that never started.
func TestVNAbandonedConnects(t *testing.T) {
	need(t)
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("needs python3 to abandon connections half way")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env, err := demo.Start(ctx, demo.Options{Dir: t.TempDir(), LoopbackIP: demo.RandomLoopbackIP()})
	if err != nil {
		t.Fatalf("start demo: %v", err)
	}
	t.Cleanup(func() { env.Close() })
	addVNResource(t, ctx, env, resource.ModeVirtualNetworking)
	n := newNetns(t)
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := n.Login(ctx, env.Node, dirs, node.DefaultAdmin, "netns-abandon"); err != nil {
		t.Fatal(err)
	}
	d := startProcess(t, n, dirs, nil, []string{os.Args[0], "daemon"}, true)
	r, err := client.NewControl(dirs).Connect(ctx, vnResource)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, d.Output())
	}
	if r.Serving != client.ModeVirtualNetworking {
		t.Fatalf("%s served as %q, want virtual networking", vnResource, r.Serving)
	}
	host, port, err := net.SplitHostPort(r.VNAddress)
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "abandon.py")
	if err := os.WriteFile(script, []byte(abandonConnects), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := n.Command(ctx, "python3", script, host, port, "40").CombinedOutput(); err != nil {
		t.Fatalf("abandoned connects: %v\n%s", err, out)
	}
	time.Sleep(2 * time.Second) // let the daemon's dials to the node for them complete
	out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable", host, port, demo.Database, demo.Role), "select 'still here'")
	if err != nil || strings.TrimSpace(out) != "still here" {
		t.Fatalf("psql after the abandoned connects: %v: %s\n%s", err, out, d.Output())
	}
	if err := d.Stop(syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("after abandoned connects: %v\n%s", err, d.Output())
	}
}
