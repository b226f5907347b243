//go:build linux

package fleettest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/fleet"
	"github.com/ferryhq/ferry/resource"
)

// TestAdminsOnSeveralNodes: three nodes on one catalog, an admin device enrolled with each. Admin
// changes made through one node hold for, and reach, every node:
//   - concurrent_adds: rounds of 20 concurrent adds of resources spread over the three nodes through
//     the control API, 8 distinct values of one unique key each (name, DNS name, loopback port):
//     exactly one add per value succeeds, every other gets 409 Conflict naming it, and the
//     resources made have distinct local addresses.
//   - revoke_ends_session_on_another_node: a grant revoked through node-1 (`ferry admin roles
//     revoke`) ends the session bob holds through node-2 within 5 s, with a FATAL that says so.
func TestAdminsOnSeveralNodes(t *testing.T) {
	needLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := startFleet(t, ctx, 3, "admin-1", "admin-2", "admin-3", "bob")
	admins := []*fleet.Client{startClient(t, ctx, f.hosts["admin-1"], f.nodes[0].AdminToken, "admin-laptop-1")}
	for i := 2; i <= 3; i++ {
		admins = append(admins, f.enrollWith(t, ctx, f.nodes[i-1], "admin", fmt.Sprintf("admin-%d", i), fmt.Sprintf("admin-laptop-%d", i)))
	}
	for i, c := range admins {
		waitUsing(t, ctx, c, fmt.Sprintf("node-%d", i+1), 5*time.Second)
	}

	// Each round: 20 concurrent adds through the three nodes, 8 distinct values of the unique key.
	const adds, keys = 20, 8
	for _, round := range []struct {
		name string
		// make is the i-th add's resource; key its value of the unique key (as the conflict names it).
		make func(i int) (r resource.Resource, key string)
	}{
		{"concurrent_adds/name", func(i int) (resource.Resource, string) {
			n := fmt.Sprintf("db-%d", i%keys)
			return resource.New(n), n
		}},
		{"concurrent_adds/dns_name", func(i int) (resource.Resource, string) {
			r := resource.New(fmt.Sprintf("alias-%d", i))
			r.ConnectivityMode, r.Subdomain = resource.ModeVirtualNetworking, fmt.Sprintf("alias-%d", i%keys)
			return r, r.Subdomain
		}},
		{"concurrent_adds/loopback_port", func(i int) (resource.Resource, string) {
			r := resource.New(fmt.Sprintf("port-%d", i))
			r.PortOverride = 15000 + i%keys
			return r, fmt.Sprint(r.PortOverride)
		}},
	} {
		t.Run(round.name, func(t *testing.T) {
			before, err := admins[0].Control().API().Datasources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			errs, key := make([]error, adds), make([]string, adds)
			for i := range adds {
				r, k := round.make(i)
				r.Hostname, r.Database, r.Username, r.ManagedIdentityClientID = f.cat.Emu.Hostname(), demo.Database, demo.Role, demo.ClientID
				key[i] = k
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = admins[i%len(admins)].Control().API().AddDatasource(ctx, r)
				}()
			}
			wg.Wait()
			added := map[string]int{}
			for i, err := range errs {
				var se *api.StatusError
				switch {
				case err == nil:
					added[key[i]]++
				case errors.As(err, &se) && se.Status == http.StatusConflict:
					if !strings.Contains(se.Message, key[i]) {
						t.Errorf("add %d (%s, through node-%d): the conflict does not name what is taken: %q", i, key[i], i%len(admins)+1, se.Message)
					}
				default:
					t.Errorf("add %d (%s, through node-%d): %v; want success or 409 Conflict", i, key[i], i%len(admins)+1, err)
				}
			}
			for j := range keys {
				if _, k := round.make(j); added[k] != 1 {
					t.Errorf("%s was added %d times; want exactly once", k, added[k])
				}
			}
			list, err := admins[0].Control().API().Datasources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(list.Datasources) - len(before.Datasources); got != keys {
				t.Errorf("the catalog holds %d new resources; want %d", got, keys)
			}
			seen := map[string]string{}
			for _, r := range list.Datasources {
				for _, addr := range []string{r.LoopbackAddress, r.VNAddress, r.Subdomain} {
					if other, dup := seen[addr]; dup && addr != "" {
						t.Errorf("resources %s and %s both have %s", other, r.Name, addr)
					}
					seen[addr] = r.Name
				}
			}
		})
	}

	t.Run("revoke_ends_session_on_another_node", func(t *testing.T) {
		api1 := admins[0].Control().API()
		r := resource.New(demo.ResourceName)
		r.Hostname, r.Database, r.Username, r.ManagedIdentityClientID = f.cat.Emu.Hostname(), demo.Database, demo.Role, demo.ClientID
		if _, err := api1.AddDatasource(ctx, r); err != nil {
			t.Fatal(err)
		}
		for _, step := range []func() error{
			func() error { return api1.AddUser(ctx, api.NewUser{Name: "bob"}) },
			func() error { return api1.AddRole(ctx, "readers") },
			func() error { return api1.Grant(ctx, "readers", demo.ResourceName) },
			func() error { return api1.AssignRole(ctx, "readers", "bob") },
		} {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		bob := f.enrollWith(t, ctx, f.nodes[1], "bob", "bob", "bob-laptop")
		waitUsing(t, ctx, bob, "node-2", 5*time.Second)
		s, err := bob.StartSession(connectDemoResource(t, ctx, bob))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
		defer wcancel()
		if err := s.Send("SELECT 'bob is in';"); err != nil || !s.WaitOutput(wctx, "bob is in") {
			t.Fatalf("bob's session through node-2: %v\n%s", err, s.Output())
		}
		if err := s.Send("SELECT pg_sleep(60);"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // the statement reaches the server

		if out, err := admins[0].Ferry(ctx, "admin", "roles", "revoke", "readers", demo.ResourceName); err != nil {
			t.Fatalf("revoke through node-1: %v\n%s", err, out)
		}
		const reason = `access of user "bob" to resource "` + demo.ResourceName + `" was revoked`
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		if !s.WaitOutput(rctx, reason) || !strings.Contains(s.Output(), "FATAL") {
			t.Fatalf("bob's session through node-2 did not get a FATAL with the revoke reason within 5 s of the revoke through node-1:\n%s", s.Output())
		}
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Errorf("bob's psql still runs 5 s after its FATAL:\n%s", s.Output())
		}
		t.Logf("bob's psql:\n%s", s.Output())
	})
}
