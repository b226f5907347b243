//go:build cgo || !darwin

package ui

import (
	"errors"
	"path/filepath"
	"testing"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
)

const why = "Virtual networking is not available on this device, so resources set to virtual networking are served on loopback addresses instead."

func TestVNChange(t *testing.T) {
	tests := []struct {
		name string
		prev string
		st   client.Status
		err  error
		want bool
	}{
		{"first said", "", client.Status{VNUnavailable: why}, nil, true},
		{"said again", why, client.Status{VNUnavailable: why}, nil, false},
		{"virtual networking works", "", client.Status{}, nil, false},
		{"daemon down", "", client.Status{}, errors.New("no daemon"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := VNChange(tc.prev, tc.st, tc.err)
			if (n != nil) != tc.want || (n != nil && n.Content != why) {
				t.Errorf("VNChange = %+v, want notification %v", n, tc.want)
			}
		})
	}
}

// TestModeColumnAndVNNote: the Mode column says how the client serves each resource now, and the
// window shows the client's one message when virtual networking is not available.
func TestModeColumnAndVNNote(t *testing.T) {
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
	u := New(Options{App: test.NewTempApp(t), Dirs: dirs, Core: client.NewControl(dirs)})
	row := func(name, configured, serving string, fallback bool) client.ResourceStatus {
		return client.ResourceStatus{Resource: api.Resource{Name: name, ConnectivityMode: configured}, Address: "127.0.0.1:10001", Serving: serving, Fallback: fallback}
	}
	st := client.Status{NodeReachable: true, VNUnavailable: why, Resources: []client.ResourceStatus{
		row("a", client.ModeLoopback, client.ModeLoopback, false),
		row("b", client.ModeVirtualNetworking, client.ModeVirtualNetworking, false),
		row("c", client.ModeVirtualNetworking, client.ModeLoopback, true),
	}}
	u.mu.Lock()
	u.status = st
	u.mu.Unlock()
	fyne.DoAndWait(func() { u.redraw(st, nil, true) })
	for name, want := range map[string]string{"a": "loopback", "b": "virtual networking", "c": "loopback (no TUN helper)"} {
		if got := read(func() string { return u.Row(name).Mode.Text }); got != want {
			t.Errorf("Mode column of %s: %q, want %q", name, got, want)
		}
	}
	for _, c := range []struct {
		r    client.ResourceStatus
		want string
	}{
		{st.Resources[0], "loopback"},
		{st.Resources[1], "virtual networking"},
		{st.Resources[2], "loopback (no TUN helper); configured: " + client.ModeVirtualNetworking},
		{row("d", "", "", false), client.ModeLoopback}, // not served: the configured mode (the org's)
	} {
		if got := DetailsModeText(c.r, client.ModeLoopback); got != c.want {
			t.Errorf("details pane mode of %s: %q, want %q", c.r.Name, got, c.want)
		}
	}
	if !read(u.VNNote.Visible) || read(func() string { return u.VNNote.Text }) != why {
		t.Errorf("the window does not show why virtual networking is unavailable: visible %v, %q", u.VNNote.Visible(), u.VNNote.Text)
	}
	st.VNUnavailable = ""
	fyne.DoAndWait(func() { u.redraw(st, nil, true) })
	if read(u.VNNote.Visible) {
		t.Error("the note stays once virtual networking works")
	}
}

func read[T any](fn func() T) T {
	var v T
	fyne.DoAndWait(func() { v = fn() })
	return v
}
