//go:build cgo || !darwin

package ui_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/widget"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/app/ui"
	"github.com/ferryhq/ferry/cli"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
)

// notes records the notifications the app sends.
type notes struct {
	mu  sync.Mutex
	all []*fyne.Notification
}

func (n *notes) add(x *fyne.Notification) { n.mu.Lock(); n.all = append(n.all, x); n.mu.Unlock() }
func (n *notes) find(title string) *fyne.Notification {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, x := range n.all {
		if strings.Contains(x.Title, title) {
			return x
		}
	}
	return nil
}

// tray records what the app installs as its tray.
type tray struct {
	mu   sync.Mutex
	icon string
}

func (t *tray) set(_ *fyne.Menu, icon fyne.Resource) {
	t.mu.Lock()
	t.icon = icon.Name()
	t.mu.Unlock()
}
func (t *tray) get() string { t.mu.Lock(); defer t.mu.Unlock(); return t.icon }

// read runs fn on the UI goroutine and returns its result.
func read[T any](fn func() T) T {
	var v T
	fyne.DoAndWait(func() { v = fn() })
	return v
}

// eventually polls cond every 50 ms for up to limit.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool, explain ...func() string) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, e := range explain {
		what += e()
	}
	t.Fatalf("after %s: %s", limit, what)
	return 0
}

func (n *notes) dump() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var b strings.Builder
	for _, x := range n.all {
		b.WriteString("\n  " + x.Title + ": " + x.Content)
	}
	return b.String()
}

func item(m *fyne.Menu, prefix string) *fyne.MenuItem {
	for _, it := range m.Items {
		if strings.Contains(it.Label, prefix) {
			return it
		}
	}
	return nil
}

