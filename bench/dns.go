//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/ferryhq/ferry/resolver"
	"github.com/ferryhq/ferry/resource"
)

// Names of the DNS servers in the tables.
const (
	dnsDnsmasq    = "dnsmasq"
	dnsResolver   = "resolver (loopback UDP)"
	dnsResolverVN = "resolver (VN mode)"
)

// dnsTarget is one DNS server measured with dnsperf.
type dnsTarget struct {
	Name        string
	Description string
	addr        netip.AddrPort
	wrap        []string // command prefix for dnsperf (ip netns exec NAME); nil runs it here
}

// writeQueryFile writes dnsperf's input: one "name A" line per alias, in name order.
func writeQueryFile(dir string, a aliases) (string, error) {
	var names []string
	for n := range a.records {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "%s A\n", strings.TrimSuffix(n, "."))
	}
	f := filepath.Join(dir, "dns-queries.txt")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("dnsperf query file: %w", err)
	}
	return f, nil
}

// startResolver serves the aliases with Ferry's resolver (resolver.Server, as the client daemon
// configures it: authoritative for the org domain, default TTL) on a loopback UDP socket in this
// process. No upstreams: every query is for the org domain.
func startResolver(a aliases) (*dnsTarget, func(), error) {
	srv, err := resolver.New(resolver.Config{Domain: a.domain})
	if err != nil {
		return nil, nil, err
	}
	if err := srv.SetRecords(a.records); err != nil {
		return nil, nil, err
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("resolver: listen: %w", err)
	}
	if err := srv.Serve(pc, nil); err != nil {
		pc.Close()
		return nil, nil, err
	}
	t := &dnsTarget{
		Name: dnsResolver,
		Description: "Ferry's resolver (resolver.Server, miekg/dns) on a loopback UDP socket in the bench process: " +
			"the resolver alone, without the TUN and userspace stack it sits behind in virtual networking mode",
		addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(),
	}
	return t, func() { srv.Close() }, nil
}

// vnResolver is the resolver of the client daemon in virtual networking mode, on subnet+2:53 of
// its TUN, asked from inside the namespace.
func vnResolver(v *vnSetup, a aliases) *dnsTarget {
	return &dnsTarget{
		Name: dnsResolverVN,
		Description: "the client daemon's resolver in virtual networking mode (" + resource.ResolverAddress(a.subnet).String() +
			":53), asked by dnsperf inside the namespace: kernel → TUN → the daemon's userspace stack (gVisor UDP) → resolver.Server",
		addr: netip.AddrPortFrom(resource.ResolverAddress(a.subnet), 53),
		wrap: []string{"ip", "netns", "exec", v.ns.Name},
	}
}

