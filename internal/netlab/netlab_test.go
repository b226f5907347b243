package netlab

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newLab(t *testing.T, ctx context.Context) *Lab {
	t.Helper()
	if err := Check(); err != nil {
		t.Skip(err)
	}
	l, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

// TestLabHostsReachEachOtherOnly: two hosts talk over the bridge by their lab addresses; this
// machine's namespace neither sees the lab's links nor reaches its addresses, and is the same
// before and after.
func TestLabHostsReachEachOtherOnly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := newLab(t, ctx)
	a, err := l.AddHost(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.AddHost(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if !l.Subnet().Contains(a.Addr()) || !l.Subnet().Contains(b.Addr()) || a.Addr().Equal(b.Addr()) {
		t.Fatalf("addresses %v and %v on %v", a.Addr(), b.Addr(), l.Subnet())
	}
	if _, err := l.AddHost(ctx, "a"); err == nil {
		t.Error("a second host named a was made")
	}

	ln, err := a.Listen("tcp", a.HostPort(0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprint(c, "hello from a")
	}()
	c, err := b.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("b dials a: %v", err)
	}
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "hello from a" {
		t.Fatalf("b read %q, %v", got, err)
	}

	// Hosts know each other by name, and by the names AddName gives.
	if err := l.AddName("mypg.postgres.database.azure.com", a); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "mypg.postgres.database.azure.com"} {
		out, err := b.Exec(ctx, "getent", "hosts", name)
		if err != nil || !strings.HasPrefix(out, a.Addr().String()+" ") {
			t.Errorf("b resolves %s to %q, %v; want %s", name, out, err, a.Addr())
		}
	}

	// A process in b sees eth0 with b's address, and loopback up.
	out, err := b.Exec(ctx, "ip", "-o", "-4", "addr")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "eth0") || !strings.Contains(out, b.Addr().String()+"/24") || !strings.Contains(out, "127.0.0.1/8") {
		t.Errorf("b's addresses:\n%s", out)
	}

	// None of the lab's links is in this machine's namespace, nor peers with one there (ip shows
	// a veth whose peer is in a named namespace with "link-netns NAME").
	for _, args := range [][]string{{"ip", "-o", "link"}, {"ip", "-o", "addr"}} {
		out, err := run(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, l.Name()) || strings.Contains(out, a.Addr().String()) {
			t.Errorf("%s shows the lab:\n%s", strings.Join(args, " "), out)
		}
	}
	// This machine's namespace does not reach a's listener. (A sandbox may accept every outbound
	// connection itself, so what counts is whether a's greeting comes back.)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprint(c, "hello from a")
	}()
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	var d net.Dialer
	if c, err := d.DialContext(dctx, "tcp", ln.Addr().String()); err == nil {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		if strings.Contains(string(got), "hello from a") {
			t.Error("this machine's namespace reached a host of the lab")
		}
	}
}

// TestLabCloseRemovesEverything: Close leaves none of the lab's namespaces.
func TestLabCloseRemovesEverything(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := newLab(t, ctx)
	if _, err := l.AddHost(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if n := countNS(t, ctx, l.Name()); n != 2 {
		t.Fatalf("%d namespaces of the lab, want 2 (bridge and x)", n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := countNS(t, ctx, l.Name()); n != 0 {
		t.Fatalf("%d namespaces of the lab are left after Close", n)
	}
	if left, _ := filepath.Glob(filepath.Join("/etc/netns", l.Name()+"*")); len(left) != 0 {
		t.Fatalf("left after Close: %v", left)
	}
	if _, err := l.AddHost(ctx, "y"); err == nil {
		t.Error("AddHost after Close made a host")
	}
}

// TestSweepRemovesLabsOfExitedProcesses: what a killed run left is removed by the next New; the
// labs of live processes stay.
func TestSweepRemovesLabsOfExitedProcesses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := newLab(t, ctx)
	// A process that has exited: its PID names the stale lab.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("%s%d-beef-bridge", Prefix, dead.Process.Pid)
	if _, err := run(ctx, "ip", "netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removeNS(stale) })
	staleEtc := etcDir(fmt.Sprintf("%s%d-beef-gone", Prefix, dead.Process.Pid))
	if err := os.MkdirAll(staleEtc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(staleEtc) })
	l2, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if countNS(t, ctx, stale) != 0 {
		t.Errorf("the stale namespace %s is still there", stale)
	}
	if _, err := os.Stat(staleEtc); err == nil {
		t.Errorf("the stale %s is still there", staleEtc)
	}
	if countNS(t, ctx, l.Name()) != 1 {
		t.Errorf("the live lab %s was swept", l.Name())
	}
}

func countNS(t *testing.T, ctx context.Context, prefix string) int {
	t.Helper()
	out, err := run(ctx, "ip", "netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, prefix) {
			n++
		}
	}
	return n
}

// TestLabSubnetAvoidsTunnelAndHost: the lab's /24 is never in Ferry's tunnel subnet
// (198.18.0.0/15: a lab address must not pass for a device's) and overlaps none of this
// machine's routes.
func TestLabSubnetAvoidsTunnelAndHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Check(); err != nil {
		t.Skip(err)
	}
	used, err := hostNets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tunnel := &net.IPNet{IP: net.IPv4(198, 18, 0, 0).To4(), Mask: net.CIDRMask(15, 32)}
	for range 50 {
		sub, err := pickSubnet(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if overlapsAny(sub, []*net.IPNet{tunnel}) || overlapsAny(sub, used) {
			t.Fatalf("picked %v: overlaps the tunnel subnet or one of %v", sub, used)
		}
	}
}
