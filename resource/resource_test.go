package resource

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func valid() Resource {
	r := New("azure-pg-mi-prod")
	r.Hostname = "mypg.postgres.database.azure.com"
	r.Database = "production"
	r.Username = "mi_user@mypg"
	r.ManagedIdentityClientID = "11111111-2222-3333-4444-555555555555"
	return r
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name      string
		edit      func(*Resource)
		wantField string // "" = valid
	}{
		{"reference example", func(*Resource) {}, ""},
		{"system-assigned identity", func(r *Resource) { r.ManagedIdentityClientID = "" }, ""},
		{"missing name", func(r *Resource) { r.Name = " " }, "name"},
		{"quote in name", func(r *Resource) { r.Name = `a"b` }, "name"},
		{"angle bracket in name", func(r *Resource) { r.Name = "a<b" }, "name"},
		{"missing hostname", func(r *Resource) { r.Hostname = "" }, "hostname"},
		{"bad hostname", func(r *Resource) { r.Hostname = "my pg" }, "hostname"},
		{"IP hostname", func(r *Resource) { r.Hostname = "10.0.0.4" }, ""},
		{"port zero", func(r *Resource) { r.Port = 0 }, "port"},
		{"port too big", func(r *Resource) { r.Port = 65536 }, "port"},
		{"missing database", func(r *Resource) { r.Database = "" }, "database"},
		{"missing username", func(r *Resource) { r.Username = "" }, "username"},
		{"client ID not a UUID", func(r *Resource) { r.ManagedIdentityClientID = "abc" }, "managed-identity-client-id"},
		{"loopback port override too low", func(r *Resource) { r.PortOverride = 80 }, "port-override"},
		{"loopback port override too high", func(r *Resource) { r.PortOverride = 65000 }, "port-override"},
		{"port override auto", func(r *Resource) { r.PortOverride = -1 }, ""},
		{"VN port override 80", func(r *Resource) { r.ConnectivityMode = ModeVirtualNetworking; r.PortOverride = 80 }, ""},
		{"unknown mode", func(r *Resource) { r.ConnectivityMode = "bridge" }, "connectivity-mode"},
		{"bad egress filter", func(r *Resource) { r.EgressFilter = "env=prod" }, "egress-filter"},
		{"egress filter", func(r *Resource) { r.EgressFilter = "tag:env=prod" }, ""},
		{"egress filter with or", func(r *Resource) { r.EgressFilter = "tag:env=prod or tag:region=eu" }, ""},
		{"egress filter, two terms without and/or", func(r *Resource) { r.EgressFilter = "tag:env=prod tag:region=eu" }, "egress-filter"},
		{"egress filter, unbalanced", func(r *Resource) { r.EgressFilter = "(tag:env=prod" }, "egress-filter"},
		{"bind interface not loopback", func(r *Resource) { r.BindInterface = "10.0.0.1" }, "bind-interface"},
		{"bad subdomain", func(r *Resource) { r.Subdomain = "azure_pg" }, "subdomain"},
		{"username path without store", func(r *Resource) { r.UsernamePath = "db-creds?key=user" }, "username-path"},
		{"client ID path without store", func(r *Resource) { r.ManagedIdentityClientIDPath = "db-creds?key=client" }, "managed-identity-client-id-path"},
		{"secret store with path", func(r *Resource) { r.SecretStoreID = "se-e1b2"; r.Username = ""; r.UsernamePath = "db-creds?key=user" }, ""},
		{"secret store with whole-value path", func(r *Resource) { r.SecretStoreID = "se-e1b2"; r.Username = ""; r.UsernamePath = "pg-user" }, ""},
		{"secret store with versioned path", func(r *Resource) {
			r.SecretStoreID, r.Username, r.UsernamePath = "se-e1b2", "", "pg-user/0123456789abcdef0123456789abcdef"
		}, ""},
		{"secret store with username and path", func(r *Resource) { r.SecretStoreID = "se-e1b2"; r.UsernamePath = "pg-user" }, "username"},
		{"secret store with username only", func(r *Resource) { r.SecretStoreID = "se-e1b2" }, "username"},
		{"secret store without username path", func(r *Resource) { r.SecretStoreID = "se-e1b2"; r.Username = "" }, "username-path"},
		{"secret store with client ID and its path", func(r *Resource) {
			r.SecretStoreID, r.Username, r.UsernamePath = "se-e1b2", "", "pg-user"
			r.ManagedIdentityClientID, r.ManagedIdentityClientIDPath = "11111111-2222-3333-4444-555555555555", "pg-client"
		}, "managed-identity-client-id"},
		{"secret store with client ID path", func(r *Resource) {
			r.SecretStoreID, r.Username, r.UsernamePath, r.ManagedIdentityClientIDPath = "se-e1b2", "", "pg-user", "pg-client"
			r.ManagedIdentityClientID = ""
		}, ""},
		{"bad secret path", func(r *Resource) { r.SecretStoreID = "se-e1b2"; r.Username = ""; r.UsernamePath = "/abs?x=1" }, "username-path"},
		{"secret name with underscore", func(r *Resource) { r.SecretStoreID = "se-e1b2"; r.Username = ""; r.UsernamePath = "pg_user" }, "username-path"},
		{"secret name too long", func(r *Resource) {
			r.SecretStoreID = "se-e1b2"
			r.Username = ""
			r.UsernamePath = strings.Repeat("a", 128)
		}, "username-path"},
		{"secret path with other query", func(r *Resource) { r.SecretStoreID = "se-e1b2"; r.Username = ""; r.UsernamePath = "pg-user?field=x" }, "username-path"},
		{"secret path with empty key", func(r *Resource) { r.SecretStoreID = "se-e1b2"; r.Username = ""; r.UsernamePath = "pg-user?key=" }, "username-path"},
		{"bad client ID path", func(r *Resource) {
			r.SecretStoreID, r.Username, r.UsernamePath, r.ManagedIdentityClientIDPath = "se-e1b2", "", "pg-user", "a/b/c"
			r.ManagedIdentityClientID = ""
		}, "managed-identity-client-id-path"},
		{"empty tag key", func(r *Resource) { r.Tags = map[string]string{"": "x"} }, "tags"},
		{"wrong type", func(r *Resource) { r.Type = "postgres" }, "type"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := valid()
			tc.edit(&r)
			err := r.Validate()
			if tc.wantField == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.wantField {
				t.Fatalf("Validate() = %v, want a %s error", err, tc.wantField)
			}
		})
	}
}

