//go:build cgo || !darwin

// Package adminform is the desktop app's "Add resource" form for an Azure PostgreSQL (Managed
// Identity) resource. It parses its fields with the CLI's parsers (resource.ParsePortOverride,
// resource.ParseTags) and checks them with resource.Validate, so a person sees the same messages as
// `ferry admin datasources add azurepostgresmi`. It does not import fyne.io/fyne/v2/app and tests
// headless with fyne.io/fyne/v2/test.
package adminform

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/resource"
)

// InvalidPrefix starts the error shown for a resource that fails validation; the CLI prints the same
// line before the joined field errors.
const InvalidPrefix = "the resource is not valid:\n"

// modeOrgDefault is the connectivity mode choice that leaves the mode to the org's setting.
const modeOrgDefault = "org default"

// addTimeout bounds one AddDatasource call.
const addTimeout = 30 * time.Second

// Form is the "Add resource" form. Field widgets are exported so tests can type into them.
type Form struct {
	Name, Hostname, Port *widget.Entry
	// ProxyClusterID takes a cluster ID, typed or chosen from the clusters given to SetClusters
	// ("n-… (name)"; the ID is what is stored).
	ProxyClusterID                     *widget.SelectEntry
	ConnectivityMode                   *widget.Select
	IPAddress, PortOverride, Subdomain *widget.Entry
	BindInterface, EgressFilter        *widget.Entry
	Database                           *widget.Entry
	RestrictDatabase                   *widget.Check
	// SecretStore offers resource.SecretStoreNone and the stores given to SetStores ("name (se-…)");
	// the path fields show only when a store is chosen, the username only when none is.
	SecretStore                           *widget.Select
	Username, UsernamePath                *widget.Entry
	ClientID, ClientIDPath                *widget.Entry
	UseSingleServerUsernames, TLSRequired *widget.Check
	Tags                                  *widget.Entry
	Submit                                *widget.Button
	Message                               *widget.Label // the whole error, or what was added
	fieldErrors                           map[string]*widget.Label
	rows                                  map[string][]fyne.CanvasObject // a field's label and box
	stores                                map[string]string              // drop-down text -> store ID
	clusterOptions                        []string                       // SetClusters' choices
	add                                   func(context.Context, resource.Resource) (resource.Resource, error)
	object                                fyne.CanvasObject
}

