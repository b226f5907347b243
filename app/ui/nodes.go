//go:build cgo || !darwin

package ui

import (
	"fmt"
	"strings"
	"time"

	"github.com/ferryhq/ferry/api"
)

// NodesText is the admin's view of the deployment's nodes in the Settings tab: one line per node
// with its name, state, heartbeat age and tags.
func NodesText(ns []api.Node) string {
	if len(ns) == 0 {
		return "—"
	}
	lines := make([]string, 0, len(ns))
	for _, n := range ns {
		line := fmt.Sprintf("%s · %s · heartbeat %s ago", n.Name, n.State, time.Duration(n.HeartbeatAgeSeconds)*time.Second)
		if t := api.FormatNodeTags(n.Tags); t != "" {
			line += " · " + t
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}
