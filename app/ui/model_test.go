//go:build cgo || !darwin

package ui

import (
	"errors"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
)

func rs(name string, connected bool, health string, tags map[string]string) client.ResourceStatus {
	var h *api.Health
	if health != "" {
		h = &api.Health{Resource: name, State: health, Checked: true}
		if health == HealthUnhealthy {
			h.FailedStep = api.StepLogin
		}
	}
	return client.ResourceStatus{Resource: api.Resource{Name: name, Health: h, Tags: tags}, Address: "127.0.0.1:10001", Connected: connected}
}

func TestOverallStateAndLabels(t *testing.T) {
	tests := []struct {
		name    string
		st      client.Status
		err     error
		want    Overall
		icon    string
		label0  string
		state0  string
		health0 string
	}{
		{"idle", client.Status{NodeReachable: true, Resources: []client.ResourceStatus{rs("a", false, "", nil)}}, nil, Idle, "tray-idle.png", "○ a  (not connected)", "not connected", "unknown"},
		{"connected", client.Status{NodeReachable: true, Resources: []client.ResourceStatus{rs("a", true, HealthHealthy, nil)}}, nil, Connected, "tray-connected.png", "● a  127.0.0.1:10001  (connected)", "connected", "healthy"},
		{"unhealthy", client.Status{NodeReachable: true, Resources: []client.ResourceStatus{rs("a", false, HealthUnhealthy, nil), rs("b", true, "", nil)}}, nil, Problem, "tray-problem.png", "⚠ a  (unhealthy)", "unhealthy", "unhealthy (login)"},
		{"node unreachable", client.Status{NodeError: "timeout", Resources: []client.ResourceStatus{rs("a", true, "", nil)}}, nil, Problem, "tray-problem.png", "● a  127.0.0.1:10001  (connected)", "connected", "unknown"},
		{"daemon down", client.Status{}, errors.New("no daemon"), Problem, "tray-problem.png", "", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := OverallState(tc.st, tc.err)
			if o != tc.want || TrayIcon(o).Name() != tc.icon {
				t.Errorf("overall %v (%s), want %v (%s)", o, TrayIcon(o).Name(), tc.want, tc.icon)
			}
			if len(tc.st.Resources) == 0 {
				return
			}
			r := tc.st.Resources[0]
			if TrayLabel(r) != tc.label0 || StateText(r) != tc.state0 || HealthText(r) != tc.health0 {
				t.Errorf("label %q state %q health %q", TrayLabel(r), StateText(r), HealthText(r))
			}
		})
	}
}

func TestMatches(t *testing.T) {
	r := rs("azure-pg-mi-prod", false, "", map[string]string{"env": "production", "team": "data"})
	for search, want := range map[string]bool{"": true, "PROD": true, "env=prod": true, "team=data": true, "data": true, "dev": false, "env=dev": false} {
		if Matches(r, search) != want {
			t.Errorf("Matches(%q) = %v", search, !want)
		}
	}
}

func TestNodeChange(t *testing.T) {
	yes, no := true, false
	up := client.Status{NodeReachable: true}
	down := client.Status{NodeError: "i/o timeout"}
	tests := []struct {
		name  string
		prev  *bool
		st    client.Status
		err   error
		title string
	}{
		{"first poll never notifies", nil, down, nil, ""},
		{"still up", &yes, up, nil, ""},
		{"goes away", &yes, down, nil, "Ferry: ferry-node is unreachable"},
		{"comes back", &no, up, nil, "Ferry: ferry-node is reachable again"},
		{"daemon error is not a node change", &yes, client.Status{}, errors.New("x"), ""},
		{"suspended", &yes, client.Status{Suspended: true, NodeError: "user alice was suspended by an administrator"}, nil, "Ferry: suspended by an administrator"},
		{"device removed", &yes, client.Status{DeviceRemoved: true, NodeError: "this device was removed"}, nil, "Ferry: device removed by an administrator"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := NodeChange(tc.prev, tc.st, tc.err)
			got := ""
			if n != nil {
				got = n.Title
			}
			if got != tc.title {
				t.Errorf("notification %q, want %q", got, tc.title)
			}
			if tc.st.Suspended && (n == nil || !strings.Contains(n.Content, "suspended by an administrator")) {
				t.Errorf("suspended notification %+v does not say suspended by an administrator", n)
			}
		})
	}
}
