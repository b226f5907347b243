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
	"github.com/ferryhq/ferry/demo/vnet"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// vnResource is a second resource on the demo's server, set to virtual networking.
const vnResource = "vn-pg"

// addVNResource adds vnResource beside the demo's loopback resource: the same server, its own
// alias and loopback address. mode "" leaves the org's default to the catalog.
func addVNResource(t *testing.T, ctx context.Context, env *demo.Env, mode string) {
	t.Helper()
	r := resource.New(vnResource)
	r.Hostname = env.Emu.Hostname()
	r.Database, r.Username = demo.Database, demo.Role
	r.ManagedIdentityClientID = demo.ClientID
	r.Subdomain = vnResource
	r.BindInterface = demo.RandomLoopbackIP()
	r.ConnectivityMode = mode
	out, err := env.Daemon.API().AddDatasource(ctx, r)
	if err != nil {
		t.Fatalf("add %s: %v", vnResource, err)
	}
	if out.ConnectivityMode != resource.ModeVirtualNetworking {
		t.Fatalf("%s stored in mode %q, want %s", vnResource, out.ConnectivityMode, resource.ModeVirtualNetworking)
	}
}

// ferryCLI runs this binary as the ferry CLI against the daemon at dirs, inside the namespace n
// when n is not nil, and returns its combined output and error.
func ferryCLI(ctx context.Context, n *vnet.Netns, dirs client.Dirs, prefix []string, args ...string) (string, error) {
	argv := append(append(prefix, os.Args[0]), args...)
	if n != nil {
		argv = append([]string{"ip", "netns", "exec", n.Name}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), vnet.EnvRunCLI+"=1", client.EnvConfigDir+"="+dirs.Config, client.EnvRuntimeDir+"="+dirs.Runtime)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// statusLine returns the line of `ferry status` output about name.
func statusLine(out, name string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, name+" ") {
			return l
		}
	}
	return ""
}

// TestPerResourceModes: one daemon, started without --mode, serves a loopback resource on its
// loopback address and a virtual-networking resource on its alias through the TUN at the same time;
// status says how each is served, and psql reaches both.
func TestPerResourceModes(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	env, err := demo.Start(ctx, demo.Options{Dir: t.TempDir(), LoopbackIP: demo.RandomLoopbackIP()})
	if err != nil {
		t.Fatalf("start demo: %v", err)
	}
	t.Cleanup(func() { env.Close() })
	addVNResource(t, ctx, env, resource.ModeVirtualNetworking)
	settings, err := env.Daemon.API().Settings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if settings.ConnectivityMode != resource.ModeLoopback {
		t.Fatalf("org default %q, want %s: the virtual-networking resource must be the exception", settings.ConnectivityMode, resource.ModeLoopback)
	}

	n := newNetns(t)
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	if _, err := n.Login(ctx, env.Node, dirs, node.DefaultAdmin, "netns-modes"); err != nil {
		t.Fatal(err)
	}
	before := n.snapshot(t)
	d := startProcess(t, n, dirs, nil, []string{os.Args[0], "daemon"}, true)
	ctl := client.NewControl(dirs)
	alias := vnResource + "." + settings.DNSDomain

	rows := map[string]client.ResourceStatus{}
	for _, name := range []string{demo.ResourceName, vnResource} {
		r, err := ctl.Connect(ctx, name)
		if err != nil {
			t.Fatalf("connect %s: %v\n%s", name, err, d.Output())
		}
		rows[name] = r
	}
	tests := []struct {
		name, serving, label, address string
	}{
		{demo.ResourceName, client.ModeLoopback, "loopback", env.Resource.LoopbackAddress},
		{vnResource, client.ModeVirtualNetworking, "virtual networking", alias + ":5432"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rows[tc.name]
			if r.Serving != tc.serving || r.Fallback || r.Address != tc.address || client.ModeLabel(r) != tc.label {
				t.Errorf("connect: serving %q fallback %v address %q label %q, want %q, %q, %q", r.Serving, r.Fallback, r.Address, client.ModeLabel(r), tc.serving, tc.address, tc.label)
			}
			host, port, _ := net.SplitHostPort(r.Address)
			out, err := n.Psql(ctx, fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable", host, port, demo.Database, demo.Role), "select 'both at once'")
			if err != nil || out != "both at once" {
				t.Fatalf("psql at %s: %v: %s\n%s", r.Address, err, out, d.Output())
			}
		})
	}
	st, err := ctl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.VNUnavailable != "" {
		t.Errorf("status says virtual networking is unavailable: %s", st.VNUnavailable)
	}
	out, err := ferryCLI(ctx, n.Netns, dirs, nil, "status")
	if err != nil {
		t.Fatalf("ferry status: %v\n%s", err, out)
	}
	for _, tc := range tests {
		if l := statusLine(out, tc.name); !strings.Contains(l, tc.address) || !strings.Contains(l, "  "+tc.label+"  ") {
			t.Errorf("ferry status line of %s lacks %q and mode %q:\n%s", tc.name, tc.address, tc.label, out)
		}
	}
	d.stop(t, syscall.SIGTERM)
	if after := n.snapshot(t); after != before {
		t.Fatalf("after exit:\n%s\nbefore:\n%s\ndaemon log:\n%s", after, before, d.Output())
	}
}
