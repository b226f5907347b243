//go:build cgo || !darwin

package ui

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/app/adminform"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/resource"
)

// PollInterval is how often the app asks the daemon for its status, so that a connect made with the
// CLI shows within a second.
const PollInterval = time.Second

// Timeouts of the calls the app makes (the daemon bounds node calls at 15 s itself).
const (
	statusTimeout = 20 * time.Second
	actionTimeout = 30 * time.Second
)

// Options configure New.
type Options struct {
	App  fyne.App
	Dirs client.Dirs
	Core Core
	// StartDaemon is called when this device is enrolled but no daemon answers on the control socket
	// (at start and after a login). Nil: the app asks the person to run `ferry daemon`.
	StartDaemon func(ctx context.Context) error
	// Notify shows a desktop notification; nil means App.SendNotification.
	Notify func(*fyne.Notification)
	// SetTray installs the tray menu and icon; nil when there is no system tray.
	SetTray func(menu *fyne.Menu, icon fyne.Resource)
	// Quit ends the app (the tray's Quit item); nil means App.Quit.
	Quit func()
	// AutostartPath is the XDG autostart entry and Executable the program it starts; an empty
	// AutostartPath hides the start-at-login setting.
	AutostartPath, Executable string
	Logger                    *slog.Logger
}

// UI is the app's window and tray menu over one client core.
type UI struct {
	opt    Options
	Window fyne.Window

	// Widgets tests drive.
	Search                       *widget.Entry
	StatusLine, Banner, VNNote   *widget.Label
	ConnectAllBtn, DisconnectAll *widget.Button
	Token, DeviceName            *widget.Entry
	LoginBtn, LogoutBtn          *widget.Button
	LoginMessage                 *widget.Label
	EmptyHint                    *widget.Label // why the table is empty: nothing granted, or nothing matches the search
	ModePref                     *widget.Select
	Autostart                    *widget.Check
	Form                         *adminform.Form
	Details                      *Details

	rowsBox  *fyne.Container
	header   *fyne.Container
	cols     *columns // shared by the header and every row
	rows     map[string]*Row
	tabs     *container.AppTabs
	adminTab *container.TabItem
	// Nodes lists the deployment's nodes (name, state, heartbeat age, tags) in the Settings tab,
	// shown to admins only.
	Nodes    *widget.Label
	nodesBox *fyne.Container
	nodesAt  time.Time // when loadNodes last started (UI goroutine only): at most one per nodesEvery
	main     fyne.CanvasObject
	login    fyne.CanvasObject
	showing  fyne.CanvasObject

	mu          sync.Mutex // guards the fields below, written by the poll and read by actions
	status      client.Status
	statusErr   error
	loggedIn    bool
	reachable   *bool
	vnWhy       string // the client's last VNUnavailable
	settings    api.Settings
	selected    string
	trayMenu    *fyne.Menu
	traySig     string
	lastStartup time.Time
}

// Row is one resource's line in the window.
type Row struct {
	Name                         string
	Open                         *widget.Button // selects the resource for the details pane
	State, Address, Health, Mode *widget.Label
	Toggle                       *widget.Button // connects or disconnects
	obj                          fyne.CanvasObject
}

