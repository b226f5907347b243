// Package failover holds the client's failover tests: two real nodes that admit the same device
// (each with its own WireGuard key and port, their catalogs seeded alike), one of them killed while
// sessions and new connections run through the client. It has no code of its own.
package failover
