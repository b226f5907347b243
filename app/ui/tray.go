//go:build cgo || !darwin

package ui

import (
	"sort"
	"strings"

	"fyne.io/fyne/v2"

	"github.com/ferryhq/ferry/client"
)

// TrayMenu returns the tray menu as last built (the one installed with Options.SetTray).
func (u *UI) TrayMenu() *fyne.Menu {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.trayMenu
}

// installTray builds the tray menu for a status and installs it when it changed.
func (u *UI) installTray(st client.Status, err error) {
	m := u.buildTray(st, err)
	sig := menuSignature(m)
	u.mu.Lock()
	changed := sig != u.traySig
	u.trayMenu, u.traySig = m, sig
	u.mu.Unlock()
	if changed && u.opt.SetTray != nil {
		u.opt.SetTray(m, TrayIcon(OverallState(st, err)))
	}
}

// menuSignature is the visible text of a menu (labels, checks, disabled items), to skip reinstalling
// an unchanged menu every poll.
func menuSignature(m *fyne.Menu) string {
	var b strings.Builder
	var walk func(items []*fyne.MenuItem)
	walk = func(items []*fyne.MenuItem) {
		for _, it := range items {
			b.WriteString(it.Label)
			if it.Checked {
				b.WriteString("✓")
			}
			if it.Disabled {
				b.WriteString("-")
			}
			if it.ChildMenu != nil {
				b.WriteString("{")
				walk(it.ChildMenu.Items)
				b.WriteString("}")
			}
			b.WriteString("\n")
		}
	}
	walk(m.Items)
	return b.String()
}

func (u *UI) buildTray(st client.Status, err error) *fyne.Menu {
	var items []*fyne.MenuItem
	info := func(s string) *fyne.MenuItem {
		it := fyne.NewMenuItem(s, nil)
		it.Disabled = true
		return it
	}
	u.mu.Lock()
	loggedIn := u.loggedIn
	u.mu.Unlock()
	switch {
	case !loggedIn && err == nil:
		items = append(items, info("Not logged in"))
	case err != nil:
		items = append(items, info("Ferry: "+shorten(err.Error(), 80)))
	case st.Suspended:
		items = append(items, info("Suspended by an administrator"))
	case st.DeviceRemoved:
		items = append(items, info("Device removed by an administrator"))
	case !st.NodeReachable:
		items = append(items, info("ferry-node unreachable"))
	default:
		items = append(items, info("Signed in as "+st.User))
	}
	if loggedIn && err == nil {
		items = append(items, fyne.NewMenuItemSeparator())
		if len(st.Resources) == 0 && st.NodeReachable {
			items = append(items, info("No resources granted to you yet"))
		}
		if len(st.Resources) > GroupThreshold {
			groups := map[string][]*fyne.MenuItem{}
			for _, r := range st.Resources {
				groups[groupKey(r)] = append(groups[groupKey(r)], u.resourceItem(r))
			}
			keys := make([]string, 0, len(groups))
			for k := range groups {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				g := fyne.NewMenuItem(k, nil)
				g.ChildMenu = fyne.NewMenu(k, groups[k]...)
				items = append(items, g)
			}
		} else {
			for _, r := range st.Resources {
				items = append(items, u.resourceItem(r))
			}
		}
		items = append(items, fyne.NewMenuItemSeparator(),
			fyne.NewMenuItem("Connect all", u.connectAll),
			fyne.NewMenuItem("Disconnect all", u.disconnectAll))
	}
	items = append(items, fyne.NewMenuItemSeparator(), fyne.NewMenuItem("Open Ferry", u.Open))
	if loggedIn {
		items = append(items, fyne.NewMenuItem("Log out", u.logout))
	} else {
		items = append(items, fyne.NewMenuItem("Log in…", u.Open))
	}
	quit := fyne.NewMenuItem("Quit", u.opt.Quit)
	quit.IsQuit = true
	items = append(items, quit)
	return fyne.NewMenu("Ferry", items...)
}

// resourceItem is a resource's tray entry: clicking it connects or disconnects; its submenu holds the
// same toggle and the copy actions (Linux tray hosts open the submenu on a click).
func (u *UI) resourceItem(r client.ResourceStatus) *fyne.MenuItem {
	name := r.Name
	toggle := "Connect"
	if r.Connected {
		toggle = "Disconnect"
	}
	it := fyne.NewMenuItem(TrayLabel(r), func() { u.Toggle(name) })
	it.Checked = r.Connected
	it.ChildMenu = fyne.NewMenu(name,
		fyne.NewMenuItem(toggle, func() { u.Toggle(name) }),
		fyne.NewMenuItemSeparator(),
		fyne.NewMenuItem("Copy address", func() { u.copyOf(name, func(r client.ResourceStatus) string { return r.Address }) }),
		fyne.NewMenuItem("Copy psql command", func() { u.copyOf(name, client.PsqlCommand) }),
		fyne.NewMenuItem("Copy JDBC URL", func() { u.copyOf(name, client.JDBCURL) }),
	)
	return it
}

func (u *UI) copyOf(name string, f func(client.ResourceStatus) string) {
	if r, ok := u.find(name); ok {
		u.Copy(f(r))
	}
}

// Open shows and raises the main window.
func (u *UI) Open() {
	u.Window.Show()
	u.Window.RequestFocus()
}

func shorten(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
