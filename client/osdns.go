package client

import (
	"net/netip"
)

// dnsSpec is what the OS is told in virtual networking mode: send queries for Domain to Server,
// which is reached through Interface.
type dnsSpec struct {
	Interface string     // the TUN device's name
	Index     int        // its interface index when known (the helper's TUN): used, and checked against Interface
	Server    netip.Addr // Ferry's resolver (subnet+2)
	Domain    string     // the org domain, fully qualified ("ferry.internal.")
}
