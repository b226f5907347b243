package client

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/resolver"
)

// followDaemon is a daemon as follow sees it, without a tunnel: the catalog's answers are given to
// d.follow directly. Its context is already over, so nothing here brings up a TUN. With vn, it has
// virtual networking up for the org's default subnet and domain (the bookkeeping, no device).
func followDaemon(t *testing.T, vn bool) *Daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	root := t.TempDir()
	d := &Daemon{dirs: Dirs{Config: filepath.Join(root, "cfg"), Runtime: filepath.Join(root, "run")},
		log: slog.New(slog.DiscardHandler), listeners: map[string]*listener{}, ctx: ctx, cancel: cancel,
		settings: api.Settings{ConnectivityMode: ModeLoopback, VNSubnet: "100.64.0.0/10", DNSDomain: "ferry.internal"}}
	// No node: the alias refresh a connect starts fails at once.
	d.api = api.NewClient(func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("no node in this test")
	}, time.Second)
	if vn {
		d.vn = &vnet{d: d, log: d.log, settings: d.settings, subnet: netip.MustParsePrefix(d.settings.VNSubnet),
			connected: map[netip.AddrPort]api.Resource{}, byName: map[string]netip.AddrPort{}, aliases: true}
		dns, err := resolver.New(resolver.Config{Domain: d.settings.DNSDomain, Logger: d.log})
		if err != nil {
			t.Fatal(err)
		}
		if err := dns.ListenAndServe("127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dns.Close() })
		d.vn.dns = dns
	}
	t.Cleanup(func() {
		d.mu.Lock()
		for _, l := range d.listeners {
			_ = l.ln.Close()
		}
		d.mu.Unlock()
		d.wg.Wait()
	})
	return d
}

// vnRes is a virtual-networking resource at 100.64.0.<host>:5432 with alias sub.
func vnRes(name string, host byte, sub string) api.Resource {
	return api.Resource{Name: name, ConnectivityMode: ModeVirtualNetworking, Subdomain: sub,
		VNAddress: netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, 0, host}), 5432).String(), LoopbackAddress: "127.0.0.1:1"}
}

// resolve asks the vnet's resolver for name's A record: the address, or "" when there is none.
func resolve(t *testing.T, v *vnet, name string) string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	in, err := dns.Exchange(m, v.dns.Addrs()[0].String())
	if err != nil {
		t.Fatalf("resolve %s: %v", name, err)
	}
	for _, rr := range in.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

