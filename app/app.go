//go:build cgo

// Package app is the Ferry desktop app: it wires the tray menu and the window of package ui to the real
// Fyne app (which needs cgo and a display). It holds no behaviour of its own: every action goes through
// the client core, exactly as the CLI does.
//
// When this device is enrolled and no daemon answers on the control socket, the app runs the client
// daemon inside its own process (client.StartDaemon) and stops it when it quits; a `ferry daemon`
// already running is used instead and outlives the app.
package app

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"runtime"
	"sync"

	"fyne.io/fyne/v2"
	fyneapp "fyne.io/fyne/v2/app"
	"fyne.io/fyne/v2/driver/desktop"

	"github.com/ferryhq/ferry/app/ui"
	"github.com/ferryhq/ferry/assets"
	"github.com/ferryhq/ferry/client"
)

// ID is the app's identifier (FyneApp.toml's Details.ID).
const ID = "dev.ferryhq.ferry"

// Run opens the desktop app and blocks until it quits (tray Quit, window close without a tray, or ctx
// ending, e.g. on SIGTERM).
func Run(ctx context.Context, dirs client.Dirs) error {
	if runtime.GOOS == "linux" && os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
		return errors.New("no graphical session (neither DISPLAY nor WAYLAND_DISPLAY is set), so the desktop app cannot open; use `ferry daemon` and the commands instead (ferry --help)")
	}
	if err := checkDisplay(); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	a := fyneapp.NewWithID(ID)
	a.SetIcon(fyne.NewStaticResource("icon.png", assets.IconPNG))

	var mu sync.Mutex
	var daemon *client.Daemon
	startDaemon := func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if client.DaemonRunning(dirs) {
			return nil
		}
		mode := os.Getenv(client.EnvMode)
		if p, err := client.LoadPreferences(dirs); mode == "" && err == nil {
			mode = p.ConnectivityMode // Settings' connectivity mode; "" serves each resource in its own
		}
		if err := client.ValidMode(mode); err != nil {
			log.Warn("ignoring the connectivity mode preference", "err", err)
			mode = ""
		}
		d, err := client.StartDaemon(context.WithoutCancel(ctx), dirs, log.With("component", "client"), client.WithMode(mode))
		if err != nil {
			return err
		}
		daemon = d
		go func() {
			<-d.LoggedOut()
			mu.Lock()
			defer mu.Unlock()
			_ = d.Close()
			if daemon == d {
				daemon = nil
			}
		}()
		return nil
	}

	// quit stops the event loop without closing the windows first, as fyne's App.Quit does: an
	// event the loop still takes (a pointer motion queued before it stops) would reach a closed
	// window, whose view is nil, and panic in the toolkit. The loop destroys the windows as it ends.
	quit := func() { a.Driver().Quit() }
	tray := DetectTray()
	opt := ui.Options{App: a, Dirs: dirs, Core: client.NewControl(dirs), StartDaemon: startDaemon, Logger: log, Quit: func() { fyne.Do(quit) }}
	if path, err := client.AutostartPath(); err == nil {
		opt.AutostartPath = path
		opt.Executable, _ = os.Executable()
	}
	desk, isDesktop := a.(desktop.App)
	if tray.Bus && isDesktop {
		// Fyne's systray needs a D-Bus session bus: without one it panics on quit, so the menu is only
		// set when a bus answered.
		opt.SetTray = func(m *fyne.Menu, icon fyne.Resource) {
			desk.SetSystemTrayMenu(m)
			desk.SetSystemTrayIcon(icon)
		}
	}
	u := ui.New(opt)
	if opt.SetTray != nil {
		desk.SetSystemTrayWindow(u.Window)
	}
	if opt.SetTray != nil && tray.Usable() {
		u.Window.SetCloseIntercept(u.Window.Hide) // the tray's Open Ferry brings it back
	}
	if !tray.Usable() || !isDesktop {
		log.Info("no system tray: showing the main window", "why", tray.Reason)
		u.SetBanner("No tray icon: " + tray.Reason + " Ferry runs in this window instead; closing it quits Ferry.")
		u.Window.Show()
	} else if _, err := client.LoadState(dirs); err != nil {
		u.Window.Show() // not enrolled yet: show the login view
	}
	u.Window.SetMaster()

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); u.Run(runCtx) }()
	go func() {
		defer wg.Done()
		<-runCtx.Done()
		fyne.Do(quit)
	}()
	a.Run()
	stop()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if daemon != nil {
		return daemon.Close()
	}
	return nil
}
