//go:build cgo || !darwin

package ui

import (
	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/resource"
)

// Details is the pane with the properties of the selected resource that a user may see.
type Details struct {
	u                                    *UI
	Title                                *widget.Label
	Fields                               map[string]*Value
	Toggle, CopyAddr, CopyPsql, CopyJDBC *widget.Button
	body                                 *fyne.Container
	empty                                *widget.Label
	obj                                  fyne.CanvasObject
}

// detailFields are the rows of the pane, in order.
var detailFields = []string{"State", "Health", "Node", "Address", "Connectivity mode", "Loopback address", "Virtual networking address", "DNS name", "Database", "Username", "Type", "Tags"}

// detailLabels shorten the labels of some fields, to leave the values room in a narrow pane.
var detailLabels = map[string]string{"Virtual networking address": "VN address"}

func newDetails(u *UI) *Details {
	d := &Details{u: u, Title: widget.NewLabelWithStyle("", fyne.TextAlignLeading, fyne.TextStyle{Bold: true}), Fields: map[string]*Value{}}
	grid := container.New(layout.NewFormLayout())
	for _, f := range detailFields {
		l := NewValue("")
		d.Fields[f] = l
		label := f
		if short, ok := detailLabels[f]; ok {
			label = short
		}
		grid.Add(widget.NewLabelWithStyle(label, fyne.TextAlignTrailing, fyne.TextStyle{}))
		grid.Add(l)
	}
	sel := func() string {
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.selected
	}
	d.Toggle = widget.NewButton("Connect", func() { u.Toggle(sel()) })
	d.CopyAddr = widget.NewButtonWithIcon("Address", theme.ContentCopyIcon(), func() {
		u.copyOf(sel(), func(r client.ResourceStatus) string { return r.Address })
	})
	d.CopyPsql = widget.NewButtonWithIcon("psql", theme.ContentCopyIcon(), func() { u.copyOf(sel(), client.PsqlCommand) })
	d.CopyJDBC = widget.NewButtonWithIcon("JDBC URL", theme.ContentCopyIcon(), func() { u.copyOf(sel(), client.JDBCURL) })
	d.body = container.NewVBox(d.Title, grid, d.Toggle, container.NewGridWithColumns(3, d.CopyAddr, d.CopyPsql, d.CopyJDBC))
	d.empty = widget.NewLabel("Select a resource to see its details.")
	d.empty.Wrapping = fyne.TextWrapWord
	d.obj = container.NewVScroll(container.NewStack(d.empty, d.body))
	d.body.Hide()
	return d
}

func (d *Details) update(st client.Status) {
	d.u.mu.Lock()
	name := d.u.selected
	domain := d.u.settings.DNSDomain
	d.u.mu.Unlock()
	var r client.ResourceStatus
	found := false
	for _, x := range st.Resources {
		if x.Name == name {
			r, found = x, true
		}
	}
	fyne.Do(func() {
		if !found {
			d.body.Hide()
			d.empty.Show()
			return
		}
		d.empty.Hide()
		d.body.Show()
		d.Title.SetText(r.Name)
		dns := "—"
		if r.Subdomain != "" && domain != "" {
			dns = r.Subdomain + "." + domain
		}
		vals := map[string]string{
			"State": StateText(r), "Health": HealthText(r), "Node": ResourceNodeText(r), "Address": AddressText(r),
			"Connectivity mode": DetailsModeText(r, d.u.orgMode()), "Loopback address": r.LoopbackAddress,
			"Virtual networking address": r.VNAddress, "DNS name": dns, "Database": r.Database,
			"Username": r.Username, "Type": typeName(r.Type), "Tags": resource.FormatTags(r.Tags),
		}
		for k, v := range vals {
			if v == "" {
				v = "—"
			}
			d.Fields[k].SetText(v)
		}
		if r.Connected {
			d.Toggle.SetText("Disconnect")
		} else {
			d.Toggle.SetText("Connect")
		}
	})
}

// Showing returns the name of the resource the pane shows, or "" when it shows none.
func (d *Details) Showing() string {
	if !d.body.Visible() {
		return ""
	}
	return d.Title.Text
}

func typeName(t string) string {
	if t == resource.TypeAzurePostgresMI {
		return resource.TypeDisplayName
	}
	return t
}