// TestFollowVNChanges: an administrator's edits of connected virtual-networking resources, as one
// poll of the catalog sees them, leave every resource served at its current address (a SYN to that
// address goes to that resource and no other), its status row names its current alias, and the
// aliases resolve as the catalog says at once (not only at the next refresh, 30 s later): a
// swapped alias never leads to the other resource, a deleted one's alias is gone.
func TestFollowVNChanges(t *testing.T) {
	tests := []struct {
		name          string
		before, after []api.Resource
		want          map[string]string // resource -> status address; others not connected
	}{
		{"alias renamed", []api.Resource{vnRes("a", 3, "a")}, []api.Resource{vnRes("a", 3, "a2")},
			map[string]string{"a": "a2.ferry.internal:5432"}},
		{"alias removed", []api.Resource{vnRes("a", 3, "a")}, []api.Resource{vnRes("a", 3, "")},
			map[string]string{"a": "100.64.0.3:5432"}},
		{"addresses swapped", []api.Resource{vnRes("a", 3, "a"), vnRes("b", 4, "b")},
			[]api.Resource{vnRes("a", 4, "a"), vnRes("b", 3, "b")},
			map[string]string{"a": "a.ferry.internal:5432", "b": "b.ferry.internal:5432"}},
		{"aliases swapped", []api.Resource{vnRes("a", 3, "a"), vnRes("b", 4, "b")},
			[]api.Resource{vnRes("a", 3, "b"), vnRes("b", 4, "a")},
			map[string]string{"a": "b.ferry.internal:5432", "b": "a.ferry.internal:5432"}},
		{"deleted, its address given to another", []api.Resource{vnRes("a", 3, "a"), vnRes("b", 4, "b")},
			[]api.Resource{vnRes("a", 4, "a")},
			map[string]string{"a": "a.ferry.internal:5432"}},
		{"three rotated", []api.Resource{vnRes("a", 3, "a"), vnRes("b", 4, "b"), vnRes("c", 5, "c")},
			[]api.Resource{vnRes("a", 4, "a"), vnRes("b", 5, "b"), vnRes("c", 3, "c")},
			map[string]string{"a": "a.ferry.internal:5432", "b": "b.ferry.internal:5432", "c": "c.ferry.internal:5432"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := followDaemon(t, true)
			for _, r := range tc.before {
				if _, err := d.vn.connect(r); err != nil {
					t.Fatal(err)
				}
			}
			d.vn.setRecords(tc.before)
			d.follow(tc.after)
			d.mu.Lock()
			defer d.mu.Unlock()
			for _, r := range tc.before {
				want := ""
				if i := slices.IndexFunc(tc.after, func(a api.Resource) bool { return a.Subdomain == r.Subdomain }); i >= 0 {
					want = netip.MustParseAddrPort(tc.after[i].VNAddress).Addr().String()
				}
				if got := resolve(t, d.vn, r.Subdomain+".ferry.internal"); got != want {
					t.Errorf("alias %s resolves to %q, want %q", r.Subdomain, got, want)
				}
			}
			for _, r := range tc.after {
				row := d.row(r)
				want, ok := tc.want[r.Name]
				if row.Connected != ok || (ok && row.Address != want) {
					t.Errorf("%s: connected %v at %q, want %v at %q", r.Name, row.Connected, row.Address, ok, want)
				}
				if !ok {
					continue
				}
				got, on := d.vn.connected[netip.MustParseAddrPort(r.VNAddress)]
				if !on || got.Name != r.Name {
					t.Errorf("a SYN to %s (%s's address) goes to %q (served: %v), want %s", r.VNAddress, r.Name, got.Name, on, r.Name)
				}
			}
			for ap, r := range d.vn.connected {
				if r.VNAddress != ap.String() || tc.want[r.Name] == "" {
					t.Errorf("%s is served as %s (at %s), which the catalog does not say", ap, r.Name, r.VNAddress)
				}
			}
			if len(d.vn.byName) != len(tc.want) {
				t.Errorf("%d resources marked connected, want %d: %v", len(d.vn.byName), len(tc.want), d.vn.byName)
			}
		})
	}
}

// TestFollowModeFlipStatus: a resource connected on loopback whose mode an administrator changes
// while this client has no TUN is said to be served on loopback for want of the helper, and the
// other way round, a resource served on loopback as a fallback and changed to loopback mode is
// plainly "loopback": the Mode column says how each is served now.
func TestFollowModeFlipStatus(t *testing.T) {
	tests := []struct {
		name           string
		fallback       bool   // how it was connected
		mode, newMode  string // configured mode before and after the edit
		wantLabel      string
		wantFallbackOn bool
	}{
		{"loopback to virtual networking without a TUN", false, ModeLoopback, ModeVirtualNetworking, "loopback (no TUN helper)", true},
		{"virtual networking (fallback) to loopback", true, ModeVirtualNetworking, ModeLoopback, "loopback", false},
		{"virtual networking (fallback) to the org's default, loopback", true, ModeVirtualNetworking, "", "loopback", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := followDaemon(t, false)
			r := vnRes("a", 3, "a")
			r.ConnectivityMode = tc.mode
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			r.LoopbackAddress = ln.Addr().String()
			d.listeners[r.Name] = &listener{res: r, ln: ln, fallback: tc.fallback}
			r.ConnectivityMode = tc.newMode
			d.follow([]api.Resource{r})
			d.mu.Lock()
			row := d.row(r)
			d.mu.Unlock()
			if !row.Connected || row.Address != r.LoopbackAddress || row.Fallback != tc.wantFallbackOn || ModeLabel(row) != tc.wantLabel {
				t.Errorf("after the edit: connected %v at %q, fallback %v, mode %q; want connected at %q, fallback %v, mode %q",
					row.Connected, row.Address, row.Fallback, ModeLabel(row), r.LoopbackAddress, tc.wantFallbackOn, tc.wantLabel)
			}
		})
	}
}