// New builds the window (not shown) and the first tray menu. Call Refresh or Run to fill them.
func New(opt Options) *UI {
	if opt.Notify == nil {
		opt.Notify = opt.App.SendNotification
	}
	if opt.Quit == nil {
		opt.Quit = opt.App.Quit
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	// Column weights: name, state, address, health, mode, button.
	u := &UI{opt: opt, rows: map[string]*Row{}, cols: newColumns(2.2, 1.6, 2.4, 1.1, 1.5, 1.4)}
	u.Window = opt.App.NewWindow("Ferry")
	u.Window.Resize(fyne.NewSize(980, 620))
	u.Banner = widget.NewLabel("")
	u.Banner.Wrapping = fyne.TextWrapWord
	u.Banner.Importance = widget.WarningImportance
	u.Banner.Hide()
	u.VNNote = widget.NewLabel("")
	u.VNNote.Wrapping = fyne.TextWrapWord
	u.VNNote.Importance = widget.WarningImportance
	u.VNNote.Hide()
	u.StatusLine = widget.NewLabel("Loading…")
	u.StatusLine.Wrapping = fyne.TextWrapWord
	u.Search = widget.NewEntry()
	u.Search.SetPlaceHolder("Search names and tags (e.g. env=prod)")
	u.Search.OnChanged = func(string) { u.applyFilter() }
	u.ConnectAllBtn = widget.NewButtonWithIcon("Connect all", theme.MediaPlayIcon(), u.connectAll)
	u.DisconnectAll = widget.NewButtonWithIcon("Disconnect all", theme.MediaStopIcon(), u.disconnectAll)
	u.rowsBox = container.NewVBox()
	u.EmptyHint = widget.NewLabel("")
	u.EmptyHint.Wrapping = fyne.TextWrapWord
	u.EmptyHint.Hide()
	u.Details = newDetails(u)

	u.header = container.New(u.cols, bold("Resource"), bold("State"), bold("Address"), bold("Health"), bold("Mode"), widget.NewLabel(""))
	list := container.NewBorder(container.NewVBox(container.NewBorder(nil, nil, nil, container.NewHBox(u.ConnectAllBtn, u.DisconnectAll), u.Search), u.header), nil, nil, nil, container.NewVScroll(container.NewVBox(u.EmptyHint, u.rowsBox)))
	split := container.NewHSplit(list, u.Details.obj)
	// The table takes at least the width of its content (columns.fit); the details pane gets the rest.
	split.Offset = 0.6

	u.ModePref = widget.NewSelect([]string{"org default", resource.ModeLoopback, resource.ModeVirtualNetworking}, nil)
	if p, err := client.LoadPreferences(opt.Dirs); err == nil && p.ConnectivityMode != "" {
		u.ModePref.SetSelected(p.ConnectivityMode)
	} else {
		u.ModePref.SetSelected("org default")
	}
	u.ModePref.OnChanged = u.saveModePref
	u.Autostart = widget.NewCheck("Start Ferry when I log in", u.setAutostart)
	if opt.AutostartPath != "" {
		u.Autostart.SetChecked(client.AutostartEnabled(opt.AutostartPath))
	} else {
		u.Autostart.Hide()
	}
	u.LogoutBtn = widget.NewButtonWithIcon("Log out", theme.LogoutIcon(), u.logout)
	settingsNote := widget.NewLabel(SettingsNote)
	settingsNote.Wrapping = fyne.TextWrapWord
	// The deployment's nodes, for admins only (filled by loadNodes).
	u.Nodes = widget.NewLabel("—")
	u.Nodes.Wrapping = fyne.TextWrapWord
	u.nodesBox = container.NewVBox(widget.NewSeparator(), bold("Nodes"), u.Nodes)
	u.nodesBox.Hide()
	settings := container.NewVBox(
		container.New(layout.NewFormLayout(), widget.NewLabel("Connectivity mode"), u.ModePref),
		settingsNote, u.Autostart, widget.NewSeparator(), u.LogoutBtn, u.nodesBox)

	u.Form = adminform.New(func(ctx context.Context, r resource.Resource) (resource.Resource, error) {
		out, err := opt.Core.API().AddDatasource(ctx, r)
		go u.Refresh(context.Background())
		return out, err
	})
	u.adminTab = container.NewTabItemWithIcon("Add resource", theme.ContentAddIcon(), u.Form.Object())
	u.tabs = container.NewAppTabs(
		container.NewTabItemWithIcon("Resources", theme.StorageIcon(), split),
		container.NewTabItemWithIcon("Settings", theme.SettingsIcon(), settings),
	)
	u.main = container.NewBorder(container.NewVBox(u.Banner, u.VNNote, u.StatusLine), nil, nil, nil, u.tabs)

	u.Token = widget.NewEntry()
	u.Token.SetPlaceHolder("ferry-enroll.…")
	u.DeviceName = widget.NewEntry()
	host, _ := os.Hostname()
	u.DeviceName.SetPlaceHolder(host)
	u.LoginBtn = widget.NewButtonWithIcon("Log in", theme.LoginIcon(), u.doLogin)
	u.LoginBtn.Importance = widget.HighImportance
	u.LoginMessage = widget.NewLabel("")
	u.LoginMessage.Wrapping = fyne.TextWrapWord
	intro := widget.NewLabel("Paste the enrollment token your Ferry administrator gave you (`ferry admin users enroll NAME` makes one). A WireGuard key is made on this device; only its public key is sent.")
	intro.Wrapping = fyne.TextWrapWord
	u.login = container.NewBorder(container.NewVBox(u.Banner), nil, nil, nil, container.NewVBox(
		widget.NewLabelWithStyle("Log in to Ferry", fyne.TextAlignLeading, fyne.TextStyle{Bold: true}), intro,
		container.New(layout.NewFormLayout(), widget.NewLabel("Enrollment token"), u.Token, widget.NewLabel("Device name"), u.DeviceName),
		container.NewHBox(layout.NewSpacer(), u.LoginBtn), u.LoginMessage))
	u.show(u.main)
	u.installTray(client.Status{}, errors.New("starting"))
	return u
}

func bold(s string) *widget.Label {
	return widget.NewLabelWithStyle(s, fyne.TextAlignLeading, fyne.TextStyle{Bold: true})
}

func (u *UI) show(o fyne.CanvasObject) {
	if u.showing != o {
		u.showing = o
		u.Window.SetContent(o)
	}
}

// SetBanner shows a standing message above everything (for example why there is no tray icon).
func (u *UI) SetBanner(text string) {
	fyne.Do(func() {
		u.Banner.SetText(text)
		if text == "" {
			u.Banner.Hide()
		} else {
			u.Banner.Show()
		}
	})
}

// Run refreshes every PollInterval until ctx ends.
func (u *UI) Run(ctx context.Context) {
	t := time.NewTicker(PollInterval)
	defer t.Stop()
	for {
		u.Refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Refresh asks the client core for the current state once and redraws the window and the tray menu.
func (u *UI) Refresh(ctx context.Context) {
	_, stateErr := client.LoadState(u.opt.Dirs)
	loggedIn := stateErr == nil
	var st client.Status
	var err error
	if loggedIn {
		if !client.DaemonRunning(u.opt.Dirs) && u.opt.StartDaemon != nil && u.startAllowed() {
			if err := u.opt.StartDaemon(ctx); err != nil {
				u.opt.Logger.Warn("could not start the client daemon", "err", err)
			}
		}
		c, cancel := context.WithTimeout(ctx, statusTimeout)
		st, err = u.opt.Core.Status(c)
		cancel()
		if err != nil {
			err = fmt.Errorf("could not read Ferry's status: %w", err)
		}
	} else if !errors.Is(stateErr, client.ErrNotLoggedIn) {
		err = fmt.Errorf("could not read this device's enrollment: %w; remove the file if it is damaged and log in again", stateErr)
		loggedIn = true
	}
	var settings api.Settings
	if err == nil && loggedIn && st.NodeReachable && u.settingsEmpty() {
		c, cancel := context.WithTimeout(ctx, statusTimeout)
		settings, _ = u.opt.Core.API().Settings(c)
		cancel()
	}
	u.mu.Lock()
	note := NodeChange(u.reachable, st, err)
	vnNote := VNChange(u.vnWhy, st, err)
	if err == nil && loggedIn {
		u.vnWhy = st.VNUnavailable
	}
	if err == nil && loggedIn {
		r := st.NodeReachable
		u.reachable = &r
	}
	if !loggedIn {
		u.reachable = nil
	}
	u.status, u.statusErr, u.loggedIn = st, err, loggedIn
	if settings.ConnectivityMode != "" {
		u.settings = settings
	}
	u.mu.Unlock()
	if note != nil {
		u.opt.Notify(note)
	}
	if vnNote != nil {
		u.opt.Notify(vnNote)
	}
	fyne.DoAndWait(func() { u.redraw(st, err, loggedIn) })
}

func (u *UI) settingsEmpty() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.settings.ConnectivityMode == ""
}

// startAllowed rate-limits daemon start attempts to one per 10 s.
func (u *UI) startAllowed() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if time.Since(u.lastStartup) < 10*time.Second {
		return false
	}
	u.lastStartup = time.Now()
	return true
}

// Status returns what the last refresh saw.
func (u *UI) Status() (client.Status, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.status, u.statusErr
}

func (u *UI) orgMode() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.settings.ConnectivityMode
}

