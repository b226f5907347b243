// Package resource defines Ferry's Azure PostgreSQL (Managed Identity) resource: its properties, their
// defaults and their validation. It is the one source of truth for those rules; the CLI, the node's API
// and the desktop admin form all call Validate.
//
// Property names and rules follow the Azure PostgreSQL (Managed Identity) resource type described in
// shared/reference/azure-postgresql-managed-identity.md ("Configuration Properties").
package resource

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/ferryhq/ferry/resource/tagexpr"
)

// TypeAzurePostgresMI is the resource type name used on the command line and in the API.
const TypeAzurePostgresMI = "azurepostgresmi"

// TypeDisplayName is the human-readable name of TypeAzurePostgresMI.
const TypeDisplayName = "Azure PostgreSQL (Managed Identity)"

// DefaultPort is PostgreSQL's default TCP port.
const DefaultPort = 5432

// Connectivity modes.
const (
	ModeLoopback          = "loopback"
	ModeVirtualNetworking = "virtual-networking"
)

// Loopback port range for auto-assigned and overridden loopback ports (inclusive).
const (
	LoopbackPortMin = 1024
	LoopbackPortMax = 64999
)

// PortOverrideAuto is the port override value that asks for a new auto-assigned port.
const PortOverrideAuto = -1

// Resource is one Azure Database for PostgreSQL server reached with a managed identity.
// Ports are TCP port numbers; zero means "not set".
type Resource struct {
	ID   string `json:"id,omitempty"`
	Name string `json:"name"` // Display Name: unique, no '"', '<' or '>'
	Type string `json:"type"` // always TypeAzurePostgresMI

	ProxyClusterID string `json:"proxy_cluster_id,omitempty"` // empty = none (use gateways)
	Hostname       string `json:"hostname"`                   // DNS name or IP of the server
	Port           int    `json:"port"`                       // server port, default 5432

	ConnectivityMode string `json:"connectivity_mode,omitempty"` // ModeLoopback or ModeVirtualNetworking; empty = org default
	IPAddress        string `json:"ip_address,omitempty"`        // requested IP; empty = auto-assigned
	PortOverride     int    `json:"port_override,omitempty"`     // 0 = default/auto; -1 = new auto-assigned port
	Subdomain        string `json:"subdomain,omitempty"`         // DNS alias label (virtual networking mode)
	BindInterface    string `json:"bind_interface,omitempty"`    // loopback IP the client binds, e.g. 127.0.0.1
	EgressFilter     string `json:"egress_filter,omitempty"`     // tag expression selecting nodes (resource/tagexpr), e.g. tag:env=prod

	Database         string `json:"database"`
	RestrictDatabase bool   `json:"restrict_database,omitempty"`
	// RedactQueryParameters keeps the values of extended-protocol parameters
	// out of the query log (only their number is recorded).
	RedactQueryParameters bool `json:"redact_query_parameters,omitempty"`

	SecretStoreID string `json:"secret_store_id,omitempty"` // empty = credentials in the catalog
	Username      string `json:"username,omitempty"`
	UsernamePath  string `json:"username_path,omitempty"` // secret path when a secret store is set

	ManagedIdentityClientID     string `json:"managed_identity_client_id,omitempty"` // empty = system-assigned identity
	ManagedIdentityClientIDPath string `json:"managed_identity_client_id_path,omitempty"`

	UseAzureSingleServerUsernames bool `json:"use_azure_single_server_usernames,omitempty"`
	TLSRequired                   bool `json:"tls_required"`

	Tags map[string]string `json:"tags,omitempty"`

	// Addresses assigned by the node when the resource is created; stable afterwards.
	LoopbackAddress string `json:"loopback_address,omitempty"` // "127.0.0.1:10001"
	VNAddress       string `json:"vn_address,omitempty"`       // "100.64.0.3:5432"
}

// New returns a resource of type TypeAzurePostgresMI with the documented defaults applied
// (port 5432, TLS required).
func New(name string) Resource {
	return Resource{Name: name, Type: TypeAzurePostgresMI, Port: DefaultPort, TLSRequired: true}
}

// Input is a Resource as the control API and resource files take it in JSON: a tls_required that is
// left out (or null) means true, the documented default, and not JSON's zero value false.
type Input struct {
	Resource
	TLSRequired *bool `json:"tls_required"` // shadows Resource.TLSRequired in JSON
}

// Get returns the resource, with tls_required true unless the JSON said false.
func (in Input) Get() Resource {
	r := in.Resource
	r.TLSRequired = in.TLSRequired == nil || *in.TLSRequired
	return r
}

var (
	uuidRE      = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	hostLabelRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)
	idRE        = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)
	tagKeyRE    = regexp.MustCompile(`^[A-Za-z0-9_.:/-]+$`)
)

