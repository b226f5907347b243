package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Health states of a resource (Health.State).
const (
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// Health is the outcome of a resource's health check: the node resolves the server's hostname, opens
// TCP, negotiates TLS (certificate verified), gets an access token for the resource's managed
// identity, logs in and runs SELECT 1. A resource that has not been checked yet is unhealthy with
// Checked false.
//
// Health is kept per node and resource: each node checks the resources it is a candidate for
// (node/routing) and stores its result in the catalog. NodeID and NodeName say which node's result
// a Health is. A resource's summary (diagnostics, the resource lists, healthcheck) carries every
// candidate node's result in Nodes, and Reason when no node can reach it.
type Health struct {
	Resource   string       `json:"resource"`
	NodeID     string       `json:"node_id,omitempty"`     // the node that ran this check
	NodeName   string       `json:"node_name,omitempty"`   // its name
	State      string       `json:"state"`                 // HealthHealthy or HealthUnhealthy
	Checked    bool         `json:"checked"`               // false until the first check has finished
	Time       time.Time    `json:"time,omitzero"`         // when the last check started
	DurationMS float64      `json:"duration_ms"`           // how long the last check took, milliseconds
	FailedStep string       `json:"failed_step,omitempty"` // the first step that failed (StepResolve …)
	Error      string       `json:"error,omitempty"`       // what failed, as the node saw it
	Hint       string       `json:"hint,omitempty"`        // the likely cause and the fix
	Steps      []HealthStep `json:"steps,omitempty"`       // every step run, in order
	// Stale marks the result of a node that is offline: its last word, not a current one.
	Stale bool `json:"stale,omitempty"`
	// Reason, on a summary, says why no node checks the resource ("no node can reach it: …"):
	// no node is a candidate for it (its proxy cluster's workers, or the gateways, matching its
	// egress filter), or none of them is online.
	Reason string `json:"reason,omitempty"`
	// Nodes, on a summary, is the last result of every candidate node (NodeID and NodeName set),
	// in the node list's order (by name); results of nodes that are no longer candidates are left
	// out, those of candidates that are offline are Stale.
	Nodes []Health `json:"nodes,omitempty"`
}

// Health check steps, in the order they run.
const (
	StepResolve = "resolve" // the hostname resolves (or a host override maps it)
	StepTCP     = "tcp"     // a TCP connection opens
	StepTLS     = "tls"     // SSLRequest answered and the TLS certificate verifies for the hostname
	// StepSecretStore reads the username and client ID from the resource's secret store (Key Vault);
	// only resources with a secret store have it.
	StepSecretStore = "secret store"
	StepToken       = "token" // IMDS issues an access token for the resource's managed identity
	StepLogin       = "login" // the server accepts the token as the role's password
	StepQuery       = "query" // SELECT 1 answers 1
)

// HealthStep is one step of a health check.
type HealthStep struct {
	Name       string  `json:"name"`
	OK         bool    `json:"ok"`
	DurationMS float64 `json:"duration_ms"`
	Detail     string  `json:"detail,omitempty"` // what the step found, e.g. the address dialled
	Error      string  `json:"error,omitempty"`
}

// Label is the short form shown in tables: "healthy", "unhealthy (login)",
// "unhealthy (not checked yet)" or, for a resource without an online candidate node, "no node can
// reach it".
func (h Health) Label() string {
	switch {
	case h.State == HealthHealthy:
		return HealthHealthy
	case h.Reason != "":
		return "no node can reach it"
	case !h.Checked:
		return HealthUnhealthy + " (not checked yet)"
	case h.FailedStep != "":
		return HealthUnhealthy + " (" + h.FailedStep + ")"
	default:
		return HealthUnhealthy
	}
}

// HealthList is the answer to GET /v1/admin/health: the last result of every resource.
type HealthList struct {
	Health []Health `json:"health"`
}

// HealthCheck runs the health check of resource name now and returns its result (admin only).
func (c *Client) HealthCheck(ctx context.Context, name string) (Health, error) {
	var h Health
	return h, c.do(ctx, http.MethodPost, "/v1/admin/datasources/"+url.PathEscape(name)+"/healthcheck", nil, &h)
}

// Diagnostics returns the last health check result of resource name, step by step (admin only).
func (c *Client) Diagnostics(ctx context.Context, name string) (Health, error) {
	var h Health
	return h, c.do(ctx, http.MethodGet, "/v1/admin/datasources/"+url.PathEscape(name)+"/diagnostics", nil, &h)
}

// HealthAll returns the last health check result of every resource (admin only).
func (c *Client) HealthAll(ctx context.Context) ([]Health, error) {
	var l HealthList
	return l.Health, c.do(ctx, http.MethodGet, "/v1/admin/health", nil, &l)
}