// redraw runs on the UI goroutine.
func (u *UI) redraw(st client.Status, err error, loggedIn bool) {
	u.installTray(st, err)
	if !loggedIn {
		u.show(u.login)
		return
	}
	u.show(u.main)
	switch {
	case err != nil:
		u.StatusLine.Importance = widget.DangerImportance
		u.StatusLine.SetText(err.Error())
	case st.Suspended || st.DeviceRemoved:
		u.StatusLine.Importance = widget.DangerImportance
		u.StatusLine.SetText(AccountLine(st))
	case !st.NodeReachable:
		u.StatusLine.Importance = widget.DangerImportance
		u.StatusLine.SetText("ferry-node is unreachable: " + st.NodeError + ". Connected addresses stay open but new connections fail until it is back; check your network or VPN. Ferry retries every second.")
	default:
		role := ""
		if st.Admin {
			role = " (administrator)"
		}
		u.StatusLine.Importance = widget.MediumImportance
		u.StatusLine.SetText(fmt.Sprintf("Signed in as %s%s on device %s · %s · %s", st.User, role, st.Device, NodeText(st), Count(len(st.Resources), "resource")))
	}
	if err != nil {
		return // keep the last rows rather than blanking the window on a hiccup
	}
	u.VNNote.SetText(st.VNUnavailable)
	if st.VNUnavailable == "" {
		u.VNNote.Hide()
	} else {
		u.VNNote.Show()
	}
	u.setAdmin(st.Admin)
	seen := map[string]bool{}
	for i, r := range st.Resources {
		seen[r.Name] = true
		row, ok := u.rows[r.Name]
		if !ok {
			row = u.newRow(r.Name)
			u.rows[r.Name] = row
		}
		row.update(r)
		if i >= len(u.rowsBox.Objects) || u.rowsBox.Objects[i] != row.obj {
			u.rebuildRows(st)
		}
	}
	for name := range u.rows {
		if !seen[name] {
			delete(u.rows, name)
			u.rebuildRows(st)
		}
	}
	if u.fitColumns() {
		u.header.Refresh()
		u.rowsBox.Refresh()
	}
	u.applyFilter()
	u.Details.update(st)
}