// FieldError is a validation failure of one property. Field is the property's CLI flag name.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// Validate checks every property against the rules of the resource type and returns all failures
// joined (errors.Join of *FieldError), or nil. It does not check uniqueness across resources; the
// catalog does that.
func (r *Resource) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, &FieldError{Field: field, Message: fmt.Sprintf(format, a...)})
	}
	switch {
	case strings.TrimSpace(r.Name) == "":
		bad("name", "display name is required")
	case strings.ContainsAny(r.Name, "\"<>"):
		bad("name", "display name must not contain \", < or >")
	case len(r.Name) > 255:
		bad("name", "display name is longer than 255 characters")
	}
	if r.Type != TypeAzurePostgresMI {
		bad("type", "unknown resource type %q (supported: %s)", r.Type, TypeAzurePostgresMI)
	}
	if r.ProxyClusterID != "" && !idRE.MatchString(r.ProxyClusterID) {
		bad("proxy-cluster-id", "%q is not a valid ID", r.ProxyClusterID)
	}
	if r.Hostname == "" {
		bad("hostname", "hostname is required")
	} else if !ValidHostname(r.Hostname) {
		bad("hostname", "%q is neither a valid DNS name nor an IP address", r.Hostname)
	}
	if r.Port < 1 || r.Port > 65535 {
		bad("port", "port %d is out of range 1-65535", r.Port)
	}
	switch r.ConnectivityMode {
	case "", ModeLoopback, ModeVirtualNetworking:
	default:
		bad("connectivity-mode", "unknown connectivity mode %q (use %s or %s)", r.ConnectivityMode, ModeLoopback, ModeVirtualNetworking)
	}
	if r.IPAddress != "" {
		if _, err := netip.ParseAddr(r.IPAddress); err != nil {
			bad("ip-address", "%q is not an IP address", r.IPAddress)
		} else if r.ConnectivityMode == ModeLoopback {
			if err := CheckLoopbackIP(r.IPAddress); err != nil {
				bad("ip-address", "%v", err)
			}
		}
	}
	if r.PortOverride != 0 && r.PortOverride != PortOverrideAuto {
		if r.ConnectivityMode == ModeVirtualNetworking {
			if r.PortOverride < 1 || r.PortOverride > 65535 {
				bad("port-override", "port override %d is out of range 1-65535 for virtual networking mode", r.PortOverride)
			}
		} else if r.PortOverride < LoopbackPortMin || r.PortOverride > LoopbackPortMax {
			bad("port-override", "port override %d is out of range %d-%d for loopback mode", r.PortOverride, LoopbackPortMin, LoopbackPortMax)
		}
	}
	if r.PortOverride < PortOverrideAuto {
		bad("port-override", "port override %d is invalid (use -1 for a new auto-assigned port)", r.PortOverride)
	}
	if r.Subdomain != "" {
		for _, l := range strings.Split(r.Subdomain, ".") {
			if !hostLabelRE.MatchString(l) {
				bad("subdomain", "%q is not a valid DNS name (letters, digits and '-' per label)", r.Subdomain)
				break
			}
		}
	}
	if r.BindInterface != "" {
		if err := CheckLoopbackIP(r.BindInterface); err != nil {
			bad("bind-interface", "%v", err)
		}
	}
	if r.EgressFilter != "" {
		if _, err := tagexpr.Parse(r.EgressFilter); err != nil {
			bad("egress-filter", "%v", err)
		}
	}
	if strings.TrimSpace(r.Database) == "" {
		bad("database", "database is required")
	}
	if r.SecretStoreID != "" && !idRE.MatchString(r.SecretStoreID) {
		bad("secret-store-id", "%q is not a valid ID", r.SecretStoreID)
	}
	if r.SecretStoreID == "" {
		if r.Username == "" {
			bad("username", "username is required")
		}
		if r.UsernamePath != "" {
			bad("username-path", "a secret path needs a secret store: set --secret-store-id, or drop --username-path and give --username")
		}
		if r.ManagedIdentityClientIDPath != "" {
			bad("managed-identity-client-id-path", "a secret path needs a secret store: set --secret-store-id, or drop --managed-identity-client-id-path")
		}
	} else {
		switch {
		case r.Username != "" && r.UsernamePath != "":
			bad("username", "with a secret store the username is read from --username-path: drop --username (both are set)")
		case r.Username != "":
			bad("username", "with a secret store the username is read from the store: drop --username and give --username-path")
		case r.UsernamePath == "":
			bad("username-path", "username path is required with a secret store (secret-name[?key=field])")
		}
		if r.ManagedIdentityClientID != "" && r.ManagedIdentityClientIDPath != "" {
			bad("managed-identity-client-id", "both a client ID and its path are set: drop --managed-identity-client-id or --managed-identity-client-id-path")
		}
		for _, f := range []struct{ flag, path string }{{"username-path", r.UsernamePath}, {"managed-identity-client-id-path", r.ManagedIdentityClientIDPath}} {
			if f.path == "" {
				continue
			}
			if _, err := ParseSecretPath(f.path); err != nil {
				bad(f.flag, "%v", err)
			}
		}
	}
	if r.ManagedIdentityClientID != "" && !uuidRE.MatchString(r.ManagedIdentityClientID) {
		bad("managed-identity-client-id", "%q is not a client ID (a UUID such as 11111111-2222-3333-4444-555555555555); leave it empty for the system-assigned identity", r.ManagedIdentityClientID)
	}
	for k := range r.Tags {
		if k == "" || !tagKeyRE.MatchString(k) {
			bad("tags", "tag key %q is invalid (letters, digits, _ . : / -)", k)
		}
	}
	return errors.Join(errs...)
}