// New builds the form. add stores a valid resource (the node's AddDatasource through the daemon) and
// returns it as stored, with its assigned addresses.
func New(add func(context.Context, resource.Resource) (resource.Resource, error)) *Form {
	entry := func(placeholder string) *widget.Entry {
		e := widget.NewEntry()
		e.SetPlaceHolder(placeholder)
		return e
	}
	f := &Form{
		Name:                     entry("azure-pg-mi-prod"),
		ProxyClusterID:           widget.NewSelectEntry(nil),
		Hostname:                 entry("mypg.postgres.database.azure.com"),
		Port:                     entry(strconv.Itoa(resource.DefaultPort)),
		ConnectivityMode:         widget.NewSelect([]string{modeOrgDefault, resource.ModeLoopback, resource.ModeVirtualNetworking}, nil),
		IPAddress:                entry("assigned"),
		PortOverride:             entry("loopback 1024-64999, virtual networking 1-65535; -1 = new auto port"),
		Subdomain:                entry("DNS alias in virtual networking mode, e.g. azure-pg-mi-prod"),
		BindInterface:            entry("loopback IP the client listens on, e.g. 127.0.0.1"),
		EgressFilter:             entry("nodes that may reach the server, e.g. tag:env=prod"),
		Database:                 entry("production"),
		RestrictDatabase:         widget.NewCheck("Limit connections to this database", nil),
		SecretStore:              widget.NewSelect([]string{resource.SecretStoreNone}, nil),
		Username:                 entry("mi_user"),
		UsernamePath:             entry("secret-name?key=username (the secret's JSON field; no ?key: the whole value)"),
		ClientID:                 entry("empty: the VM's system-assigned identity"),
		ClientIDPath:             entry("secret-name?key=client_id (optional; empty: Client ID, or system-assigned)"),
		UseSingleServerUsernames: widget.NewCheck("Append @servername (Azure Single Server)", nil),
		TLSRequired:              widget.NewCheck("Require verified TLS to the server", nil),
		Tags:                     entry("env=production,team=data"),
		Message:                  widget.NewLabel(""),
		fieldErrors:              map[string]*widget.Label{},
		rows:                     map[string][]fyne.CanvasObject{},
		stores:                   map[string]string{},
		add:                      add,
	}
	f.ProxyClusterID.SetPlaceHolder("none: route through the gateways")
	f.Port.SetText(strconv.Itoa(resource.DefaultPort))
	f.ConnectivityMode.SetSelected(modeOrgDefault)
	f.TLSRequired.SetChecked(true)
	f.Message.Wrapping = fyne.TextWrapWord

	grid := container.New(layout.NewFormLayout())
	row := func(label, field string, required bool, w fyne.CanvasObject) {
		if required {
			label += " *"
		}
		l := widget.NewLabelWithStyle(label, fyne.TextAlignTrailing, fyne.TextStyle{Bold: required})
		e := widget.NewLabel("")
		e.Importance = widget.DangerImportance
		e.Wrapping = fyne.TextWrapWord
		e.Hide()
		f.fieldErrors[field] = e
		box := container.NewVBox(w, e)
		f.rows[field] = []fyne.CanvasObject{l, box}
		grid.Add(l)
		grid.Add(box)
	}
	// The order and the names follow the resource type's property table.
	row("Display name", "name", true, f.Name)
	row("Proxy cluster", "proxy-cluster-id", false, f.ProxyClusterID)
	row("Hostname", "hostname", true, f.Hostname)
	row("Port", "port", true, f.Port)
	row("Connectivity mode", "connectivity-mode", false, f.ConnectivityMode)
	row("IP address", "ip-address", false, f.IPAddress)
	row("Port override", "port-override", false, f.PortOverride)
	row("DNS", "subdomain", false, f.Subdomain)
	row("Bind interface", "bind-interface", false, f.BindInterface)
	row("Egress filter", "egress-filter", false, f.EgressFilter)
	row("Database", "database", true, f.Database)
	row("Restrict database", "restrict-database", false, f.RestrictDatabase)
	row("Secret store", "secret-store-id", false, f.SecretStore)
	row("Username", "username", true, f.Username)
	row("Username path", "username-path", false, f.UsernamePath)
	row("Client ID", "managed-identity-client-id", false, f.ClientID)
	row("Client ID path", "managed-identity-client-id-path", false, f.ClientIDPath)
	row("Single Server usernames", "use-azure-single-server-usernames", false, f.UseSingleServerUsernames)
	row("TLS", "tls-required", false, f.TLSRequired)
	row("Tags", "tags", false, f.Tags)
	f.SecretStore.OnChanged = func(string) { f.showStoreFields() }
	f.SecretStore.SetSelected(resource.SecretStoreNone)
	f.Submit = widget.NewButtonWithIcon("Add resource", theme.ContentAddIcon(), f.submit)
	f.Submit.Importance = widget.HighImportance
	title := widget.NewLabelWithStyle("Add an "+resource.TypeDisplayName+" resource", fyne.TextAlignLeading, fyne.TextStyle{Bold: true})
	note := widget.NewLabel("* required. With a secret store, the node reads the username (and, with its path, the client ID) from the store instead. Leave Client ID empty to use the VM's system-assigned identity.")
	note.Wrapping = fyne.TextWrapWord
	f.object = container.NewBorder(container.NewVBox(title, note), container.NewVBox(f.Message, container.NewHBox(layout.NewSpacer(), f.Submit)), nil, nil, container.NewVScroll(grid))
	return f
}

// SetStores fills the secret store drop-down with the node's stores (ferry admin secretstores list);
// a chosen store that is still offered stays chosen.
func (f *Form) SetStores(stores []resource.SecretStore) {
	opts := []string{resource.SecretStoreNone}
	f.stores = map[string]string{}
	for _, s := range stores {
		label := s.Name + " (" + s.ID + ")"
		f.stores[label] = s.ID
		opts = append(opts, label)
	}
	sel := f.SecretStore.Selected
	f.SecretStore.SetOptions(opts)
	if _, ok := f.stores[sel]; !ok {
		sel = resource.SecretStoreNone
	}
	f.SecretStore.SetSelected(sel)
	f.showStoreFields()
}

// SetClusters offers the node's proxy clusters (ferry admin clusters list) in the proxy cluster
// field, as "ID (name)"; what was typed stays.
func (f *Form) SetClusters(clusters []api.Cluster) {
	opts := make([]string, 0, len(clusters))
	for _, c := range clusters {
		opts = append(opts, c.ID+" ("+c.Name+")")
	}
	f.ProxyClusterID.SetOptions(opts)
	f.clusterOptions = opts
}

// ClusterOptions returns the proxy clusters the field offers ("ID (name)").
func (f *Form) ClusterOptions() []string { return f.clusterOptions }

// FieldShown reports whether the field named by its CLI flag is shown.
func (f *Form) FieldShown(flag string) bool {
	r, ok := f.rows[flag]
	return ok && r[0].Visible()
}

// showStoreFields shows the path fields only with a store, and the username only without one.
func (f *Form) showStoreFields() {
	withStore := f.stores[f.SecretStore.Selected] != ""
	for field, show := range map[string]bool{"username": !withStore, "username-path": withStore, "managed-identity-client-id-path": withStore} {
		for _, o := range f.rows[field] {
			if show {
				o.Show()
			} else {
				o.Hide()
			}
		}
	}
}

// Object is the form's canvas object.
func (f *Form) Object() fyne.CanvasObject { return f.object }

// FieldError returns the message shown under the field named by its CLI flag ("" when none).
func (f *Form) FieldError(flag string) string {
	if l, ok := f.fieldErrors[flag]; ok && l.Visible() {
		return l.Text
	}
	return ""
}