// fitColumns gives every column of the table at least the width of its widest content.
func (u *UI) fitColumns() bool {
	rows := [][]fyne.CanvasObject{u.header.Objects}
	for _, r := range u.rows {
		rows = append(rows, r.obj.(*fyne.Container).Objects)
	}
	return u.cols.fit(rows)
}

func (u *UI) rebuildRows(st client.Status) {
	objs := make([]fyne.CanvasObject, 0, len(st.Resources))
	for _, r := range st.Resources {
		if row, ok := u.rows[r.Name]; ok {
			objs = append(objs, row.obj)
		}
	}
	u.rowsBox.Objects = objs
	u.rowsBox.Refresh()
}

// applyFilter shows the rows the search finds, says so when it finds none or there are none, and
// clears the details pane when the search hides the resource it shows.
func (u *UI) applyFilter() {
	st, err := u.Status()
	shown := 0
	u.mu.Lock()
	selected := u.selected
	u.mu.Unlock()
	for _, r := range st.Resources {
		if row, ok := u.rows[r.Name]; ok {
			if Matches(r, u.Search.Text) {
				row.obj.Show()
				shown++
			} else {
				row.obj.Hide()
				if r.Name == selected {
					u.Select("")
				}
			}
		}
	}
	hint := EmptyTableHint(st, err, u.Search.Text, shown)
	u.EmptyHint.SetText(hint)
	if hint == "" {
		u.EmptyHint.Hide()
	} else {
		u.EmptyHint.Show()
	}
}

func (u *UI) setAdmin(admin bool) {
	has := false
	for _, t := range u.tabs.Items {
		if t == u.adminTab {
			has = true
		}
	}
	switch {
	case admin && !has:
		u.tabs.Append(u.adminTab)
		go u.loadStores()
	case !admin && has:
		u.tabs.Remove(u.adminTab)
	}
	if admin {
		u.nodesBox.Show()
		if time.Since(u.nodesAt) >= nodesEvery {
			u.nodesAt = time.Now()
			go u.loadNodes()
		}
	} else {
		u.nodesBox.Hide()
	}
}

