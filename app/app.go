// Package app is the Ferry desktop app (Fyne): a tray menu and a window over the client core. It holds
// no behaviour of its own: every action goes through client.Control, exactly as the CLI does.
package app

import (
	"context"
	"fmt"
	"os"
	"time"

	"fyne.io/fyne/v2"
	fyneapp "fyne.io/fyne/v2/app"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/driver/desktop"
	"fyne.io/fyne/v2/widget"

	"github.com/ferryhq/ferry/assets"
	"github.com/ferryhq/ferry/client"
)

// Run opens the desktop app and blocks until it quits or ctx ends.
func Run(ctx context.Context, dirs client.Dirs) error {
	a := fyneapp.NewWithID("dev.ferryhq.ferry")
	icon := fyne.NewStaticResource("icon.png", assets.IconPNG)
	a.SetIcon(icon)
	ctl := client.NewControl(dirs)
	w := a.NewWindow("Ferry")
	status := widget.NewLabel("Loading…")
	list := container.NewVBox()
	refresh := func() {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := ctl.Status(c)
		var items []fyne.CanvasObject
		var menu []*fyne.MenuItem
		text := ""
		switch {
		case err != nil:
			text = err.Error()
		case !st.NodeReachable:
			text = "ferry-node unreachable: " + st.NodeError
		default:
			text = fmt.Sprintf("Signed in as %s", st.User)
		}
		for _, r := range st.Resources {
			r := r
			label := "not connected"
			if r.Connected {
				label = "connected"
			}
			line := fmt.Sprintf("%s  %s  (%s)", r.Name, r.Address, label)
			toggle := func() {
				c, cancel := context.WithTimeout(ctx, 15*time.Second)
				defer cancel()
				var err error
				if r.Connected {
					err = ctl.Disconnect(c, r.Name)
				} else {
					_, err = ctl.Connect(c, r.Name)
				}
				if err != nil {
					a.SendNotification(fyne.NewNotification("Ferry", err.Error()))
				}
			}
			items = append(items, widget.NewButton(line, toggle))
			menu = append(menu, fyne.NewMenuItem(line, toggle))
		}
		fyne.Do(func() {
			status.SetText(text)
			list.Objects = items
			list.Refresh()
			if desk, ok := a.(desktop.App); ok && os.Getenv("DBUS_SESSION_BUS_ADDRESS") != "" {
				menu = append(menu, fyne.NewMenuItemSeparator(), fyne.NewMenuItem("Open Ferry", w.Show))
				desk.SetSystemTrayMenu(fyne.NewMenu("Ferry", menu...))
				desk.SetSystemTrayIcon(icon)
			}
		})
	}
	w.SetContent(container.NewBorder(status, nil, nil, nil, container.NewVScroll(list)))
	w.Resize(fyne.NewSize(520, 360))
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			refresh()
			select {
			case <-ctx.Done():
				fyne.Do(a.Quit)
				return
			case <-t.C:
			}
		}
	}()
	w.ShowAndRun()
	return nil
}
