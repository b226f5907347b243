// Package faults holds the full-path fault tests of issue "tokens over time and faults": access
// tokens that expire and are refused, IMDS outages and throttling, node and upstream restarts,
// clients that vanish, and load. Real psql/pgbench and pgx go through the client's loopback
// listener, the WireGuard tunnel and the node's proxy to the Azure emulator's real PostgreSQL.
// Time figures are scaled down from the (2-minute tokens, 5-minute sessions) so the tests
// stay within CI's budget: 20 s tokens and sessions of about two token lifetimes. It has no code
// of its own.
package faults