// nodesEvery is how often an admin's window reads the node list: the nodes' heartbeat interval.
const nodesEvery = 10 * time.Second

// loadNodes fills the Settings tab's node list from the node (admins only).
func (u *UI) loadNodes() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ns, err := u.opt.Core.API().Nodes(ctx)
	text := NodesText(ns)
	if err != nil {
		text = "could not read the nodes: " + err.Error()
	}
	fyne.Do(func() { u.Nodes.SetText(text) })
}

// loadStores fills the admin form's secret store drop-down and proxy cluster choices from the node.
func (u *UI) loadStores() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if clusters, err := u.opt.Core.API().Clusters(ctx); err == nil {
		fyne.Do(func() { u.Form.SetClusters(clusters) }) // otherwise the cluster ID is typed
	}
	stores, err := u.opt.Core.API().SecretStores(ctx)
	if err != nil {
		return // the drop-down keeps "none"; the next time the tab appears it tries again
	}
	fyne.Do(func() { u.Form.SetStores(stores) })
}

// AdminFormShown reports whether the "Add resource" tab is there (admins only).
func (u *UI) AdminFormShown() bool {
	for _, t := range u.tabs.Items {
		if t == u.adminTab {
			return true
		}
	}
	return false
}

// ShowAdminForm selects the "Add resource" tab when it is there.
func (u *UI) ShowAdminForm() {
	if u.AdminFormShown() {
		u.tabs.Select(u.adminTab)
	}
}

func (u *UI) newRow(name string) *Row {
	row := &Row{Name: name, State: widget.NewLabel(""), Address: widget.NewLabel(""), Health: widget.NewLabel(""), Mode: widget.NewLabel("")}
	row.Open = widget.NewButton(name, func() { u.Select(name) })
	row.Open.Importance = widget.LowImportance
	row.Open.Alignment = widget.ButtonAlignLeading
	row.Toggle = widget.NewButton("Connect", func() { u.Toggle(name) })
	row.obj = container.New(u.cols, row.Open, row.State, row.Address, row.Health, row.Mode, row.Toggle)
	return row
}

func (r *Row) update(rs client.ResourceStatus) {
	r.State.SetText(StateText(rs))
	r.State.Importance = widget.MediumImportance
	switch {
	case Unhealthy(rs):
		r.State.Importance = widget.DangerImportance
	case rs.Connected:
		r.State.Importance = widget.SuccessImportance
	}
	r.State.Refresh()
	r.Address.SetText(AddressText(rs))
	r.Health.SetText(HealthText(rs))
	r.Mode.SetText(client.ModeLabel(rs)) // how the client serves it now, not only its configured mode
	if rs.Connected {
		r.Toggle.SetText("Disconnect")
		r.Toggle.Importance = widget.MediumImportance
	} else {
		r.Toggle.SetText("Connect")
		r.Toggle.Importance = widget.HighImportance
	}
	r.Toggle.Refresh()
}

// Row returns the window row of a resource, or nil.
func (u *UI) Row(name string) *Row { return u.rows[name] }

// Select shows a resource in the details pane.
func (u *UI) Select(name string) {
	u.mu.Lock()
	u.selected = name
	st := u.status
	u.mu.Unlock()
	u.Details.update(st)
}

func (u *UI) find(name string) (client.ResourceStatus, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, r := range u.status.Resources {
		if r.Name == name {
			return r, true
		}
	}
	return client.ResourceStatus{}, false
}

// Toggle connects a resource that is not connected and disconnects one that is, in the background.
func (u *UI) Toggle(name string) {
	r, ok := u.find(name)
	if ok && r.Connected {
		u.background(func(ctx context.Context) {
			if err := u.opt.Core.Disconnect(ctx, name); err != nil {
				u.opt.Notify(fyne.NewNotification("Ferry: could not disconnect "+name, err.Error()))
			}
		})
		return
	}
	u.background(func(ctx context.Context) {
		if _, err := u.opt.Core.Connect(ctx, name); err != nil {
			u.opt.Notify(fyne.NewNotification("Ferry: could not connect "+name, err.Error()))
		}
	})
}