// ValidHostname reports whether s is an IP address or a DNS name (RFC 1123 labels).
func ValidHostname(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	if len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if !hostLabelRE.MatchString(l) {
			return false
		}
	}
	return true
}

// LoginUsername is the PostgreSQL user name the node logs in with. With "Use Azure Single Server
// Usernames" set and a hostname under database.azure.com, the server name (the hostname's first label)
// is appended as Azure Database for PostgreSQL Single Server requires ("user@servername").
func (r *Resource) LoginUsername() string {
	return r.LoginUsernameFor(r.Username)
}

// LoginUsernameFor is LoginUsername for username u (read from a secret store).
func (r *Resource) LoginUsernameFor(u string) string {
	h := strings.ToLower(strings.TrimSuffix(r.Hostname, "."))
	if r.UseAzureSingleServerUsernames && strings.HasSuffix(h, ".database.azure.com") && !strings.Contains(u, "@") {
		server, _, _ := strings.Cut(h, ".")
		u += "@" + server
	}
	return u
}

// Mode returns the resource's connectivity mode, falling back to orgDefault when unset.
func (r *Resource) Mode(orgDefault string) string {
	if r.ConnectivityMode != "" {
		return r.ConnectivityMode
	}
	if orgDefault == "" {
		return ModeLoopback
	}
	return orgDefault
}

// ParseTags parses "key=value,key2=value2" (the --tags form of resources and nodes). Spaces around
// keys and values are dropped. An empty string gives nil; an empty item, an item without '=' or
// with an empty key, and a key given twice are errors that say which. Callers validate the keys
// and values they allow (resource.Validate, api.ValidateNodeTags).
func ParseTags(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	tags := map[string]string{}
	for i, kv := range strings.Split(s, ",") {
		if strings.TrimSpace(kv) == "" {
			return nil, fmt.Errorf("parse tags: item %d is empty (a stray comma?): write key=value,key2=value2", i+1)
		}
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("parse tags: %q is not key=value", kv)
		}
		k = strings.TrimSpace(k)
		if _, dup := tags[k]; dup {
			return nil, fmt.Errorf("parse tags: the key %q is given twice", k)
		}
		tags[k] = strings.TrimSpace(v)
	}
	return tags, nil
}

// FormatTags renders tags as "key=value,key2=value2", sorted by key ("" for none).
func FormatTags(tags map[string]string) string {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + tags[k]
	}
	return strings.Join(parts, ",")
}

// TagFilter is a parsed tag expression such as "tag:env=prod" (one or more comma-separated terms,
// all of which must match).
type TagFilter map[string]string

// ParseTagFilter parses "tag:key=value[,tag:key2=value2]".
func ParseTagFilter(s string) (TagFilter, error) {
	f := TagFilter{}
	for _, term := range strings.Split(s, ",") {
		term = strings.TrimSpace(term)
		rest, ok := strings.CutPrefix(term, "tag:")
		if !ok {
			return nil, fmt.Errorf("filter term %q must look like tag:key=value", term)
		}
		k, v, ok := strings.Cut(rest, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("filter term %q must look like tag:key=value", term)
		}
		f[k] = v
	}
	return f, nil
}

// Match reports whether tags satisfy every term of the filter.
func (f TagFilter) Match(tags map[string]string) bool {
	for k, v := range f {
		if got, ok := tags[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// ParsePortOverride parses the CLI's --port-override value ("" = not set, "-1" = new auto port).
func ParsePortOverride(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("parse port override %q: not a number", s)
	}
	return n, nil
}

// Diff lists the properties that differ between a and b as "json_name: old -> new", in field order.
func Diff(a, b Resource) []string {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	var ma, mb map[string]any
	_ = json.Unmarshal(ja, &ma)
	_ = json.Unmarshal(jb, &mb)
	var out []string
	t := reflect.TypeOf(a)
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		va, vb := fmt.Sprint(ma[name]), fmt.Sprint(mb[name])
		if name == "tags" {
			va, vb = FormatTags(a.Tags), FormatTags(b.Tags)
		}
		if va != vb {
			out = append(out, fmt.Sprintf("%s: %s -> %s", name, display(ma[name], va), display(mb[name], vb)))
		}
	}
	return out
}

func display(v any, s string) string {
	if v == nil || s == "" {
		return `""`
	}
	return s
}

// Warnings lists advice that does not make the resource invalid: today, a username that looks like a
// UUID (Azure names a managed identity's role after the identity's display name, not its client ID).
func (r *Resource) Warnings() []string {
	var out []string
	if uuidRE.MatchString(strings.SplitN(r.Username, "@", 2)[0]) {
		out = append(out, fmt.Sprintf("username %q looks like a client ID: Azure names a managed identity's PostgreSQL role after the identity's display name (pgaadauth_create_principal), not its client ID", r.Username))
	}
	return out
}
