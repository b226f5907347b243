// Package outage holds the tests of a fleet whose shared catalog database goes away: nodes keep
// open sessions and let known devices connect from their read cache (node/catcache), refuse admin
// writes with 503, say so in /readyz, metrics and doctor, keep audit records in their spool, and
// apply what changed meanwhile once the catalog is back.
package outage