func (u *UI) connectAll() {
	u.background(func(ctx context.Context) {
		if _, err := client.ConnectAll(ctx, u.opt.Core); err != nil {
			u.opt.Notify(fyne.NewNotification("Ferry: could not connect every resource", err.Error()))
		}
	})
}

func (u *UI) disconnectAll() {
	u.background(func(ctx context.Context) {
		if err := u.opt.Core.Disconnect(ctx); err != nil {
			u.opt.Notify(fyne.NewNotification("Ferry: could not disconnect every resource", err.Error()))
		}
	})
}

// background runs an action off the UI goroutine, then refreshes.
func (u *UI) background(fn func(ctx context.Context)) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), actionTimeout)
		defer cancel()
		fn(ctx)
		u.Refresh(ctx)
	}()
}

// Copy puts text on the clipboard.
func (u *UI) Copy(text string) {
	fyne.Do(func() { u.opt.App.Clipboard().SetContent(text) })
}

func (u *UI) logout() {
	u.background(func(ctx context.Context) {
		if err := u.opt.Core.Logout(ctx); err != nil {
			u.opt.Notify(fyne.NewNotification("Ferry: could not log out", err.Error()+". Check that ferry-node is reachable and try again."))
		}
	})
}

func (u *UI) doLogin() {
	token := strings.TrimSpace(u.Token.Text)
	device := strings.TrimSpace(u.DeviceName.Text)
	if token == "" {
		u.LoginMessage.Importance = widget.DangerImportance
		u.LoginMessage.SetText("Paste the enrollment token your Ferry administrator gave you first (it starts with " + api.EnrollTokenPrefix + ").")
		return
	}
	u.LoginBtn.Disable()
	u.LoginMessage.Importance = widget.MediumImportance
	u.LoginMessage.SetText("Logging in…")
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), actionTimeout)
		defer cancel()
		st, err := client.Login(ctx, u.opt.Dirs, token, device)
		msg := ""
		if err == nil {
			msg = fmt.Sprintf("Enrolled as %s (device address %s).", st.User, st.DeviceAddress)
			if u.opt.StartDaemon != nil {
				if err = u.opt.StartDaemon(ctx); err != nil {
					err = fmt.Errorf("enrolled as %s, but the client could not start: %w", st.User, err)
				}
			} else if !client.DaemonRunning(u.opt.Dirs) {
				msg += " Start the client with `ferry daemon`."
			}
		}
		fyne.DoAndWait(func() {
			u.LoginBtn.Enable()
			if err != nil {
				u.LoginMessage.Importance = widget.DangerImportance
				u.LoginMessage.SetText(LoginErrorText(err))
				return
			}
			u.Token.SetText("")
			u.LoginMessage.Importance = widget.SuccessImportance
			u.LoginMessage.SetText(msg)
		})
		u.Refresh(ctx)
	}()
}

// SettingsNote explains the connectivity mode setting (shown under it).
const SettingsNote = "Each resource is served in its own connectivity mode (set by an administrator) unless you choose one here for all. " +
	"Virtual networking (DNS aliases such as name.ferry.internal) needs a TUN device: on Linux the app uses the privileged helper `ferry vnet-helper` when it runs " +
	"(start it with `sudo ferry vnet-helper --user $(id -u)`, or install it as a systemd unit: see the README). " +
	"Without it, those resources are served on loopback addresses and the window says so. " +
	"macOS and Windows: virtual networking from the app is not available yet. A change here applies when the app next starts its client."

func (u *UI) saveModePref(choice string) {
	p := client.Preferences{ConnectivityMode: choice}
	if choice == "org default" {
		p.ConnectivityMode = ""
	}
	if err := client.SavePreferences(u.opt.Dirs, p); err != nil {
		u.opt.Notify(fyne.NewNotification("Ferry: could not save the connectivity mode", err.Error()))
	}
}

func (u *UI) setAutostart(on bool) {
	if u.opt.AutostartPath == "" {
		return
	}
	if err := client.SetAutostart(u.opt.AutostartPath, u.opt.Executable, on); err != nil {
		u.opt.Notify(fyne.NewNotification("Ferry: could not change start at login", err.Error()))
	}
}

// Shown reports whether the row passes the search filter.
func (r *Row) Shown() bool { return r.obj.Visible() }