func TestLoginUsername(t *testing.T) {
	cases := []struct {
		host, user string
		single     bool
		want       string
	}{
		{"mypg.postgres.database.azure.com", "mi_user", true, "mi_user@mypg"},
		{"mypg.postgres.database.azure.com", "mi_user@mypg", true, "mi_user@mypg"},
		{"mypg.postgres.database.azure.com", "mi_user", false, "mi_user"},
		{"db.internal.example", "mi_user", true, "mi_user"},
	}
	for _, tc := range cases {
		r := valid()
		r.Hostname, r.Username, r.UseAzureSingleServerUsernames = tc.host, tc.user, tc.single
		if got := r.LoginUsername(); got != tc.want {
			t.Errorf("LoginUsername(%s, %s, %v) = %q, want %q", tc.host, tc.user, tc.single, got, tc.want)
		}
	}
}

func TestTags(t *testing.T) {
	tags, err := ParseTags("env=production, team=data")
	if err != nil || tags["env"] != "production" || tags["team"] != "data" || len(tags) != 2 {
		t.Fatalf("ParseTags = %v, %v", tags, err)
	}
	if got := FormatTags(tags); got != "env=production,team=data" {
		t.Fatalf("FormatTags = %q", got)
	}
	for _, tc := range []struct{ in, want string }{
		{"env", `"env" is not key=value`},
		{"=prod", `"=prod" is not key=value`},
		{"env=a,,team=b", "item 2 is empty"},
		{"env=a,", "item 2 is empty"},
		{"env=a,env=b", `key "env" is given twice`},
	} {
		if _, err := ParseTags(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseTags(%q) = %v, want an error naming %q", tc.in, err, tc.want)
		}
	}
	f, err := ParseTagFilter("tag:env=production")
	if err != nil || !f.Match(tags) || f.Match(map[string]string{"env": "dev"}) {
		t.Fatalf("tag filter: %v %v", f, err)
	}
}

