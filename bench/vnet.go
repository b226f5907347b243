//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/vnet"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// vnPathName is the name of the virtual networking path in the tables and for -paths.
const vnPathName = "ferry VN"

// aliases is what the org's DNS serves: FQDN (with the final dot) → IPv4, plus the domain.
type aliases struct {
	domain  string // "ferry.internal"
	records map[string]netip.Addr
	subnet  netip.Prefix
}

// addAliases adds four resources beside azure-pg-mi-prod (same server, none connected) to the
// catalog, so the DNS figures ask for several names, and returns every resource's alias and VN
// address, as every Ferry resolver of the org serves them.
func (i *installation) addAliases(ctx context.Context) (aliases, error) {
	a := i.env.Daemon.API()
	for _, name := range []string{"azure-pg-mi-dev", "azure-pg-mi-staging", "azure-pg-reporting", "azure-pg-analytics"} {
		r := resource.New(name)
		r.Hostname = i.env.Emu.Hostname()
		r.Database, r.Username = demo.Database, demo.Role
		r.ManagedIdentityClientID = demo.ClientID
		r.Subdomain = name
		if _, err := a.AddDatasource(ctx, r); err != nil {
			return aliases{}, fmt.Errorf("add resource %s: %w", name, err)
		}
	}
	s, err := a.Settings(ctx)
	if err != nil {
		return aliases{}, fmt.Errorf("read the org's settings: %w", err)
	}
	subnet, err := netip.ParsePrefix(s.VNSubnet)
	if err != nil {
		return aliases{}, fmt.Errorf("the org's VN subnet %q: %w", s.VNSubnet, err)
	}
	rs, err := a.Resources(ctx)
	if err != nil {
		return aliases{}, fmt.Errorf("list resources: %w", err)
	}
	out := aliases{domain: s.DNSDomain, records: map[string]netip.Addr{}, subnet: subnet}
	for _, r := range rs {
		ap, err := netip.ParseAddrPort(r.VNAddress)
		if err != nil || r.Subdomain == "" {
			continue
		}
		out.records[r.Subdomain+"."+s.DNSDomain+"."] = ap.Addr()
	}
	return out, nil
}

// vnSetup is a client daemon in virtual networking mode inside a network namespace of its own
// (demo/vnet: veth pair to the node's WireGuard port, real TUN), with azure-pg-mi-prod connected.
type vnSetup struct {
	ns     *vnet.Netns
	daemon *vnet.Process
	path   *path
}

// startVN starts the namespace and the daemon, or says why it cannot (not root, no TUN, ...).
func (i *installation) startVN(ctx context.Context, dir string) (_ *vnSetup, err error) {
	if err := vnet.Check("pgbench", "psql"); err != nil {
		return nil, err
	}
	v := &vnSetup{}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	if v.ns, err = vnet.NewNetns(ctx); err != nil {
		return nil, err
	}
	dirs := client.Dirs{Config: filepath.Join(dir, "vn", "cfg"), Runtime: filepath.Join(dir, "vn", "run")}
	if _, err := v.ns.Login(ctx, i.env.Node, dirs, node.DefaultAdmin, "bench-vn"); err != nil {
		return nil, err
	}
	if v.daemon, err = v.ns.StartDaemon(ctx, dirs); err != nil {
		return nil, err
	}
	if _, err := client.NewControl(dirs).Connect(ctx, demo.ResourceName); err != nil {
		return nil, fmt.Errorf("connect %s in virtual networking mode: %w", demo.ResourceName, err)
	}
	var r api.Resource
	rs, err := i.env.Daemon.API().Resources(ctx)
	if err != nil {
		return nil, fmt.Errorf("list resources: %w", err)
	}
	for _, x := range rs {
		if x.Name == demo.ResourceName {
			r = x
		}
	}
	host, port, err := net.SplitHostPort(r.VNAddress)
	if err != nil {
		return nil, fmt.Errorf("%s's VN address %q: %w", demo.ResourceName, r.VNAddress, err)
	}
	v.path = &path{
		Name: vnPathName,
		Description: "libpq inside a network namespace to the resource's VN address (" + r.VNAddress + ", sslmode=disable) → TUN → " +
			"the client daemon in virtual networking mode (its own process: userspace TCP/IP stack on the TUN, userspace WireGuard) → " +
			"UDP over a veth pair → node (as for ferry) → TLS to the front",
		env: map[string]string{
			"PGHOST": host, "PGPORT": port, "PGUSER": demo.Role, "PGDATABASE": demo.Database,
			"PGSSLMODE": "disable", "PGAPPNAME": "bench-ferry-vn",
		},
		wrap: []string{"ip", "netns", "exec", v.ns.Name},
	}
	if err := v.path.check(ctx); err != nil {
		return nil, fmt.Errorf("%w (daemon: %s)", err, lastLines(v.daemon.Output(), 3))
	}
	return v, nil
}

// Close stops the daemon (which restores the namespace's DNS) and removes the namespace.
func (v *vnSetup) Close() {
	if v.daemon != nil {
		if err := v.daemon.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			step("  " + err.Error())
		}
		v.daemon = nil
	}
	if v.ns != nil {
		v.ns.Close()
		v.ns = nil
	}
}
