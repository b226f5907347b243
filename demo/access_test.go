package demo_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// bridge listens on a loopback port and carries each connection through d's tunnel to vnAddr, so
// that psql can aim at any resource's address, granted or not, as a determined user could.
func bridge(t *testing.T, d *client.Daemon, vnAddr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				up, err := d.Dial(ctx, vnAddr)
				cancel()
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}

func connString(addr, user string) string {
	host, port, _ := net.SplitHostPort(addr)
	return "host=" + host + " port=" + port + " dbname=production user=" + user + " sslmode=disable"
}

// testAccess: an admin and an engineer granted tag:env=dev only, three resources.
func testAccess(t *testing.T, env *demo.Env) {
	ctx := context.Background()
	admin := env.Daemon.API()
	var dev, staging resource.Resource
	for _, spec := range []struct {
		name, env string
		out       *resource.Resource
	}{{"azure-pg-mi-dev", "dev", &dev}, {"azure-pg-mi-staging", "staging", &staging}} {
		r := resource.New(spec.name)
		r.Hostname = env.Emu.Hostname()
		r.Database = demo.Database
		r.Username = demo.Role
		r.ManagedIdentityClientID = demo.ClientID
		r.BindInterface = demo.RandomLoopbackIP()
		r.Tags = map[string]string{"env": spec.env}
		got, err := admin.AddDatasource(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		*spec.out = got
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.AddRole(ctx, "developers"))
	must(admin.Grant(ctx, "developers", "tag:env=dev"))
	must(admin.AddUser(ctx, api.NewUser{Name: "engineer", Roles: []string{"developers"}}))
	tok, err := admin.EnrollUser(ctx, "engineer")
	must(err)

	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	_, err = client.Login(ctx, dirs, tok.Token, "eng-laptop")
	must(err)
	eng, err := client.StartDaemon(ctx, dirs, nil)
	must(err)
	t.Cleanup(func() { eng.Close() })

	// A reused token and an expired one are refused clearly and create no device.
	other := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg2"), Runtime: filepath.Join(t.TempDir(), "run2")}
	if _, err := client.Login(ctx, other, tok.Token, "second"); err == nil || !strings.Contains(err.Error(), "already been used") {
		t.Fatalf("reused token: %v", err)
	}
	expiredSecret, err := env.Node.Catalog().CreateEnrollToken(ctx, "engineer", -time.Second)
	must(err)
	expired, _ := api.ParseEnrollToken(tok.Token)
	expired.Secret = expiredSecret
	if _, err := client.Login(ctx, other, expired.Encode(), "second"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: %v", err)
	}
	devs, err := admin.Devices(ctx, "engineer")
	if err != nil || len(devs) != 1 {
		t.Fatalf("engineer's devices = %+v, %v; want exactly one", devs, err)
	}

	// The engineer sees only the dev resource.
	st := eng.Status(ctx)
	if !st.NodeReachable || len(st.Resources) != 1 || st.Resources[0].Name != dev.Name {
		t.Fatalf("engineer's status = %+v, want only %s", st, dev.Name)
	}
	if _, err := eng.Connect(ctx, demo.ResourceName); !errors.Is(err, client.ErrUnknownResource) {
		t.Fatalf("engineer connect prod: %v", err)
	}

	// psql aimed at the prod resource's address (known from the admin's view) gets FATAL 28000.
	prodVN := ""
	all, err := admin.Datasources(ctx)
	must(err)
	for _, r := range all.Datasources {
		if r.Name == demo.ResourceName {
			prodVN = r.VNAddress
		}
	}
	prodBridge := bridge(t, eng, prodVN)
	out, err := psql(t, connString(prodBridge, "mi_user"), "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, "FATAL") || !strings.Contains(out, demo.ResourceName) {
		t.Fatalf("engineer psql to prod: err=%v out=%q, want FATAL naming the resource", err, out)
	}
	_, err = pgconn.Connect(ctx, connString(prodBridge, "mi_user"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" || pgErr.Severity != "FATAL" {
		t.Fatalf("engineer pgconn to prod: %v, want FATAL 28000", err)
	}
	// The node writes connection records through its audit queue: poll for them (bounded).
	var conns []api.Connection
	denied := 0
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		conns, err = admin.Connections(ctx, 20)
		must(err)
		denied = 0
		for _, c := range conns {
			if c.User == "engineer" && c.Resource == demo.ResourceName && c.Outcome == "denied" {
				denied++
			}
		}
		if denied >= 2 || time.Now().After(deadline) {
			break
		}
	}
	if denied < 2 {
		t.Fatalf("connection log shows %d denied attempts by engineer on prod, want 2: %+v", denied, conns)
	}

	// The granted resource works; revoking the grant ends the running session with a clear error.
	devStatus, err := eng.Connect(ctx, dev.Name)
	must(err)
	if out, err := psql(t, client.ConnString(devStatus), "-c", "SELECT current_user"); err != nil || strings.TrimSpace(out) != "mi_user" {
		t.Fatalf("engineer psql to dev: %v %q", err, out)
	}
	sleepCtx, cancel := context.WithTimeout(ctx, 25*time.Second)
	defer cancel()
	sleeper := exec.CommandContext(sleepCtx, "psql", client.ConnString(devStatus), "-X", "-c", "select pg_sleep(30)")
	var sleepOut strings.Builder
	sleeper.Stdout, sleeper.Stderr = &sleepOut, &sleepOut
	must(sleeper.Start())
	time.Sleep(time.Second) // let the session reach pg_sleep
	revokedAt := time.Now()
	must(admin.Revoke(ctx, "developers", "tag:env=dev"))
	err = sleeper.Wait()
	took := time.Since(revokedAt)
	t.Logf("session ended %v after the revocation", took.Round(time.Millisecond))
	if sleepCtx.Err() != nil || err == nil || !strings.Contains(sleepOut.String(), "revoked") {
		t.Fatalf("psql after revocation: err=%v ctx=%v out=%q, want it ended with a message about the revocation", err, sleepCtx.Err(), sleepOut.String())
	}
	// A new connection is refused by the node itself. It goes through the tunnel directly, as a
	// modified client would: the daemon may already have closed its own listener for the resource.
	_, err = pgconn.Connect(ctx, connString(bridge(t, eng, dev.VNAddress), "mi_user"))
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
		t.Fatalf("new connection after revocation: %v, want FATAL 28000 from the node", err)
	}

	// Deleting the device: its key loses the tunnel and reaches neither the API nor any resource;
	// its open session is ended and logged with outcome removed.
	must(admin.Grant(ctx, "developers", "tag:env=dev"))
	devStatus, err = eng.Connect(ctx, dev.Name)
	must(err)
	before, err := admin.Connections(ctx, 1)
	must(err)
	if len(before) == 0 {
		t.Fatal("no connection records before the device is deleted")
	}
	openCtx, cancelOpen := context.WithTimeout(ctx, 25*time.Second)
	open := exec.CommandContext(openCtx, "psql", client.ConnString(devStatus), "-X", "-c", "select pg_sleep(30)")
	var openOut strings.Builder
	open.Stdout, open.Stderr = &openOut, &openOut
	must(open.Start())
	defer open.Wait()
	defer cancelOpen() // before the Wait
	var opened bool
	for deadline := time.Now().Add(10 * time.Second); !opened && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		conns, err := admin.Connections(ctx, 20)
		must(err)
		for _, c := range conns {
			opened = opened || (c.ID > before[0].ID && c.User == "engineer" && c.Resource == dev.Name && c.End.IsZero())
		}
	}
	if !opened {
		conns, _ := admin.Connections(ctx, 20)
		t.Fatalf("no open session of the engineer on dev before the device is deleted: psql: %q; %+v", openOut.String(), conns)
	}
	time.Sleep(time.Second) // let the session get past its login to pg_sleep
	engState, err := client.LoadState(dirs)
	must(err)
	engKey, err := tunnel.ParseKey(engState.PrivateKey)
	must(err)
	must(admin.DeleteDevice(ctx, engKey.PublicKey().String()))
	var removed *api.Connection
	for deadline := time.Now().Add(10 * time.Second); removed == nil && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		conns, err := admin.Connections(ctx, 20)
		must(err)
		for _, c := range conns {
			if c.ID > before[0].ID && c.User == "engineer" && c.Resource == dev.Name && strings.Contains(c.Error, "was removed") {
				removed = &c
				break
			}
		}
	}
	if removed == nil || removed.Outcome != audit.OutcomeRemoved {
		t.Fatalf("connection record of the session on the deleted device: %+v; want outcome %q", removed, audit.OutcomeRemoved)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		peers, err := env.Node.Tunnel().Peers()
		must(err)
		present := false
		for _, p := range peers {
			present = present || p.PublicKey == engKey.PublicKey()
		}
		if !present {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the deleted device is still a WireGuard peer of the node")
		}
		time.Sleep(100 * time.Millisecond)
	}
	shortCtx, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort()
	if _, err := eng.API().Me(shortCtx); err == nil {
		t.Fatal("the deleted device still reaches the control API")
	}
	if c, err := eng.Dial(shortCtx, dev.VNAddress); err == nil {
		c.Close()
		t.Fatal("the deleted device still reaches a resource")
	}

	acts, err := admin.Activities(ctx, 50)
	must(err)
	seen := map[string]bool{}
	for _, a := range acts {
		seen[a.Action] = true
	}
	for _, want := range []string{"user.add", "role.add", "role.grant", "role.revoke", "user.enroll-token", "device.delete", "datasource.add"} {
		if !seen[want] {
			t.Errorf("admin activity log lacks %s: %+v", want, acts)
		}
	}
}