// startDnsmasq serves the same names as A records (--host-record) with dnsmasq on a loopback port,
// authoritative-style for the org domain (--local, no upstreams, no /etc/hosts), same TTL.
func (p *peers) startDnsmasq(ctx context.Context, a aliases) (*dnsTarget, error) {
	bin, err := p.need(ctx, "dnsmasq", "dnsmasq-base")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("dnsmasq: %w", err)
	}
	d := filepath.Join(p.dir, "dnsmasq")
	if err := os.Mkdir(d, 0o755); err != nil {
		return nil, fmt.Errorf("dnsmasq: %w", err)
	}
	args := []string{"-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
		"--listen-address=127.0.0.1", "--port=" + strconv.Itoa(port), "--pid-file=",
		"--local-ttl=" + strconv.Itoa(resolver.DefaultTTL), "--local=/" + a.domain + "/",
		"--log-facility=" + filepath.Join(d, "dnsmasq.log")}
	for n, ip := range a.records {
		args = append(args, "--host-record="+strings.TrimSuffix(n, ".")+","+ip.String())
	}
	done, err := p.start(exec.Command(bin, args...), filepath.Join(d, "stderr.log"))
	if err != nil {
		return nil, fmt.Errorf("start dnsmasq: %w", err)
	}
	v, _ := exec.Command(bin, "--version").Output()
	ver, _, _ := strings.Cut(strings.TrimSpace(string(v)), "  ")
	t := &dnsTarget{
		Name:        dnsDnsmasq,
		Description: ver + " on a loopback UDP port serving the same names as A records (--host-record, --local for the org domain, no upstreams)",
		addr:        netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)),
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := checkAnswers(ctx, t.addr, a)
		if err == nil {
			return t, nil
		}
		select {
		case <-done:
			b, _ := os.ReadFile(filepath.Join(d, "stderr.log"))
			return nil, fmt.Errorf("dnsmasq exited: %s", lastLines(string(b), 3))
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dnsmasq: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkAnswers asks addr for every alias over UDP and checks the A record.
func checkAnswers(ctx context.Context, addr netip.AddrPort, a aliases) error {
	c := &dns.Client{Timeout: time.Second}
	for n, ip := range a.records {
		m := new(dns.Msg)
		m.SetQuestion(n, dns.TypeA)
		r, _, err := c.ExchangeContext(ctx, m, addr.String())
		if err != nil {
			return fmt.Errorf("ask %s for %s: %w", addr, n, err)
		}
		if len(r.Answer) != 1 {
			return fmt.Errorf("ask %s for %s: %s with %d answers", addr, n, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
		if got, ok := r.Answer[0].(*dns.A); !ok || !got.A.Equal(ip.AsSlice()) {
			return fmt.Errorf("ask %s for %s: answer %v, want %s", addr, n, r.Answer[0], ip)
		}
	}
	return nil
}

var (
	reDNSCompleted = regexp.MustCompile(`(?m)^\s*Queries completed:\s+([0-9]+)`)
	reDNSLost      = regexp.MustCompile(`(?m)^\s*Queries lost:\s+([0-9]+)`)
	reDNSQPS       = regexp.MustCompile(`(?m)^\s*Queries per second:\s+([0-9.]+)`)
	reDNSLatency   = regexp.MustCompile(`(?m)^\s*Average Latency \(s\):\s+([0-9.]+)`)
	reDNSRcodes    = regexp.MustCompile(`(?m)^\s*Response codes:\s+(.*)$`)
)

// runDnsperf runs dnsperf -l secs with queryFile against t and returns queries per second,
// average latency and the lost queries (dnsperf 2.x report). Any answer but NOERROR fails it.
// Every server gets the same settings: one client socket, one thread, at most 100 queries
// outstanding (dnsperf's defaults, spelled out), 2 s timeout.
func runDnsperf(ctx context.Context, t *dnsTarget, queryFile string, secs int) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+time.Minute)
	defer cancel()
	args := []string{"dnsperf", "-s", t.addr.Addr().String(), "-p", strconv.Itoa(int(t.addr.Port())),
		"-d", queryFile, "-l", strconv.Itoa(secs), "-c", "1", "-T", "1", "-q", "100", "-t", "2"}
	argv := append(append([]string{}, t.wrap...), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := time.Now()
	err := cmd.Run()
	elapsed := time.Since(t0).Seconds()
	out := stdout.String()
	if err != nil {
		return sample{}, fmt.Errorf("dnsperf: %w: %s", err, lastLines(stderr.String()+out, 3))
	}
	qps, lat, done, lost, rc := reDNSQPS.FindStringSubmatch(out), reDNSLatency.FindStringSubmatch(out),
		reDNSCompleted.FindStringSubmatch(out), reDNSLost.FindStringSubmatch(out), reDNSRcodes.FindStringSubmatch(out)
	if qps == nil || lat == nil || done == nil || lost == nil || rc == nil {
		return sample{}, fmt.Errorf("dnsperf: cannot read its report: %s", lastLines(out, 4))
	}
	if codes := strings.TrimSpace(rc[1]); !strings.HasPrefix(codes, "NOERROR") || strings.Contains(codes, ",") {
		return sample{}, fmt.Errorf("dnsperf: answers other than NOERROR: %s", codes)
	}
	s := sample{Seconds: elapsed}
	s.Value, _ = strconv.ParseFloat(qps[1], 64)
	secLat, _ := strconv.ParseFloat(lat[1], 64)
	s.LatencyMs = secLat * 1000
	s.Queries, _ = strconv.ParseInt(done[1], 10, 64)
	s.Lost, _ = strconv.ParseInt(lost[1], 10, 64)
	return s, nil
}
