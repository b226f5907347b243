// Package serverhost is the node's allow-list of the servers it may send a managed-identity access
// token to. The token is a bearer credential: whoever receives it can log in to every Azure Database
// for PostgreSQL server the identity may reach, without Ferry. So a resource's hostname must be on the
// node's list (the node config's allowed_server_hosts, which the control API cannot change) before a
// resource is stored, before a health check and before every login.
//
// Entries are matched case-insensitively and without a trailing dot:
//
//   - "*.postgres.database.azure.com" matches any name with one or more labels before the suffix
//     (mypg.postgres.database.azure.com, a.b.postgres.database.azure.com), on a label boundary, and
//     not the suffix itself: evilpostgres.database.azure.com and
//     mypg.postgres.database.azure.com.attacker.example do not match.
//   - "mypg.internal.example" matches that one name.
//   - "10.0.0.4" or "fd00::4" matches that one address. An IP literal as a resource's hostname is
//     refused unless it is listed itself: no wildcard matches an address.
//
// Defaults are the domains of Azure Database for PostgreSQL (Flexible Server and Single Server alike)
// in the public cloud and the sovereign clouds (Azure operated by 21Vianet in China, Azure
// Government): the names Azure issues server certificates for.
package serverhost

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ferryhq/ferry/resource"
)

// ConfigKey is the node config key that holds the list; errors name it so an operator knows what to
// change.
const ConfigKey = "allowed_server_hosts"

// Defaults are the Azure Database for PostgreSQL domains: the public cloud, Azure operated by
// 21Vianet (China) and Azure Government. Single Server and Flexible Server share them.
var Defaults = []string{
	"*.postgres.database.azure.com",
	"*.postgres.database.chinacloudapi.cn",
	"*.postgres.database.usgovcloudapi.net",
}

// List is a parsed allow-list. The zero List allows nothing; use Default or Parse.
type List struct {
	entries  []string            // normalised, as given
	names    map[string]bool     // exact DNS names
	addrs    map[netip.Addr]bool // exact IP addresses (unmapped, no zone)
	suffixes []string            // ".postgres.database.azure.com": the wildcard's suffix with its dot
}

// Default returns the list of Defaults.
func Default() *List {
	l, err := Parse(Defaults)
	if err != nil {
		panic("serverhost: invalid default: " + err.Error())
	}
	return l
}

// normalize lower-cases host's ASCII letters and drops one trailing dot. Nothing else is changed:
// a resource's hostname is judged as the node dials it and puts it in the TLS ServerName, so white
// space or a non-ASCII letter that Unicode lower-cases to ASCII (the Kelvin sign) makes it no name.
func normalize(host string) string {
	b := []byte(host)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return strings.TrimSuffix(string(b), ".")
}

// Parse checks and parses entries: "*.DOMAIN" (DOMAIN of two labels or more), a DNS name, or an IP
// address. It returns every bad entry's error joined.
func Parse(entries []string) (*List, error) {
	l := &List{names: map[string]bool{}, addrs: map[netip.Addr]bool{}}
	var errs []error
	for _, e := range entries {
		n := normalize(strings.TrimSpace(e)) // the config's entries may have stray spaces
		if err := l.add(n); err != nil {
			errs = append(errs, fmt.Errorf("%s entry %q: %w", ConfigKey, e, err))
			continue
		}
		l.entries = append(l.entries, n)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *List) add(n string) error {
	if a, err := netip.ParseAddr(n); err == nil {
		if a.Zone() != "" {
			return errors.New("an IPv6 address with a zone cannot be listed")
		}
		l.addrs[a.Unmap()] = true
		return nil
	}
	if suffix, ok := strings.CutPrefix(n, "*."); ok {
		if strings.Contains(suffix, "*") || !isDNSName(suffix) {
			return errors.New(`a wildcard is "*." followed by a DNS name, e.g. *.postgres.database.azure.com`)
		}
		if !strings.Contains(suffix, ".") {
			return fmt.Errorf("*.%s would allow every name of a top-level domain: list a domain of two labels or more", suffix)
		}
		l.suffixes = append(l.suffixes, "."+suffix)
		return nil
	}
	if !isDNSName(n) {
		return errors.New(`not a DNS name, "*.DOMAIN" or an IP address`)
	}
	l.names[n] = true
	return nil
}

// isDNSName reports whether s is a DNS name (RFC 1123 labels) and not an IP address.
func isDNSName(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return false
	}
	return s != "" && !strings.HasSuffix(s, ".") && resource.ValidHostname(s)
}

// Entries returns the list's entries, normalised.
func (l *List) Entries() []string { return slices.Clone(l.entries) }

// Allows reports whether host (a resource's hostname) is on the list.
func (l *List) Allows(host string) bool {
	if l == nil {
		return false
	}
	h := normalize(host)
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Zone() == "" && l.addrs[a.Unmap()]
	}
	if !isDNSName(h) {
		return false
	}
	if l.names[h] {
		return true
	}
	for _, s := range l.suffixes {
		if len(h) > len(s) && strings.HasSuffix(h, s) {
			return true
		}
	}
	return false
}

// NotAllowedError is the refusal of a hostname that is not on the list.
type NotAllowedError struct {
	Host    string
	Entries []string
}

func (e *NotAllowedError) Error() string {
	what := "server host"
	if _, err := netip.ParseAddr(normalize(e.Host)); err == nil {
		what = "server IP address"
	}
	return fmt.Sprintf("%s %q is not on this node's list of servers it may send managed-identity access tokens to (%s: %s); "+
		"use the server's Azure name, or have the node's operator add the host to %s in the node config (ferry-node init --allow-server-host)",
		what, e.Host, ConfigKey, strings.Join(e.Entries, ", "), ConfigKey)
}

// Check returns a *NotAllowedError when host is not on the list, else nil.
func (l *List) Check(host string) error {
	if l.Allows(host) {
		return nil
	}
	var entries []string
	if l != nil {
		entries = l.Entries()
	}
	return &NotAllowedError{Host: host, Entries: entries}
}
