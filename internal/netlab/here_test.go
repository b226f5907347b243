package netlab

import (
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestAttachHereReachesHosts: after AttachHere this process's own namespace reaches a host's
// listener at the host's lab address (as a person's shell on the machine would), through one link
// with the lab's .1 address and a route to the lab's /24 only; Close removes that link.
func TestAttachHereReachesHosts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := newLab(t, ctx)
	a, err := l.AddHost(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := a.Listen("tcp", a.HostPort(0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, c.RemoteAddr().(*net.TCPAddr).IP.String())
			c.Close()
		}
	}()
	at, err := l.AttachHere(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.AttachHere(ctx); err == nil {
		t.Error("a second AttachHere succeeded")
	}
	if !l.Subnet().Contains(at.Addr) || at.Addr.To4()[3] != 1 || len(at.Interface) > 15 {
		t.Fatalf("attachment %+v on %v", at, l.Subnet())
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("this namespace dials %s: %v", ln.Addr(), err)
	}
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != at.Addr.String() {
		t.Fatalf("host a saw the connection come from %q (%v); want %s", got, err, at.Addr)
	}
	routes, err := exec.CommandContext(ctx, "ip", "-4", "-o", "route", "show", "dev", at.Interface).CombinedOutput()
	if err != nil {
		t.Fatalf("ip route show dev %s: %v: %s", at.Interface, err, routes)
	}
	if lines := strings.Split(strings.TrimSpace(string(routes)), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], l.Subnet().String()) {
		t.Errorf("routes through %s: %q; want the lab's %v only", at.Interface, routes, l.Subnet())
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "ip", "link", "show", at.Interface).CombinedOutput(); err == nil {
		t.Errorf("%s is still here after Close: %s", at.Interface, out)
	}
}

// TestHereRunsInThisNamespace: Here's Command and Exec run programs directly and Do runs fn as is,
// at 127.0.0.1, without root or a lab.
func TestHereRunsInThisNamespace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := Here()
	if h.HostPort(5) != "127.0.0.1:5" {
		t.Errorf("HostPort(5) = %s", h.HostPort(5))
	}
	if cmd := h.Command(ctx, "echo", "x"); cmd.Args[0] != "echo" {
		t.Errorf("Command runs %v", cmd.Args)
	}
	if out, err := h.Exec(ctx, "echo", "here"); err != nil || strings.TrimSpace(out) != "here" {
		t.Errorf("Exec: %q, %v", out, err)
	}
	ran := false
	if err := h.Do(func() error { ran = true; return nil }); err != nil || !ran {
		t.Errorf("Do: ran %v, %v", ran, err)
	}
}
