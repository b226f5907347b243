// Package fullpath holds the PostgreSQL proxy's full-path tests: real clients (psql, pgbench,
// pgx, pgjdbc, psycopg) through the client's loopback listener, the WireGuard tunnel, the node's
// proxy and the Azure emulator to a real PostgreSQL, checking the node's query log for each. It
// has no code of its own; the tests are a separate test binary from demo's, so each binary owns
// one installation (MSAL caches managed-identity tokens per process).
package fullpath
