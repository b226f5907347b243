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
// With -vn (as root: it makes a network namespace) it renders main-window-vn.png instead: the client
// daemon runs in a namespace of its own with a TUN, the org's default is virtual networking, and two
// resources are served on their DNS aliases beside the demo's loopback resource.
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
	"strings"
	"syscall"
	"time"

	"fyne.io/fyne/v2"
	fyneapp "fyne.io/fyne/v2/app"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/app/ui"
	"github.com/ferryhq/ferry/assets"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/demo/vnet"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

const broken = "azure-pg-mi-legacy"

func main() {
	vnet.RunCLIIfAsked() // the daemon in the namespace (-vn) is this binary acting as the ferry CLI
	out := flag.String("out", "docs", "directory for the PNG files")
	vn := flag.Bool("vn", false, "render the main window in virtual networking mode (root: network namespace and TUN)")
	flag.Parse()
	run := run
	if *vn {
		run = runVN
	}
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

// runVN renders the main window over a client daemon in a network namespace, serving two resources
// by virtual networking (aliases) and the demo's resource on its loopback address.
func runVN(out string) error {
	if err := vnet.Check(); err != nil {
		return fmt.Errorf("-vn: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env, err := demo.Start(ctx, demo.Options{LoopbackIP: demo.RandomLoopbackIP()})
	if err != nil {
		return err
	}
	defer env.Close()
	if _, err := env.Daemon.API().UpdateSettings(ctx, api.Settings{ConnectivityMode: resource.ModeVirtualNetworking}); err != nil {
		return err
	}
	names := []string{"azure-pg-mi-analytics", "azure-pg-mi-reporting"}
	for _, name := range names {
		r := resource.New(name)
		r.Hostname, r.Database, r.Username, r.ManagedIdentityClientID = env.Emu.Hostname(), demo.Database, demo.Role, demo.ClientID
		r.Subdomain = strings.TrimPrefix(name, "azure-pg-mi-")
		r.BindInterface = demo.RandomLoopbackIP()
		r.Tags = map[string]string{"env": "production", "team": "data"}
		if _, err := env.Daemon.API().AddDatasource(ctx, r); err != nil {
			return fmt.Errorf("add %s: %w", name, err)
		}
	}
	n, err := vnet.NewNetns(ctx)
	if err != nil {
		return err
	}
	defer n.Close()
	tmp, err := os.MkdirTemp("", "ferry-shots-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dirs := client.Dirs{Config: filepath.Join(tmp, "cfg"), Runtime: filepath.Join(tmp, "run")}
	if _, err := n.Login(ctx, env.Node, dirs, node.DefaultAdmin, "laptop"); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	p, err := n.Start(dirs, nil, []string{exe, "daemon"}) // each resource in its own mode
	if err != nil {
		return err
	}
	defer p.Stop(syscall.SIGTERM, 20*time.Second)
	if err := p.WaitReady(ctx, dirs, time.Minute); err != nil {
		return fmt.Errorf("%w\n%s", err, p.Output())
	}
	ctl := client.NewControl(dirs)
	for _, name := range append(names, demo.ResourceName) {
		if _, err := ctl.Connect(ctx, name); err != nil {
			return fmt.Errorf("connect %s: %w\n%s", name, err, p.Output())
		}
	}
	if os.Getenv("DBUS_SESSION_BUS_ADDRESS") == "" {
		os.Setenv("DBUS_SESSION_BUS_ADDRESS", "disabled:")
	}
	a := fyneapp.NewWithID("dev.ferryhq.ferry.screenshots")
	a.SetIcon(fyne.NewStaticResource("icon.png", assets.IconPNG))
	u := ui.New(ui.Options{App: a, Dirs: dirs, Core: ctl})
	u.Window.Resize(fyne.NewSize(1280, 640)) // the common laptop width, as the details pane shot
	u.Window.Show()
	var shotErr error
	go func() {
		defer fyne.Do(a.Quit)
		u.Refresh(ctx)
		u.Refresh(ctx) // the second refresh has the org's DNS domain for the details pane
		u.Select(names[0])
		time.Sleep(2 * time.Second)
		shotErr = capture(u.Window, filepath.Join(out, "main-window-vn.png"))
	}()
	a.Run()
	return shotErr
}
