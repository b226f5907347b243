package client

import "github.com/ferryhq/ferry/api"

// WithRouteEdit lets a test set api.Resource.Route on every resource list the daemon reads, as a
// node that computes routes would send it.
func WithRouteEdit(edit func([]api.Resource)) DaemonOption {
	return func(o *daemonOptions) { o.editRoutes = edit }
}
