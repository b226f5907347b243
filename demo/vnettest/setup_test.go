package vnettest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// nobody is the ordinary user the unprivileged clients and attackers run as.
const nobody = 65534

// startDemo starts the demo installation on a random loopback address for t (testenv.Start: stopped
// at cleanup, goroutine-leak check after).
func startDemo(t *testing.T) *demo.Env {
	t.Helper()
	return testenv.Start(t, demo.Options{LoopbackIP: demo.RandomLoopbackIP()})
}

// sharedDir makes a directory (mode 0755, removed at cleanup) that an ordinary user can reach, with
// a copy of this test binary (which acts as the ferry CLI) as bin, and client dirs below it.
func sharedDir(t *testing.T, prefix string) (shared, bin string, dirs client.Dirs) {
	t.Helper()
	shared, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(shared, "ferry")
	sh(t, "cp", os.Args[0], bin)
	return shared, bin, client.Dirs{Config: filepath.Join(shared, "cfg"), Runtime: filepath.Join(shared, "run")}
}

// userSetup is an ordinary user's client, enrolled but not yet running, in a namespace of its own,
// against a demo installation with one virtual-networking resource.
type userSetup struct {
	env      *demo.Env
	settings api.Settings
	n        *netns
	shared   string
	bin      string // this test binary, reachable by the user
	dirs     client.Dirs
	sock     string // where the test's vnet-helper is to listen
}

// setUpUser skips t without root, iproute2, psql, dig or setpriv; otherwise it starts the demo with
// a virtual-networking resource and enrolls device as the admin into dirs the user nobody owns.
func setUpUser(t *testing.T, ctx context.Context, prefix, device string) *userSetup {
	t.Helper()
	need(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux) to run the client as an ordinary user")
	}
	u := &userSetup{env: startDemo(t)}
	addVNResource(t, ctx, u.env, resource.ModeVirtualNetworking)
	var err error
	if u.settings, err = u.env.Daemon.API().Settings(ctx); err != nil {
		t.Fatal(err)
	}
	u.n = newNetns(t)
	u.shared, u.bin, u.dirs = sharedDir(t, prefix)
	if _, err := u.n.Login(ctx, u.env.Node, u.dirs, node.DefaultAdmin, device); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(u.dirs.Runtime, 0o700); err != nil {
		t.Fatal(err)
	}
	sh(t, "chown", "-R", fmt.Sprint(nobody), u.dirs.Config, u.dirs.Runtime)
	u.sock = filepath.Join(u.shared, "helper", "vnet.sock")
	return u
}