func TestAssignAddresses(t *testing.T) {
	subnet := DefaultVNSubnet
	taken := NewTaken()
	r := valid()
	vn, err := AssignVN(&r, subnet, taken)
	if err != nil || vn != "100.64.0.3:5432" {
		t.Fatalf("first VN address = %q, %v; want 100.64.0.3:5432 (skipping network, TUN and resolver)", vn, err)
	}
	taken.Add(vn)
	vn2, _ := AssignVN(&r, subnet, taken)
	if vn2 != "100.64.0.4:5432" {
		t.Fatalf("second VN address = %q, want 100.64.0.4:5432", vn2)
	}
	lb, err := AssignLoopback(&r, DefaultLoopbackRange, taken)
	if err != nil || lb != "127.0.0.1:10001" {
		t.Fatalf("first loopback address = %q, %v", lb, err)
	}
	taken.Add(lb)
	lb2, _ := AssignLoopback(&r, DefaultLoopbackRange, taken)
	if lb2 != "127.0.0.1:10002" {
		t.Fatalf("second loopback address = %q", lb2)
	}
	r.PortOverride = 10001
	if _, err := AssignLoopback(&r, DefaultLoopbackRange, taken); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("taken port override: %v", err)
	}
	vnr := valid()
	vnr.ConnectivityMode = ModeVirtualNetworking
	for _, ip := range []string{"100.64.0.1", "100.64.0.2", "100.127.255.255", "10.0.0.5"} {
		vnr.IPAddress = ip
		if _, err := AssignVN(&vnr, subnet, taken); err == nil {
			t.Errorf("AssignVN accepted reserved or outside address %s", ip)
		}
	}
	vnr.IPAddress = "100.64.100.100"
	if got, err := AssignVN(&vnr, subnet, taken); err != nil || got != "100.64.100.100:5432" {
		t.Fatalf("AssignVN(100.64.100.100) = %q, %v", got, err)
	}
	multi := netip.MustParsePrefix("127.0.0.0/8")
	mt := NewTaken()
	for _, want := range []string{"127.0.0.1:5432", "127.0.0.2:5432"} {
		got, err := AssignLoopback(&vnr, multi, mt)
		if err != nil || got != want {
			t.Fatalf("multi-loopback AssignLoopback = %q, %v; want %s", got, err, want)
		}
		mt.Add(got)
	}
	lr := valid()
	lr.IPAddress = "127.0.0.9"
	if got, err := AssignLoopback(&lr, DefaultLoopbackRange, NewTaken()); err != nil || got != "127.0.0.9:10001" {
		t.Fatalf("a named loopback IP outside the org's range: %q, %v (LoopbackRule accepts it)", got, err)
	}
	small := netip.MustParsePrefix("10.1.2.0/30")
	if _, err := AssignVN(&r, small, NewTaken()); err == nil {
		t.Fatal("a /30 has no usable address once the TUN and resolver take theirs; want error")
	}
}

// TestInputTLSRequiredDefault: JSON that leaves tls_required out (or null) decodes as true; every
// other property decodes as into a Resource, and unknown fields are still refused by a strict decoder.
func TestInputTLSRequiredDefault(t *testing.T) {
	for _, tc := range []struct {
		json string
		want bool
	}{
		{`{"name":"a","hostname":"h","port":5432}`, true},
		{`{"name":"a","hostname":"h","port":5432,"tls_required":null}`, true},
		{`{"name":"a","hostname":"h","port":5432,"tls_required":true}`, true},
		{`{"name":"a","hostname":"h","port":5432,"tls_required":false}`, false},
	} {
		var in Input
		dec := json.NewDecoder(strings.NewReader(tc.json))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			t.Fatalf("%s: %v", tc.json, err)
		}
		r := in.Get()
		if r.TLSRequired != tc.want || r.Name != "a" || r.Hostname != "h" || r.Port != 5432 {
			t.Errorf("%s: %+v", tc.json, r)
		}
	}
	dec := json.NewDecoder(strings.NewReader(`{"name":"a","tls_requried":false}`))
	dec.DisallowUnknownFields()
	var in Input
	if err := dec.Decode(&in); err == nil {
		t.Error("a misspelt tls_required was accepted")
	}
}

