package app

import (
	"os"
	"path/filepath"

	"github.com/godbus/dbus/v5"
)

// Tray says whether a system tray can work here. Fyne's Linux tray is a StatusNotifierItem on the
// D-Bus session bus, shown by the desktop's StatusNotifierWatcher (org.kde.StatusNotifierWatcher,
// freedesktop StatusNotifierItem specification).
type Tray struct {
	Bus     bool   // a session bus answered
	Watcher bool   // a tray host (StatusNotifierWatcher) is registered on it
	Reason  string // why the tray is not usable, for the person; "" when it is
}

// Usable reports whether a tray icon would be seen.
func (t Tray) Usable() bool { return t.Bus && t.Watcher }

// DetectTray connects to the session bus named by DBUS_SESSION_BUS_ADDRESS (or the systemd default
// $XDG_RUNTIME_DIR/bus) without auto-launching one, and asks whether a tray host is registered.
func DetectTray() Tray {
	addr := os.Getenv("DBUS_SESSION_BUS_ADDRESS")
	if addr == "" {
		if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
			if _, err := os.Stat(filepath.Join(rt, "bus")); err == nil {
				addr = "unix:path=" + filepath.Join(rt, "bus")
				os.Setenv("DBUS_SESSION_BUS_ADDRESS", addr) // what the tray library will use too
			}
		}
	}
	if addr == "" {
		// Stop libraries (Fyne's notifications and portal code use godbus) from auto-launching a
		// private session bus with dbus-launch: that bus would outlive the app.
		os.Setenv("DBUS_SESSION_BUS_ADDRESS", "disabled:")
		return Tray{Reason: "there is no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set), which the system tray needs."}
	}
	conn, err := dbus.Connect(addr)
	if err != nil {
		return Tray{Reason: "the D-Bus session bus at " + addr + " did not answer (" + err.Error() + "), and the system tray needs it."}
	}
	defer conn.Close()
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, "org.kde.StatusNotifierWatcher").Store(&has); err != nil || !has {
		return Tray{Bus: true, Reason: "the desktop has no system tray (no StatusNotifierWatcher on the session bus); GNOME needs the AppIndicator extension."}
	}
	return Tray{Bus: true, Watcher: true}
}