// Resource parses and validates the fields as the CLI does. The error text is what the CLI prints
// after "ferry: " for the same input.
func (f *Form) Resource() (resource.Resource, error) {
	r := resource.New(strings.TrimSpace(f.Name.Text))
	port := strings.TrimSpace(f.Port.Text)
	if port == "" {
		r.Port = resource.DefaultPort
	} else if n, err := strconv.Atoi(port); err != nil {
		return r, &parseError{field: "port", err: fmt.Errorf("parse port %q: not a number", port)}
	} else {
		r.Port = n
	}
	var err error
	if r.PortOverride, err = resource.ParsePortOverride(strings.TrimSpace(f.PortOverride.Text)); err != nil {
		return r, &parseError{field: "port-override", err: err}
	}
	if r.Tags, err = resource.ParseTags(f.Tags.Text); err != nil {
		return r, &parseError{field: "tags", err: err}
	}
	r.ProxyClusterID, _, _ = strings.Cut(strings.TrimSpace(f.ProxyClusterID.Text), " ") // an offered "n-... (name)"
	r.Hostname = strings.TrimSpace(f.Hostname.Text)
	if m := f.ConnectivityMode.Selected; m != modeOrgDefault {
		r.ConnectivityMode = m
	}
	r.IPAddress = strings.TrimSpace(f.IPAddress.Text)
	r.Subdomain = strings.TrimSpace(f.Subdomain.Text)
	r.BindInterface = strings.TrimSpace(f.BindInterface.Text)
	r.EgressFilter = strings.TrimSpace(f.EgressFilter.Text)
	r.Database = strings.TrimSpace(f.Database.Text)
	r.RestrictDatabase = f.RestrictDatabase.Checked
	r.SecretStoreID = f.stores[f.SecretStore.Selected]
	if r.SecretStoreID == "" {
		r.Username = strings.TrimSpace(f.Username.Text)
	} else {
		// Hidden fields are not sent: with a store, the username comes from its path.
		r.UsernamePath = strings.TrimSpace(f.UsernamePath.Text)
		r.ManagedIdentityClientIDPath = strings.TrimSpace(f.ClientIDPath.Text)
	}
	r.ManagedIdentityClientID = strings.TrimSpace(f.ClientID.Text)
	r.UseAzureSingleServerUsernames = f.UseSingleServerUsernames.Checked
	r.TLSRequired = f.TLSRequired.Checked
	if err := r.Validate(); err != nil {
		return r, fmt.Errorf("%s%w", InvalidPrefix, err)
	}
	return r, nil
}

// parseError is a field the CLI's parsers refuse before validation; like the CLI, the form reports
// it alone and bare.
type parseError struct {
	field string
	err   error
}

func (e *parseError) Error() string { return e.err.Error() }
func (e *parseError) Unwrap() error { return e.err }

// fieldMessages maps each failing field (by CLI flag name) to its messages.
func fieldMessages(err error) map[string][]string {
	out := map[string][]string{}
	var pe *parseError
	if errors.As(err, &pe) {
		out[pe.field] = append(out[pe.field], pe.err.Error())
		return out
	}
	var walk func(error)
	walk = func(e error) {
		if fe, ok := e.(*resource.FieldError); ok {
			out[fe.Field] = append(out[fe.Field], fe.Message)
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// ShowError writes err under the fields it names and in full above the submit button.
func (f *Form) ShowError(err error) {
	msgs := fieldMessages(err)
	for field, l := range f.fieldErrors {
		if m, ok := msgs[field]; ok {
			l.SetText(strings.Join(m, "\n"))
			l.Show()
		} else {
			l.Hide()
		}
	}
	f.Message.Importance = widget.DangerImportance
	f.Message.SetText(err.Error())
}

// Check validates the fields and shows the result; it returns the resource when it is valid.
func (f *Form) Check() (resource.Resource, bool) {
	r, err := f.Resource()
	if err != nil {
		f.ShowError(err)
		return r, false
	}
	for _, l := range f.fieldErrors {
		l.Hide()
	}
	f.Message.SetText("")
	return r, true
}

// submit validates, then adds the resource in the background and reports the outcome.
func (f *Form) submit() {
	r, ok := f.Check()
	if !ok {
		return
	}
	f.Submit.Disable()
	f.Message.Importance = widget.MediumImportance
	f.Message.SetText("Adding " + r.Name + "…")
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), addTimeout)
		defer cancel()
		out, err := f.add(ctx, r)
		fyne.Do(func() {
			f.Submit.Enable()
			if err != nil {
				f.ShowError(fmt.Errorf("add %s: %w; check the fields above, or ask a Ferry administrator if the node refused it", r.Name, err))
				return
			}
			f.Message.Importance = widget.SuccessImportance
			f.Message.SetText(fmt.Sprintf("Added %s (%s): loopback address %s, virtual networking address %s", out.Name, out.ID, out.LoopbackAddress, out.VNAddress))
			f.Name.SetText("")
		})
	}()
}
