//go:build cgo || !darwin

// Package ui is the Ferry desktop app's tray menu and main window, drawn with Fyne over the client
// core (package client) exactly as the CLI uses it: every action is a client call. It does not import
// fyne.io/fyne/v2/app, so it tests headless with fyne.io/fyne/v2/test, even with CGO_ENABLED=0;
// package app wires it to the real Fyne app.
package ui

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"fyne.io/fyne/v2"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/assets"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/resource"
)

// Core is what the app needs from the client core; *client.Control is the implementation.
type Core interface {
	client.Connector
	Disconnect(ctx context.Context, names ...string) error
	Logout(ctx context.Context) error
	API() *api.Client
}

// Health states of api.Health as the node reports them.
const (
	HealthHealthy   = api.HealthHealthy
	HealthUnhealthy = api.HealthUnhealthy
)

// Overall is the tray icon's state.
type Overall int

// Overall states, worst last.
const (
	Idle      Overall = iota // nothing connected, nothing wrong
	Connected                // at least one resource connected
	Problem                  // the daemon or the node is unreachable, or a resource is unhealthy
)

// OverallState sums a status (and the error of fetching it) up for the tray icon.
func OverallState(st client.Status, err error) Overall {
	if err != nil || !st.NodeReachable {
		return Problem
	}
	state := Idle
	for _, r := range st.Resources {
		if Unhealthy(r) {
			return Problem
		}
		if r.Connected {
			state = Connected
		}
	}
	return state
}

// TrayIcon is the icon of an overall state.
func TrayIcon(o Overall) fyne.Resource {
	switch o {
	case Connected:
		return fyne.NewStaticResource("tray-connected.png", assets.TrayConnectedPNG)
	case Problem:
		return fyne.NewStaticResource("tray-problem.png", assets.TrayProblemPNG)
	}
	return fyne.NewStaticResource("tray-idle.png", assets.TrayIdlePNG)
}

// StateText is a resource's state as the tray and the window show it.
func StateText(r client.ResourceStatus) string {
	switch {
	case Unhealthy(r) && r.Connected:
		return "connected, unhealthy"
	case Unhealthy(r):
		return "unhealthy"
	case r.Connected:
		return "connected"
	}
	return "not connected"
}

// Unhealthy reports whether the node's last health check of r failed (a resource not checked yet is
// not counted as a problem).
func Unhealthy(r client.ResourceStatus) bool {
	return r.Health != nil && r.Health.Checked && r.Health.State == HealthUnhealthy
}

// HealthText is the health column: "healthy", "unhealthy (login)", "unhealthy (not checked yet)", or
// "unknown" when the node did not say.
func HealthText(r client.ResourceStatus) string {
	if r.Health == nil {
		return "unknown"
	}
	return r.Health.Label()
}

// ResourceNodeText is the node a resource's new connections go to (the details pane's Node row):
// the node chosen for it while it is connected, or why no node can carry it.
func ResourceNodeText(r client.ResourceStatus) string {
	switch {
	case r.Route != nil && len(r.Route.Nodes) == 0:
		if r.Route.Reason != "" {
			return "none: " + r.Route.Reason
		}
		return "none: no node can reach it"
	case r.Connected && r.Node != "":
		return r.Node
	}
	return ""
}

// AddressText is where local programs connect, or that nothing listens there yet.
func AddressText(r client.ResourceStatus) string {
	if r.Connected {
		return r.Address
	}
	return r.Address + " (not listening)"
}

// ModeText is the resource's connectivity mode, falling back to the org's default.
func ModeText(r client.ResourceStatus, orgDefault string) string {
	m := resource.Resource{ConnectivityMode: r.ConnectivityMode}
	return m.Mode(orgDefault)
}

// DetailsModeText is the details pane's connectivity mode: how the client serves r now, followed by
// its configured mode when the two differ (a virtual-networking resource on the loopback fallback),
// or the configured mode alone while the client does not serve it.
func DetailsModeText(r client.ResourceStatus, orgDefault string) string {
	configured := ModeText(r, orgDefault)
	if r.Serving == "" {
		return configured
	}
	now := client.ModeLabel(r)
	if r.Serving == configured && !r.Fallback {
		return now
	}
	return now + "; configured: " + configured
}

// TrayLabel is a resource's line in the tray menu.
func TrayLabel(r client.ResourceStatus) string {
	mark := "○"
	if r.Connected {
		mark = "●"
	}
	if Unhealthy(r) {
		mark = "⚠"
	}
	if r.Connected {
		return fmt.Sprintf("%s %s  %s  (%s)", mark, r.Name, r.Address, StateText(r))
	}
	return fmt.Sprintf("%s %s  (%s)", mark, r.Name, StateText(r))
}

