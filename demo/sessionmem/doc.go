// Package sessionmem holds the memory budget of an idle authenticated PostgreSQL session through
// Ferry: what the node and the client hold per session, measured through the real path (client
// loopback listener, WireGuard tunnel, node proxy, TLS to the Azure emulator's front). It has no
// code of its own; the test is a separate binary so that it owns its installation and its heap.
package sessionmem
