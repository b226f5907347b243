package node_test

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// TestEnrollmentAndPermissions: a token works once; a forged or reused token is refused with a clear
// message; a non-admin device may list its resources but gets 403 from admin endpoints.
func TestEnrollmentAndPermissions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), NoResource: true, NodeConfig: func(c *node.Config) {
		c.AllowedServerHosts = append(c.AllowedServerHosts, "h.example") // catalog-only resources below
	}})

	if err := env.Node.Catalog().AddUser(ctx, "engineer", false); err != nil {
		t.Fatal(err)
	}
	tok, err := env.Node.EnrollToken(ctx, "engineer")
	if err != nil {
		t.Fatal(err)
	}
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "c"), Runtime: filepath.Join(t.TempDir(), "r")}
	st, err := client.Login(ctx, dirs, tok, "eng-laptop")
	if err != nil {
		t.Fatal(err)
	}
	if st.User != "engineer" || st.Admin || st.DeviceAddress == "" {
		t.Fatalf("enrolled state = %+v", st)
	}
	// The same token again, from another device.
	other := client.Dirs{Config: filepath.Join(t.TempDir(), "c2"), Runtime: filepath.Join(t.TempDir(), "r2")}
	if _, err := client.Login(ctx, other, tok, "second"); err == nil || !strings.Contains(err.Error(), "already been used") {
		t.Fatalf("reused token: %v", err)
	}
	// A token whose secret the node never issued.
	parsed, err := api.ParseEnrollToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	parsed.Secret = "forged"
	if _, err := client.Login(ctx, other, parsed.Encode(), "second"); err == nil || !strings.Contains(err.Error(), "not known") {
		t.Fatalf("forged token: %v", err)
	}
	// A token pinned to another certificate: the client must not talk to that endpoint.
	parsed, _ = api.ParseEnrollToken(tok)
	parsed.CertSHA256 = strings.Repeat("0", 64)
	if _, err := client.Login(ctx, other, parsed.Encode(), "second"); err == nil || !strings.Contains(err.Error(), "fingerprint") {
		t.Fatalf("wrong pin: %v", err)
	}
	for _, bad := range []string{"", "ferry-enroll.!!!", "hello"} {
		if _, err := client.Login(ctx, other, bad, "x"); err == nil || !strings.Contains(err.Error(), "enrollment token") {
			t.Errorf("Login(%q) = %v, want an enrollment token error", bad, err)
		}
	}

	d, err := client.StartDaemon(ctx, dirs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	me, err := d.API().Me(ctx)
	if err != nil || me.User != "engineer" || me.Admin {
		t.Fatalf("me = %+v, %v", me, err)
	}
	if _, err := d.API().Resources(ctx); err != nil {
		t.Fatalf("resources: %v", err)
	}
	r := resource.New("x")
	r.Hostname, r.Database, r.Username = "h.example", "d", "u"
	_, err = d.API().AddDatasource(ctx, r)
	var se *api.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusForbidden || !strings.Contains(se.Message, "not an administrator") {
		t.Fatalf("non-admin add datasource: %v, want 403", err)
	}
	// The admin gets validation errors naming the property, and conflicts for taken names.
	bad := resource.New("bad")
	bad.Hostname = "h.example"
	_, err = env.Daemon.API().AddDatasource(ctx, bad)
	if !errors.As(err, &se) || se.Status != http.StatusBadRequest || !strings.Contains(se.Message, "database") {
		t.Fatalf("invalid add: %v", err)
	}
	// Suspending the engineer cuts the device off within seconds; reinstating restores it.
	if err := env.Daemon.API().SuspendUser(ctx, "engineer", true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the suspended user's device to lose the API", func() bool {
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := d.API().Me(c)
		return err != nil
	})
	if err := env.Daemon.API().SuspendUser(ctx, "engineer", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reinstated user's device to reach the API again", func() bool {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := d.API().Me(c)
		return err == nil
	})
	// Logout removes the device from the node and the key from the machine.
	if err := d.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := client.LoadState(dirs); !errors.Is(err, client.ErrNotLoggedIn) {
		t.Fatalf("state after logout: %v", err)
	}
	// The node answers the logout first and deletes the device once the client has read the answer
	// (controlapi: the answer must not be lost with the tunnel), so the deletion follows shortly.
	waitFor(t, "the engineer's device to be gone after logout", func() bool {
		devs, err := env.Daemon.API().Devices(ctx, "engineer")
		return err == nil && len(devs) == 0
	})

	r.Name = "dup"
	if _, err := env.Daemon.API().AddDatasource(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err = env.Daemon.API().AddDatasource(ctx, r); !errors.As(err, &se) || se.Status != http.StatusConflict {
		t.Fatalf("duplicate add: %v", err)
	}
}

// waitFor polls cond until it holds, failing the test after 20 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
