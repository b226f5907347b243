package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
)

// Here is the namespace this process runs in, as a host without a lab: Command and Exec run
// programs directly, Do runs fn as is, and its address is 127.0.0.1. Code written for a lab's hosts
// (demo/fleet) runs on loopback with it, e.g. when the lab cannot be made (not root).
func Here() *Host { return &Host{Name: "here", addr: net.IPv4(127, 0, 0, 1).To4()} }

// here reports whether h is Here's (no namespace of its own).
func (h *Host) here() bool { return h.NS == "" }

// Attachment is the link AttachHere made between this process's namespace and a lab's bridge.
type Attachment struct {
	// Interface is the link's name in this process's namespace; Addr its address on the lab's /24.
	Interface string
	Addr      net.IP
}

// AttachHere joins the namespace this process runs in to the lab's bridge, for a person on this
// machine (their shell, their ferry client) to reach the lab's hosts by their addresses: a veth
// pair whose one end is here (Attachment.Interface, address .1 of the lab's /24, which brings a
// route to that /24 and to nothing else) and whose other end is a port of the bridge. Hosts of the
// lab can then reach this namespace's .1 address too; the lab still has no route out of the /24.
// Close removes the pair; Sweep removes the bridge's namespace after the process is gone, and
// the pair goes with it.
// A lab is attached at most once.
func (l *Lab) AttachHere(ctx context.Context) (Attachment, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return Attachment{}, errors.New("netlab: attach: the lab is closed")
	}
	if l.attached != "" {
		l.mu.Unlock()
		return Attachment{}, errors.New("netlab: attach: this lab is attached already")
	}
	ip := make(net.IP, 4)
	copy(ip, l.subnet.IP.To4())
	ip[3] = 1
	// "fl" + PID + "-" + tag: at most 14 characters (an interface name has at most 15), unique
	// on this machine as the lab's name is.
	a := Attachment{Interface: "fl" + strings.TrimPrefix(l.name, Prefix), Addr: ip}
	l.attached = a.Interface // Close removes it even when the setup below fails half-way
	l.mu.Unlock()
	br := l.nsName(bridgeHost)
	if err := runAll(ctx, [][]string{
		{"ip", "link", "add", a.Interface, "type", "veth", "peer", "name", "here", "netns", br},
		{"ip", "-n", br, "link", "set", "here", "master", "br0"},
		{"ip", "-n", br, "link", "set", "here", "up"},
		{"ip", "addr", "add", ip.String() + "/24", "dev", a.Interface},
		{"ip", "link", "set", a.Interface, "up"},
	}); err != nil {
		return Attachment{}, fmt.Errorf("netlab: attach this namespace to the lab: %w", err)
	}
	return a, nil
}
