//go:build cgo

// Command shots renders the README's screenshots of the desktop app with the real Fyne driver. Run it
// under Xvfb with a screen larger than the windows:
//
//	xvfb-run -a -s "-screen 0 1400x1100x24" go run ./app/internal/shots -out docs
//
// It starts the demo installation, adds two more resources, connects one, and captures the main
// window, the main window at 1280 px with the details pane, and the "Add resource" form with
// ImageMagick's import.
//
// The third resource's hostname does not resolve, so the node's health check marks it unhealthy.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"fyne.io/fyne/v2"
	fyneapp "fyne.io/fyne/v2/app"

	"github.com/ferryhq/ferry/app/ui"
	"github.com/ferryhq/ferry/assets"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

const broken = "azure-pg-mi-legacy"

func main() {
	out := flag.String("out", "docs", "directory for the PNG files")
	flag.Parse()
	if err := run(*out); err != nil {
		log.Fatal(err)
	}
}

func run(out string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env, err := demo.Start(ctx, demo.Options{LoopbackIP: demo.RandomLoopbackIP(), NodeConfig: func(c *node.Config) {
		// The broken resource's server does not resolve; it is on the allow-list so that its check shows that.
		c.AllowedServerHosts = append(c.AllowedServerHosts, "oldpg.postgres.database.azure.com")
	}})
	if err != nil {
		return err
	}
	defer env.Close()
	for _, x := range []struct{ name, host, env string }{{"azure-pg-mi-dev", env.Emu.Hostname(), "dev"}, {broken, "oldpg.postgres.database.azure.com", "legacy"}} {
		r := resource.New(x.name)
		r.Hostname, r.Database, r.Username, r.ManagedIdentityClientID = x.host, demo.Database, demo.Role, demo.ClientID
		r.BindInterface = demo.RandomLoopbackIP()
		r.Tags = map[string]string{"env": x.env, "team": "data"}
		if _, err := env.Daemon.API().AddDatasource(ctx, r); err != nil {
			return fmt.Errorf("add %s: %w", x.name, err)
		}
	}
	if os.Getenv("DBUS_SESSION_BUS_ADDRESS") == "" {
		os.Setenv("DBUS_SESSION_BUS_ADDRESS", "disabled:") // no auto-launched bus left behind
	}
	a := fyneapp.NewWithID("dev.ferryhq.ferry.screenshots")
	a.SetIcon(fyne.NewStaticResource("icon.png", assets.IconPNG))
	u := ui.New(ui.Options{App: a, Dirs: env.Dirs, Core: client.NewControl(env.Dirs)})
	u.Window.Resize(fyne.NewSize(1180, 560))
	u.Window.Show()
	var shotErr error
	go func() {
		defer fyne.Do(a.Quit)
		u.Refresh(ctx)
		u.Select(demo.ResourceName)
		time.Sleep(2 * time.Second)
		if shotErr = capture(u.Window, filepath.Join(out, "main-window.png")); shotErr != nil {
			return
		}
		// The details pane at 1280 px, the common laptop width: values wrap between words, never inside.
		fyne.DoAndWait(func() { u.Window.Resize(fyne.NewSize(1280, 640)) })
		u.Select(demo.ResourceName)
		time.Sleep(2 * time.Second)
		if shotErr = capture(u.Window, filepath.Join(out, "details-pane.png")); shotErr != nil {
			return
		}
		fyne.DoAndWait(func() {
			u.ShowAdminForm()
			u.Window.Resize(fyne.NewSize(900, 1020))
			f := u.Form
			f.Name.SetText(`azure-pg-mi-"new"`)
			f.Hostname.SetText("mypg.postgres.database.azure.com")
			f.Database.SetText("production")
			f.Username.SetText("mi_user")
			f.PortOverride.SetText("80")
			f.Tags.SetText("env=production,team=data")
			f.Check()
		})
		time.Sleep(2 * time.Second)
		shotErr = capture(u.Window, filepath.Join(out, "add-resource.png"))
	}()
	a.Run()
	return shotErr
}

// capture saves the X screen (the window is the only one on the Xvfb screen) with ImageMagick's
// import, cropped to the window's size; Fyne's own Canvas().Capture() reads back an empty frame
// under Xvfb's software OpenGL.
func capture(w fyne.Window, path string) error {
	var size fyne.Size
	var scale float32
	fyne.DoAndWait(func() { size, scale = w.Canvas().Size(), w.Canvas().Scale() })
	shot := exec.Command("import", "-window", "root", "-crop", fmt.Sprintf("%dx%d+0+0", int(size.Width*scale), int(size.Height*scale)), "+repage", path)
	if out, err := shot.CombinedOutput(); err != nil {
		return fmt.Errorf("import (apt-get install imagemagick): %v: %s", err, out)
	}
	fmt.Println("wrote", path)
	return nil
}
