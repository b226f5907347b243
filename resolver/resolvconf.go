package resolver

import (
	"bufio"
	"bytes"
	"net/netip"
	"strings"
)

// ParseResolvConf returns the nameserver addresses ("ip:53") of a resolv.conf(5) file, in order,
// leaving out those in skip (Ferry's own resolver, so it never forwards to itself).
func ParseResolvConf(data []byte, skip ...netip.Addr) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		a = a.Unmap()
		skipped := false
		for _, s := range skip {
			skipped = skipped || s == a
		}
		if !skipped {
			out = append(out, netip.AddrPortFrom(a, 53).String())
		}
	}
	return out
}