// TestLoopbackRule: --bind-interface and --ip-address (loopback mode) accept and refuse the same
// addresses, at validation and at assignment, whatever the org's loopback range.
func TestLoopbackRule(t *testing.T) {
	for _, tc := range []struct {
		ip string
		ok bool
	}{
		{"127.0.0.1", true}, {"127.0.0.8", true}, {"127.1.2.3", true}, {"127.255.255.254", true}, {"::1", true},
		{"127.0.0.0", false}, {"127.255.255.255", false}, {"10.0.0.1", false}, {"0.0.0.0", false},
		{"100.64.0.5", false}, {"localhost", false}, {"", false}, {"fe80::1%lo", false},
	} {
		for _, prop := range []string{"bind-interface", "ip-address"} {
			r := valid()
			if prop == "bind-interface" {
				r.BindInterface = tc.ip
			} else {
				r.ConnectivityMode = ModeLoopback
				r.IPAddress = tc.ip
			}
			if tc.ip == "" {
				if CheckLoopbackIP(tc.ip) == nil {
					t.Errorf("CheckLoopbackIP(%q) accepted it", tc.ip)
				}
				continue
			}
			verr := r.Validate()
			if (verr == nil) != tc.ok {
				t.Errorf("%s %s: Validate: %v, want ok=%v", prop, tc.ip, verr, tc.ok)
			}
			if verr != nil && !strings.Contains(verr.Error(), "127.0.0.1 to 127.255.255.254") && !strings.Contains(verr.Error(), "not an IP address") {
				t.Errorf("%s %s: the error does not state the rule: %v", prop, tc.ip, verr)
			}
			for _, rng := range []string{"127.0.0.1/32", "127.0.0.0/8", "127.0.5.0/24"} {
				_, aerr := AssignLoopback(&r, netip.MustParsePrefix(rng), NewTaken())
				if (aerr == nil) != tc.ok {
					t.Errorf("%s %s, range %s: AssignLoopback: %v, want ok=%v", prop, tc.ip, rng, aerr, tc.ok)
				}
			}
		}
	}
}

// TestLoopbackRuleMappedIPv4: an IPv4-mapped IPv6 form of a loopback IP (::ffff:127.0.0.1) is
// refused by the loopback rule. netip counts it as loopback and as an address other than
// 127.0.0.1, so the catalog's uniqueness check let a second resource take 127.0.0.1:10001 under
// that spelling, and the client (which listens on the IPv4 socket for it) served two resources on
// one address: whichever listened first got the other's connections.
func TestLoopbackRuleMappedIPv4(t *testing.T) {
	for _, ip := range []string{"::ffff:127.0.0.1", "::ffff:127.0.0.8", "::ffff:127.0.0.0", "::ffff:127.255.255.255", "::ffff:7f00:1"} {
		if err := CheckLoopbackIP(ip); err == nil {
			t.Errorf("CheckLoopbackIP(%q) accepted an IPv4-mapped address", ip)
		}
		for _, prop := range []string{"bind-interface", "ip-address"} {
			r := valid()
			if prop == "bind-interface" {
				r.BindInterface = ip
			} else {
				r.ConnectivityMode = ModeLoopback
				r.IPAddress = ip
			}
			if err := r.Validate(); err == nil {
				t.Errorf("%s %s: Validate accepted it", prop, ip)
			}
			taken := NewTaken()
			taken.Add("127.0.0.1:10001")
			taken.Add("127.0.0.8:10001")
			if got, err := AssignLoopback(&r, DefaultLoopbackRange, taken); err == nil {
				t.Errorf("%s %s: AssignLoopback gave %s while 127.0.0.1:10001 and 127.0.0.8:10001 are taken", prop, ip, got)
			}
		}
	}
}
