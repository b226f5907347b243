// Package resolver serves DNS (github.com/miekg/dns) for resource aliases in virtual networking
// mode. A Server is authoritative for the org domain (e.g. ferry.internal): A records for the
// aliases of resources, NODATA (NOERROR, empty answer, SOA in the authority section) for other
// types of names that exist, NXDOMAIN for names that do not (RFC 2308). Names are matched
// case-insensitively and the question is echoed exactly as received. EDNS0 (RFC 6891) is honoured:
// a query with an OPT record gets one back, and UDP answers fit the advertised payload size or are
// truncated with TC set. Names outside the domain are forwarded to the resolvers the system used
// before Ferry, over the transport the query came in on; an upstream failure or timeout becomes
// SERVFAIL within 2 s.
package resolver