func psql(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", strings.Join(args, " "))
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=20")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// TestDesktopAgainstDemo drives the real window and tray menu against a real client daemon, node and
// PostgreSQL (demo.Start; one per test binary because MSAL caches tokens process-wide).
func TestDesktopAgainstDemo(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql is not installed (apt-get install postgresql-client)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), LoopbackIP: demo.RandomLoopbackIP()})
	t.Setenv(client.EnvConfigDir, env.Dirs.Config) // for the CLI commands below
	t.Setenv(client.EnvRuntimeDir, env.Dirs.Runtime)

	a := test.NewTempApp(t)
	var n notes
	var tr tray
	autostart := filepath.Join(t.TempDir(), "autostart", "ferry.desktop")
	u := ui.New(ui.Options{App: a, Dirs: env.Dirs, Core: client.NewControl(env.Dirs), Notify: n.add, SetTray: tr.set,
		AutostartPath: autostart, Executable: "/usr/bin/ferry"})
	win := test.NewTempWindow(t, u.Window.Content()) // lay the content out on a test canvas
	u.Refresh(ctx)

	prod := u.Row(demo.ResourceName)
	if prod == nil {
		t.Fatalf("no row for %s; status line %q", demo.ResourceName, u.StatusLine.Text)
	}
	if got := read(func() string { return u.StatusLine.Text }); !strings.HasSuffix(got, "· 1 resource") {
		t.Errorf("status line with one resource: %q", got)
	}
	if got := read(func() string { return prod.State.Text }); got != "connected" {
		t.Fatalf("%s state %q, want connected", demo.ResourceName, got)
	}
	if tr.get() != "tray-connected.png" {
		t.Errorf("tray icon %q with a connected resource", tr.get())
	}
	if !read(u.AdminFormShown) {
		t.Fatal("the admin sees no Add resource form")
	}
	// The admin's Settings tab lists the deployment's nodes: this one, online.
	self, err := env.Node.Catalog().Node(ctx, env.Node.ID())
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the node list in Settings to show "+self.Name+" online", func() bool {
		return strings.HasPrefix(read(func() string { return u.Nodes.Text }), self.Name+" · online · heartbeat ")
	}, func() string { return ": " + read(func() string { return u.Nodes.Text }) })

	const dev = "azure-pg-mi-dev"
	devIP := demo.RandomLoopbackIP()
	t.Run("admin form adds a resource to the node", func(t *testing.T) {
		f := u.Form
		fyne.DoAndWait(func() {
			u.ShowAdminForm()
			f.Name.SetText(`dev"db`)
			f.Hostname.SetText(env.Emu.Hostname())
			f.Database.SetText(demo.Database)
			f.Username.SetText(demo.Role)
			f.ClientID.SetText(demo.ClientID)
			f.BindInterface.SetText(devIP)
			f.PortOverride.SetText("80")
			f.Tags.SetText("env=dev,team=data")
		})
		test.Tap(f.Submit)
		for field, want := range map[string]string{"name": `display name must not contain ", < or >`, "port-override": "port override 80 is out of range 1024-64999 for loopback mode"} {
			if got := read(func() string { return f.FieldError(field) }); got != want {
				t.Errorf("%s: form shows %q, want %q", field, got, want)
			}
		}
		fyne.DoAndWait(func() { f.Name.SetText(dev); f.PortOverride.SetText("") })
		test.Tap(f.Submit)
		eventually(t, 30*time.Second, "the form never said the resource was added", func() bool {
			return strings.HasPrefix(read(func() string { return f.Message.Text }), "Added "+dev)
		})
	})

	var devRow *ui.Row
	var devStatus client.ResourceStatus
	t.Run("tapping a resource connects it and psql works through its address", func(t *testing.T) {
		u.Refresh(ctx)
		if devRow = u.Row(dev); devRow == nil {
			t.Fatalf("no row for %s after adding it", dev)
		}
		st, _ := u.Status()
		for _, r := range st.Resources {
			if r.Name == dev {
				devStatus = r
			}
		}
		before := read(func() [2]string { return [2]string{devRow.State.Text, devRow.Address.Text} })
		if before != [2]string{"not connected", devStatus.Address + " (not listening)"} {
			t.Fatalf("before connecting: %q", before)
		}
		test.Tap(devRow.Toggle)
		eventually(t, 20*time.Second, "the row never showed connected", func() bool {
			return read(func() string { return devRow.State.Text }) == "connected"
		})
		if got := read(func() string { return devRow.Address.Text }); got != devStatus.Address || !strings.HasPrefix(got, devIP+":") {
			t.Errorf("address after connecting %q, want %s on %s", got, devStatus.Address, devIP)
		}
		host, port, _ := net.SplitHostPort(devStatus.Address)
		out, err := psql(t, "psql", "-X", "-A", "-t", "-c", "'select current_user'",
			"'host="+host+" port="+port+" dbname=production user=mi_user sslmode=disable'")
		if err != nil || out != demo.Role {
			t.Fatalf("psql through %s: %v: %s", devStatus.Address, err, out)
		}
	})

	t.Run("tray menu copies and toggles", func(t *testing.T) {
		devItem := item(u.TrayMenu(), dev)
		if devItem == nil || !devItem.Checked || !strings.Contains(devItem.Label, devStatus.Address) {
			t.Fatalf("tray item for %s: %+v", dev, devItem)
		}
		copyItem := func(label string) string {
			it := item(devItem.ChildMenu, label)
			if it == nil {
				t.Fatalf("no %q under %s", label, dev)
			}
			it.Action()
			time.Sleep(100 * time.Millisecond)
			return read(func() string { return a.Clipboard().Content() })
		}
		if got := copyItem("Copy address"); got != devStatus.Address {
			t.Errorf("copied address %q", got)
		}
		host, port, _ := net.SplitHostPort(devStatus.Address)
		if got, want := copyItem("Copy JDBC URL"), "jdbc:postgresql://"+host+":"+port+"/production?sslmode=disable&user=mi_user"; got != want {
			t.Errorf("copied JDBC URL %q, want %q", got, want)
		}
		cmd := copyItem("Copy psql command")
		if out, err := psql(t, cmd, "-X", "-A", "-t", "-c", "'select 40+2'"); err != nil || out != "42" {
			t.Errorf("running the copied %q: %v: %s", cmd, err, out)
		}
		devItem.Action() // a click on the resource disconnects it
		eventually(t, 20*time.Second, "the tray click did not disconnect", func() bool {
			return read(func() string { return devRow.State.Text }) == "not connected"
		})
		if it := item(u.TrayMenu(), dev); it == nil || it.Checked || strings.Contains(it.Label, devStatus.Address) {
			t.Errorf("tray item after disconnecting: %+v", it)
		}
		if _, err := net.DialTimeout("tcp", devStatus.Address, time.Second); err == nil {
			t.Error("the address still accepts connections after a disconnect")
		}
	})

	t.Run("a CLI connect shows in the window and the tray", func(t *testing.T) {
		pctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { u.Run(pctx); close(done) }()
		defer func() { stop(); <-done }()
		root := cli.NewRoot(nil)
		root.SetArgs([]string{"connect", dev})
		root.SetOut(&bytes.Buffer{})
		start := time.Now()
		if err := root.ExecuteContext(ctx); err != nil {
			t.Fatalf("ferry connect: %v", err)
		}
		eventually(t, 10*time.Second, "the CLI connect never showed", func() bool {
			it := item(u.TrayMenu(), dev)
			return it != nil && it.Checked && read(func() string { return devRow.State.Text }) == "connected"
		})
		t.Logf("a CLI connect showed in the tray and window %s after the command started", time.Since(start).Round(time.Millisecond))
	})

	t.Run("search filters names and tags", func(t *testing.T) {
		test.Tap(prod.Open)
		if got := read(u.Details.Showing); got != demo.ResourceName {
			t.Fatalf("details pane shows %q after selecting %s", got, demo.ResourceName)
		}
		for search, want := range map[string][2]bool{"env=dev": {false, true}, "PROD": {true, false}, "team=data": {true, true}, "": {true, true}} {
			test.Type(u.Search, "")
			fyne.DoAndWait(func() { u.Search.SetText(search) })
			got := read(func() [2]bool { return [2]bool{isShown(u, demo.ResourceName), isShown(u, dev)} })
			if got != want {
				t.Errorf("search %q: shown (prod, dev) = %v, want %v", search, got, want)
			}
			if got := read(u.Details.Showing); got != "" && !want[0] {
				t.Errorf("search %q hides %s, but the details pane still shows %q", search, demo.ResourceName, got)
			}
			if got := read(func() string { return u.EmptyHint.Text }); got != "" || read(u.EmptyHint.Visible) {
				t.Errorf("search %q finds resources, but the table says %q", search, got)
			}
		}
		if got := read(u.Details.Showing); got != "" {
			t.Errorf("the details pane shows %q again after the search that hid it was cleared", got)
		}
		fyne.DoAndWait(func() { u.Search.SetText("nope") })
		if got := read(func() string { return u.EmptyHint.Text }); !read(u.EmptyHint.Visible) || !strings.Contains(got, `No resource matches "nope"`) {
			t.Errorf("a search that finds nothing says %q (shown %v)", got, read(u.EmptyHint.Visible))
		}
		fyne.DoAndWait(func() { u.Search.SetText("") })
	})

	t.Run("disconnect all and connect all", func(t *testing.T) {
		item(u.TrayMenu(), "Disconnect all").Action()
		eventually(t, 20*time.Second, "disconnect all left something connected", func() bool {
			u.Refresh(ctx)
			return tr.get() == "tray-idle.png"
		})
		item(u.TrayMenu(), "Connect all").Action()
		eventually(t, 20*time.Second, "connect all left something disconnected", func() bool {
			u.Refresh(ctx)
			st, _ := u.Status()
			return st.Resources[0].Connected && st.Resources[1].Connected && tr.get() == "tray-connected.png"
		})
	})

	t.Run("details pane", func(t *testing.T) {
		test.Tap(devRow.Open)
		got := read(func() map[string]string {
			m := map[string]string{}
			for k, l := range u.Details.Fields {
				m[k] = l.Text
			}
			return m
		})
		if got["Address"] != devStatus.Address || got["Database"] != "production" || got["Tags"] != "env=dev,team=data" ||
			got["Connectivity mode"] != "loopback" || (got["Health"] != "healthy" && got["Health"] != "unhealthy (not checked yet)") || got["Virtual networking address"] == "—" {
			t.Errorf("details: %v", got)
		}
	})

	t.Run("at 1280 px the details pane wraps only between words and addresses are whole", func(t *testing.T) {
		fyne.DoAndWait(func() { win.Resize(fyne.NewSize(1280, 800)) })
		check := func(t *testing.T) {
			t.Helper()
			u.Refresh(ctx)
			test.Tap(prod.Open)
			fyne.DoAndWait(func() { win.Content().Refresh() })
			if dns := read(func() string { return u.Details.Fields["DNS name"].Text }); !strings.HasPrefix(dns, demo.ResourceName+".") {
				t.Errorf("DNS name %q: the check needs a long name", dns)
			}
			for field, v := range u.Details.Fields {
				text, size, lines := read(func() string { return v.Text }), read(v.Size), read(func() []string { return renderedLines(v) })
				if size.Width <= 0 || len(lines) == 0 {
					t.Fatalf("%s is not laid out (%v, lines %q)", field, size, lines)
				}
				if nospace(strings.Join(lines, "")) != nospace(text) {
					t.Errorf("%s: lines %q are not the value %q", field, lines, text)
				}
				for _, l := range lines[:len(lines)-1] {
					if r := []rune(l); !strings.ContainsRune(".-,/:@&?;_ ", r[len(r)-1]) {
						t.Errorf("%s %q wraps inside a word at %.0f px: %q", field, text, size.Width, lines)
					}
				}
				if len(lines) > 1 {
					t.Logf("%s wraps at %.0f px: %q", field, size.Width, lines)
				}
			}
			for _, name := range []string{demo.ResourceName, dev} {
				r := u.Row(name)
				text, width := read(func() string { return r.Address.Text }), read(r.Address.Size).Width
				if need := read(func() float32 { return widget.NewLabel(text).MinSize().Width }); width < need {
					t.Errorf("%s: the Address column is %.0f px, %q needs %.0f px", name, width, text, need)
				}
			}
		}
		t.Run("connected", check)
		if err := client.NewControl(env.Dirs).Disconnect(ctx, dev); err != nil {
			t.Fatal(err)
		}
		t.Run("not connected", check)
		if _, err := client.NewControl(env.Dirs).Connect(ctx, dev); err != nil {
			t.Fatal(err)
		}
		u.Refresh(ctx)
	})

	t.Run("settings: start at login", func(t *testing.T) {
		test.Tap(u.Autostart)
		b, err := os.ReadFile(autostart)
		if err != nil || !strings.Contains(string(b), "Exec=/usr/bin/ferry\n") {
			t.Fatalf("autostart entry: %v: %s", err, b)
		}
		test.Tap(u.Autostart)
		if _, err := os.Stat(autostart); !os.IsNotExist(err) {
			t.Errorf("autostart entry still there after turning it off: %v", err)
		}
	})

	t.Run("a failed connect is notified", func(t *testing.T) {
		fyne.DoAndWait(func() { u.Search.SetText("") })
		if err := client.NewControl(env.Dirs).Disconnect(ctx, dev); err != nil {
			t.Fatal(err)
		}
		u.Refresh(ctx)
		squat, err := net.Listen("tcp", devStatus.Address) // another program takes the port
		if err != nil {
			t.Fatal(err)
		}
		defer squat.Close()
		test.Tap(devRow.Toggle)
		eventually(t, 20*time.Second, "no notification for the failed connect", func() bool { return n.find("could not connect "+dev) != nil })
		if c := n.find("could not connect " + dev).Content; !strings.Contains(c, "port override") {
			t.Errorf("notification does not say what to do: %q", c)
		}
	})

	t.Run("log in from the window starts a daemon, log out returns to the login view", func(t *testing.T) {
		dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
		var mu sync.Mutex
		var started *client.Daemon
		a2 := test.NewTempApp(t)
		u2 := ui.New(ui.Options{App: a2, Dirs: dirs, Core: client.NewControl(dirs), Notify: n.add,
			StartDaemon: func(ctx context.Context) error {
				d, err := client.StartDaemon(ctx, dirs, nil)
				if err != nil {
					return err
				}
				mu.Lock()
				started = d
				mu.Unlock()
				go func() { <-d.LoggedOut(); d.Close() }()
				return nil
			}})
		test.NewTempWindow(t, u2.Window.Content())
		t.Cleanup(func() {
			mu.Lock()
			defer mu.Unlock()
			if started != nil {
				started.Close()
			}
		})
		u2.Refresh(ctx)
		if it := item(u2.TrayMenu(), "Log in"); it == nil {
			t.Fatalf("no Log in item in the tray of a device that is not enrolled")
		}
		fyne.DoAndWait(func() { u2.Token.SetText("ferry-enroll.garbage") })
		test.Tap(u2.LoginBtn)
		eventually(t, 10*time.Second, "a damaged token gave no message", func() bool {
			return strings.Contains(read(func() string { return u2.LoginMessage.Text }), "copy it again in full")
		})
		if got := read(func() string { return u2.LoginMessage.Text }); !strings.HasPrefix(got, "This is not a valid Ferry enrollment token") || strings.Contains(got, "invalid character") {
			t.Errorf("login view on a garbage token: %q", got)
		}
		tok, err := env.Node.EnrollToken(ctx, node.DefaultAdmin)
		if err != nil {
			t.Fatal(err)
		}
		fyne.DoAndWait(func() { u2.Token.SetText(tok); u2.DeviceName.SetText("laptop-2") })
		test.Tap(u2.LoginBtn)
		eventually(t, 30*time.Second, "login never showed the resources", func() bool {
			return u2.Row(demo.ResourceName) != nil && u2.Row(dev) != nil
		})
		test.Tap(u2.LogoutBtn)
		eventually(t, 60*time.Second, "log out never returned to the login view", func() bool {
			_, err := client.LoadState(dirs)
			return err != nil && item(u2.TrayMenu(), "Log in") != nil
		}, n.dump)
	})

	t.Run("a user with no grants is told why the table is empty", func(t *testing.T) {
		const user = "newcomer"
		if err := env.Daemon.API().AddUser(ctx, api.NewUser{Name: user}); err != nil {
			t.Fatal(err)
		}
		dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "cfg"), Runtime: filepath.Join(t.TempDir(), "run")}
		tok, err := env.Node.EnrollToken(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Login(ctx, dirs, tok, "laptop-3"); err != nil {
			t.Fatal(err)
		}
		d, err := client.StartDaemon(ctx, dirs, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		u3 := ui.New(ui.Options{App: test.NewTempApp(t), Dirs: dirs, Core: client.NewControl(dirs), Notify: n.add})
		test.NewTempWindow(t, u3.Window.Content())
		eventually(t, 30*time.Second, "the newcomer's window never said why it is empty", func() bool {
			u3.Refresh(ctx)
			return read(func() string { return u3.EmptyHint.Text }) == client.NoResourcesHint(user) && read(u3.EmptyHint.Visible)
		}, func() string {
			return "; hint " + read(func() string { return u3.EmptyHint.Text }) + "; status " + read(func() string { return u3.StatusLine.Text })
		})
		if got := read(func() string { return u3.StatusLine.Text }); !strings.HasSuffix(got, "· 0 resources") {
			t.Errorf("status line: %q", got)
		}
		if item(u3.TrayMenu(), "No resources granted") == nil {
			t.Errorf("the tray menu does not say that nothing is granted: %s", menuText(u3.TrayMenu()))
		}
	})

	t.Run("node unreachable is notified", func(t *testing.T) {
		env.Node.Close()
		eventually(t, 60*time.Second, "no notification when the node went away", func() bool {
			u.Refresh(ctx)
			return n.find("ferry-node is unreachable") != nil
		})
		if tr.get() != "tray-problem.png" {
			t.Errorf("tray icon %q with the node unreachable", tr.get())
		}
	})
}

// renderedLines returns the texts o draws, in order: a label's lines as laid out.
func renderedLines(o fyne.CanvasObject) []string {
	var out []string
	var walk func(o fyne.CanvasObject)
	walk = func(o fyne.CanvasObject) {
		if !o.Visible() {
			return
		}
		switch x := o.(type) {
		case *canvas.Text:
			if x.Text != "" {
				out = append(out, x.Text)
			}
		case *fyne.Container:
			for _, c := range x.Objects {
				walk(c)
			}
		case fyne.Widget:
			for _, c := range test.WidgetRenderer(x).Objects() {
				walk(c)
			}
		}
	}
	walk(o)
	return out
}

func nospace(s string) string { return strings.ReplaceAll(s, " ", "") }

func menuText(m *fyne.Menu) string {
	var labels []string
	for _, it := range m.Items {
		labels = append(labels, it.Label)
	}
	return strings.Join(labels, " | ")
}

func isShown(u *ui.UI, name string) bool {
	r := u.Row(name)
	return r != nil && r.Shown()
}
