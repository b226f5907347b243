package demo_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/tunnel"
)

// TestEnrollmentCannotBreakNode: a user holding one real enrollment token posts the all-zero
// WireGuard key. It is refused (400) and stores nothing. Even with such a key in the catalog (as an
// older node stored it), a revocation still ends another user's running psql session, and the node
// still starts again on its state, without that device.
func TestEnrollmentCannotBreakNode(t *testing.T) {
	env := startDemo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := env.Daemon.API()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.AddRole(ctx, "analysts"))
	must(admin.Grant(ctx, "analysts", demo.ResourceName))
	must(admin.AddUser(ctx, api.NewUser{Name: "engineer", Roles: []string{"analysts"}}))
	must(admin.AddUser(ctx, api.NewUser{Name: "mallory"}))
	engTok, err := admin.EnrollUser(ctx, "engineer")
	must(err)
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	_, err = client.Login(ctx, dirs, engTok.Token, "eng-laptop")
	must(err)
	eng, err := client.StartDaemon(ctx, dirs, nil)
	must(err)
	t.Cleanup(func() { eng.Close() })
	prodVN := ""
	all, err := admin.Datasources(ctx)
	must(err)
	for _, r := range all.Datasources {
		if r.Name == demo.ResourceName {
			prodVN = r.VNAddress
		}
	}

	// The engineer runs a long statement through the tunnel.
	sleepCtx, sleepCancel := context.WithTimeout(ctx, 60*time.Second)
	defer sleepCancel()
	sleeper := exec.CommandContext(sleepCtx, "psql", connString(bridge(t, eng, prodVN), "mi_user"), "-X", "-c", "SELECT 1", "-c", "SELECT pg_sleep(120)")
	sleeper.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=20")
	var sleepOut bytes.Buffer
	sleeper.Stdout, sleeper.Stderr = &sleepOut, &sleepOut
	must(sleeper.Start())
	waitUntil(t, "the engineer's statement to run on the server", func() bool {
		out, err := psql(t, client.ConnString(env.Resource), "-c", "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(120)'")
		return err == nil && strings.TrimSpace(out) == "1"
	})

	// Mallory, with a real token, enrolls the all-zero key.
	malTok, err := admin.EnrollUser(ctx, "mallory")
	must(err)
	p, err := api.ParseEnrollToken(malTok.Token)
	must(err)
	_, err = api.Enroll(ctx, p, api.EnrollRequest{Secret: p.Secret, PublicKey: tunnel.Key{}.String(), DeviceName: "zero"})
	var se *api.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusBadRequest {
		t.Errorf("enroll the all-zero key: %v, want 400", err)
	}
	if devs, err := admin.Devices(ctx, "mallory"); err != nil || len(devs) != 0 {
		t.Errorf("mallory's devices = %+v, %v; want none", devs, err)
	}
	// A catalog written by an older node, which stored such keys, must not stop revocation either:
	// the zero key goes into the catalog's file behind the node's back.
	db, err := audit.OpenDB(filepath.Join(env.NodeDir, "ferry.db"))
	must(err)
	_, err = db.ExecContext(ctx, `INSERT OR IGNORE INTO devices(public_key, user_name, address, name, enrolled_at) VALUES(?, 'mallory', '198.18.1.1', 'stored-by-an-older-node', ?)`,
		tunnel.Key{}.String(), time.Now().Unix())
	db.Close()
	must(err)

	// Revoking the engineer's grant still ends the running session, with a message saying why.
	must(admin.Revoke(ctx, "analysts", demo.ResourceName))
	err = sleeper.Wait()
	if sleepCtx.Err() != nil || err == nil || !strings.Contains(sleepOut.String(), "revoked") {
		t.Errorf("psql after the revocation: err=%v ctx=%v out=%q; want it ended with a message about the revocation", err, sleepCtx.Err(), sleepOut.String())
	}

	// And the node starts again on its state.
	cfg, err := node.LoadConfig(filepath.Join(env.NodeDir, node.ConfigFile))
	must(err)
	must(env.Node.Close())
	n, err := node.Start(ctx, env.NodeDir, cfg, nil)
	if err != nil {
		t.Fatalf("restart the node: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	if peers, err := n.Tunnel().Peers(); err != nil || len(peers) != 2 {
		t.Fatalf("peers after restart = %+v, %v; want the admin's and the engineer's devices", peers, err)
	}
}

// waitUntil polls cond until it holds, failing the test after 30 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
