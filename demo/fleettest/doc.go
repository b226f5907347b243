// Package fleettest holds the multi-host end-to-end tests: Ferry's node, client and the Azure
// emulator run as separate processes on hosts of a private network lab (internal/netlab, through
// demo/fleet), each host a network namespace with its own address. The tests need root and ip and
// skip with a message otherwise; they build ferry-node and the ferry CLI once per run. They are
// Linux's only (//go:build linux, as demo/fleet): elsewhere the package has no tests.
package fleettest
