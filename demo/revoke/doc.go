// Package revoke holds the full-path tests of "revocation and suspension end what is running": a
// revoked grant or a suspended user ends the open sessions at once with a FATAL that says why,
// cancels the statement they run on the server so nothing commits afterwards, and a suspended
// user's client says so; a CancelRequest from a user not granted the resource is refused and
// recorded. Real psql and pgx go through the client's loopback listener, the WireGuard tunnel and
// the node's proxy to the Azure emulator's real PostgreSQL. It has no code of its own; the tests are
// a test binary of their own, so it owns one installation (MSAL caches managed-identity tokens per
// process).
package revoke