// Matches reports whether the search text finds r: a case-insensitive substring of its name or of
// one of its tags written key=value.
func Matches(r client.ResourceStatus, search string) bool {
	search = strings.ToLower(strings.TrimSpace(search))
	if search == "" || strings.Contains(strings.ToLower(r.Name), search) {
		return true
	}
	for k, v := range r.Tags {
		if strings.Contains(strings.ToLower(k+"="+v), search) {
			return true
		}
	}
	return false
}

// GroupThreshold is the number of resources above which the tray menu groups them by tag.
const GroupThreshold = 12

// groupKey is the tray group of a resource: its first tag (by key) as key=value, or "untagged".
func groupKey(r client.ResourceStatus) string {
	if len(r.Tags) == 0 {
		return "untagged"
	}
	keys := make([]string, 0, len(r.Tags))
	for k := range r.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys[0] + "=" + r.Tags[keys[0]]
}

// AccountLine is the status line of a user suspended by an administrator or a device removed by one,
// which the node reports instead of answering (client.Status.Suspended, DeviceRemoved).
// The client's NodeError already says so and what to do; it becomes a sentence.
func AccountLine(st client.Status) string {
	if st.NodeError == "" {
		return ""
	}
	return strings.ToUpper(st.NodeError[:1]) + st.NodeError[1:] + "."
}

// VNChange is the one notification that virtual networking is not available (the client serves
// virtual-networking resources on loopback instead), sent when the client first says so; prev is
// what the previous poll said. Nil otherwise.
func VNChange(prev string, st client.Status, err error) *fyne.Notification {
	if err != nil || st.VNUnavailable == "" || st.VNUnavailable == prev {
		return nil
	}
	return fyne.NewNotification("Ferry: virtual networking is not available", st.VNUnavailable)
}

// NodeChange is the notification for a change of the node's reachability between two polls, or nil.
// prev is nil before the first poll, which never notifies.
func NodeChange(prev *bool, st client.Status, err error) *fyne.Notification {
	if err != nil || prev == nil || *prev == st.NodeReachable {
		return nil
	}
	if st.NodeReachable {
		return fyne.NewNotification("Ferry: ferry-node is reachable again", "Your resources work again; connected addresses carry new connections.")
	}
	if st.Suspended {
		return fyne.NewNotification("Ferry: suspended by an administrator", AccountLine(st))
	}
	if st.DeviceRemoved {
		return fyne.NewNotification("Ferry: device removed by an administrator", AccountLine(st))
	}
	return fyne.NewNotification("Ferry: ferry-node is unreachable",
		"New connections will fail until it comes back ("+st.NodeError+"). Check your network or VPN; Ferry keeps retrying.")
}

// Count is n and noun, in the plural unless n is 1: "1 resource", "3 resources".
func Count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// EmptyTableHint is what the window says in place of the resource table when it is empty: nothing is
// granted to the user (the same words as `ferry status`), or the search finds nothing among shown
// resources. It is "" when rows are shown or the status line already says what is wrong.
func EmptyTableHint(st client.Status, err error, search string, shown int) string {
	switch {
	case err != nil || !st.NodeReachable:
		return ""
	case len(st.Resources) == 0:
		return client.NoResourcesHint(st.User)
	case shown == 0:
		return fmt.Sprintf("No resource matches %q: the search looks in names and in tags written key=value (env=prod).", strings.TrimSpace(search))
	}
	return ""
}

// LoginErrorText is the login view's message for a failed login. A token that is not an enrollment
// token gets words, not the decoder's message ("invalid character '\u0081' …").
func LoginErrorText(err error) string {
	if errors.Is(err, api.ErrInvalidEnrollToken) {
		why := err.Error()
		if _, after, ok := strings.Cut(why, api.ErrInvalidEnrollToken.Error()+": "); ok {
			why = after
		}
		return "This is not a valid Ferry enrollment token: " + why + "."
	}
	return err.Error()
}

// NodeText names the node the client uses in the status line, and the preferred node when the
// client moved away from it (client.Status.Node, PreferredNode).
func NodeText(st client.Status) string {
	switch {
	case st.Node == "":
		return "ferry-node reachable"
	case st.PreferredNode != "" && st.PreferredNode != st.Node:
		return fmt.Sprintf("node %s reachable, in place of %s", st.Node, st.PreferredNode)
	}
	return fmt.Sprintf("node %s reachable", st.Node)
}