// TestFollowBusyMoveStillReachesTheResource: when a connected resource's loopback address moves to
// one that is taken (by another local user, say), the client keeps listening at the old address;
// connections there must still go to that resource at its current virtual networking address, not
// to whichever resource now holds its old one.
func TestFollowBusyMoveStillReachesTheResource(t *testing.T) {
	d := followDaemon(t, false)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	squat, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squat.Close()
	r := vnRes("a", 3, "a")
	r.ConnectivityMode, r.LoopbackAddress = ModeLoopback, ln.Addr().String()
	d.listeners[r.Name] = &listener{res: r, ln: ln}
	moved := vnRes("a", 7, "a")
	moved.ConnectivityMode, moved.LoopbackAddress = ModeLoopback, squat.Addr().String()
	other := vnRes("b", 3, "b") // the old VN address, given to another resource
	other.ConnectivityMode, other.LoopbackAddress = ModeLoopback, "127.0.0.1:2"
	d.follow([]api.Resource{moved, other})
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.listeners[r.Name]
	if l == nil || l.ln.Addr().String() != r.LoopbackAddress {
		t.Fatalf("the listener at %s is gone, want it kept while the new address is taken", r.LoopbackAddress)
	}
	if l.res.VNAddress != moved.VNAddress {
		t.Errorf("connections at %s go to %s (now %s's), want %s's current address %s", r.LoopbackAddress, l.res.VNAddress, other.Name, r.Name, moved.VNAddress)
	}
	if row := d.row(moved); row.Address != r.LoopbackAddress {
		t.Errorf("status address %q, want %q where it still listens", row.Address, r.LoopbackAddress)
	}
}

// TestListenOnlyOnLoopback: whatever loopback address the catalog gives a resource (an
// administrator's edit through the API, a faulty node), the client listens only on a loopback IP:
// never on every interface or a LAN address, where the database would be open to the network as
// this user; when the address of a connected resource moves there, it stays where it was.
func TestListenOnlyOnLoopback(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:0", true},
		{"127.0.0.9:0", true},
		{"[::1]:0", true},
		{"0.0.0.0:0", false},
		{"[::]:0", false},
		{":0", false},
		{"[::ffff:0.0.0.0]:0", false},
		{"localhost:0", false},
		{"", false},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			d := followDaemon(t, false)
			r := api.Resource{Name: "a", ConnectivityMode: ModeLoopback, LoopbackAddress: tc.addr, VNAddress: "100.64.0.3:5432"}
			d.mu.Lock()
			_, err := d.listen(r, false)
			l := d.listeners[r.Name]
			d.mu.Unlock()
			if (err == nil) != tc.ok {
				t.Fatalf("listen on %q: %v, want ok %v", tc.addr, err, tc.ok)
			}
			if !tc.ok {
				return
			}
			if ip := l.ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
				t.Fatalf("listening on %s", l.ln.Addr())
			}
			// Moved by the catalog to every interface: it stays on loopback.
			moved := r
			moved.LoopbackAddress = "0.0.0.0:0"
			d.follow([]api.Resource{moved})
			d.mu.Lock()
			defer d.mu.Unlock()
			if ip := d.listeners[r.Name].ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
				t.Errorf("after the move, listening on %s", d.listeners[r.Name].ln.Addr())
			}
		})
	}
}

// TestConnectMovesFallbackOnceTUNIsUp: connecting again a resource served on loopback as a fallback,
// once the TUN is up (the helper started, as the message says), moves it to its alias there and
// then, so the address connect prints is the one it is served at, not a loopback address the next
// poll closes.
func TestConnectMovesFallbackOnceTUNIsUp(t *testing.T) {
	d := followDaemon(t, true)
	r := vnRes("a", 3, "a")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.LoopbackAddress = ln.Addr().String()
	d.listeners[r.Name] = &listener{res: r, ln: ln, fallback: true}
	d.mu.Lock()
	st, err := d.serve(r)
	d.mu.Unlock()
	if err != nil || st.Address != "a.ferry.internal:5432" || st.Serving != ModeVirtualNetworking || st.Fallback {
		t.Fatalf("connect again: %+v, %v; want served at a.ferry.internal:5432 through the TUN", st, err)
	}
	if c, err := net.Dial("tcp", r.LoopbackAddress); err == nil {
		c.Close()
		t.Errorf("the fallback listener at %s still accepts", r.LoopbackAddress)
	}
}
