// Package resolver will serve DNS (github.com/miekg/dns) for resource aliases under the org domain in
// virtual networking mode. It holds nothing yet: virtual networking mode is not built.
package resolver
