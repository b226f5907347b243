package resolver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultTTL is the TTL of the answers for the org domain, in seconds: short, so a resource
	// that is removed or readdressed is forgotten by OS caches within seconds.
	DefaultTTL = 5

	// DefaultUpstreamTimeout bounds the forwarding of one query (all upstreams together); the
	// client then gets SERVFAIL. 1.5 s keeps the answer within the 2 s the design promises.
	DefaultUpstreamTimeout = 1500 * time.Millisecond

	// ServerUDPSize is the EDNS0 payload size this server advertises and the largest UDP answer it
	// sends, in bytes: 1232 is the DNS Flag Day 2020 recommendation (no IP fragmentation on a
	// 1280-byte IPv6 MTU).
	ServerUDPSize = 1232

	// minUDPSize is the UDP answer limit for queries without EDNS0 (RFC 1035 §4.2.1).
	minUDPSize = 512
)

// Config describes a Server.
type Config struct {
	// Domain is the org domain the server is authoritative for, e.g. "ferry.internal".
	Domain string
	// TTL is the TTL of authoritative answers in seconds (default DefaultTTL).
	TTL uint32
	// Upstreams are the resolvers ("ip:port", port 53 when omitted) that names outside Domain are
	// forwarded to, tried in order. None means such queries get REFUSED.
	Upstreams []string
	// UpstreamTimeout bounds one forwarded query (default DefaultUpstreamTimeout).
	UpstreamTimeout time.Duration
	// Logger receives failures; nil means slog.Default().
	Logger *slog.Logger
}

// Server answers DNS queries. Set the aliases with SetRecords; serve with Serve or ServeDNS.
type Server struct {
	cfg     Config
	domain  string // lower case, fully qualified ("ferry.internal.")
	log     *slog.Logger
	records atomic.Pointer[map[string]netip.Addr] // lower-case FQDN -> IPv4

	mu      sync.Mutex
	servers []*dns.Server
}

// New checks cfg and returns a Server with no records.
func New(cfg Config) (*Server, error) {
	if cfg.Domain == "" {
		return nil, errors.New("resolver: config: no domain")
	}
	domain := dns.CanonicalName(cfg.Domain)
	if _, ok := dns.IsDomainName(domain); !ok || domain == "." {
		return nil, fmt.Errorf("resolver: config: %q is not a valid domain name", cfg.Domain)
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	ups := make([]string, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		hp, err := normalizeUpstream(u)
		if err != nil {
			return nil, err
		}
		ups = append(ups, hp)
	}
	cfg.Upstreams = ups
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, domain: domain, log: cfg.Logger}
	empty := map[string]netip.Addr{}
	s.records.Store(&empty)
	return s, nil
}

func normalizeUpstream(u string) (string, error) {
	if ap, err := netip.ParseAddrPort(u); err == nil {
		return ap.String(), nil
	}
	if a, err := netip.ParseAddr(u); err == nil {
		return netip.AddrPortFrom(a.WithZone(""), 53).String(), nil
	}
	return "", fmt.Errorf("resolver: config: upstream %q is not an IP address or ip:port", u)
}

// Domain returns the org domain, fully qualified and in lower case ("ferry.internal.").
func (s *Server) Domain() string { return s.domain }

// FQDN returns the fully qualified alias name for a resource's subdomain: a single label or a
// name under the org domain ("azure-pg-mi-prod" and "azure-pg-mi-prod.ferry.internal" both give
// "azure-pg-mi-prod.ferry.internal."). It returns "" for an empty or invalid subdomain.
func FQDN(subdomain, domain string) string {
	if subdomain == "" {
		return ""
	}
	name := dns.CanonicalName(subdomain)
	dom := dns.CanonicalName(domain)
	if !dns.IsSubDomain(dom, name) {
		if strings.HasSuffix(subdomain, ".") {
			return "" // an absolute name outside the domain
		}
		name = dns.CanonicalName(strings.TrimSuffix(subdomain, ".") + "." + dom)
	}
	if name == dom {
		return ""
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return ""
	}
	return name
}

// SetRecords replaces the A records: names are aliases (see FQDN; a bare label is taken as under
// the org domain), addresses IPv4. Names outside the domain and non-IPv4 addresses are an error
// and nothing is changed.
func (s *Server) SetRecords(records map[string]netip.Addr) error {
	m := make(map[string]netip.Addr, len(records))
	for name, ip := range records {
		fq := FQDN(name, s.domain)
		if fq == "" {
			return fmt.Errorf("resolver: record %q is not a name under %s", name, s.domain)
		}
		if !ip.Is4() {
			return fmt.Errorf("resolver: record %s: %s is not an IPv4 address", name, ip)
		}
		m[fq] = ip
	}
	s.records.Store(&m)
	return nil
}

// ServeDNS answers one query (dns.Handler).
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	tcp := false
	if _, ok := w.LocalAddr().(*net.TCPAddr); ok {
		tcp = true
	} else if w.LocalAddr() != nil && w.LocalAddr().Network() == "tcp" {
		tcp = true
	}
	resp := s.answer(req, tcp)
	if resp == nil {
		return
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("resolver: write answer", "err", err)
	}
}

// answer builds the reply to req; tcp tells the transport it came on.
func (s *Server) answer(req *dns.Msg, tcp bool) *dns.Msg {
	if req.Response {
		return nil // never answer answers
	}
	opt := req.IsEdns0()
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		if req.Opcode != dns.OpcodeQuery {
			m.Rcode = dns.RcodeNotImplemented
		}
		return s.finish(m, opt, tcp)
	}
	if opt != nil && opt.Version() != 0 {
		m := new(dns.Msg)
		m.SetReply(req)
		m.SetEdns0(ServerUDPSize, false)
		m.Rcode = dns.RcodeBadVers // extended rcode, carried in the OPT (RFC 6891 §6.1.3)
		return m
	}
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	if !dns.IsSubDomain(s.domain, name) {
		return s.forward(req, opt, tcp)
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = len(s.cfg.Upstreams) > 0
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		return s.finish(m, opt, tcp)
	}
	recs := *s.records.Load()
	ip, isAlias := recs[name]
	switch {
	case isAlias && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: s.cfg.TTL},
			A:   ip.AsSlice(),
		})
	case name == s.domain && q.Qtype == dns.TypeSOA:
		m.Answer = append(m.Answer, s.soa(q.Name))
	case isAlias || name == s.domain || s.emptyNonTerminal(recs, name):
		m.Ns = append(m.Ns, s.soa(s.domain)) // NODATA (RFC 2308 §2.2)
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, s.soa(s.domain)) // NXDOMAIN (RFC 2308 §2.1)
	}
	return s.finish(m, opt, tcp)
}

// emptyNonTerminal reports whether name has no records but an alias lies below it (it exists:
// RFC 8020).
func (s *Server) emptyNonTerminal(recs map[string]netip.Addr, name string) bool {
	for n := range recs {
		if strings.HasSuffix(n, "."+name) {
			return true
		}
	}
	return false
}

// soa is the zone's SOA record; its minimum (the negative-caching TTL, RFC 2308 §4) is the TTL.
func (s *Server) soa(owner string) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: owner, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.cfg.TTL},
		Ns:      "ns." + s.domain,
		Mbox:    "hostmaster." + s.domain,
		Serial:  1,
		Refresh: 3600, Retry: 600, Expire: 86400,
		Minttl: s.cfg.TTL,
	}
}

// finish adds the OPT record when the query had one and fits a UDP answer to the client's size.
func (s *Server) finish(m *dns.Msg, reqOpt *dns.OPT, tcp bool) *dns.Msg {
	size := udpSize(reqOpt)
	if reqOpt != nil {
		m.SetEdns0(ServerUDPSize, reqOpt.Do())
	}
	if tcp {
		size = dns.MaxMsgSize
	}
	m.Truncate(size) // keeps the OPT record, sets TC when records had to go
	return m
}

// udpSize is the largest UDP answer for a query with the given OPT (nil: none), in bytes.
func udpSize(opt *dns.OPT) int {
	if opt == nil {
		return minUDPSize
	}
	return max(minUDPSize, min(int(opt.UDPSize()), ServerUDPSize))
}

// forward sends a query for a name outside the domain to the upstreams over the same transport.
func (s *Server) forward(req *dns.Msg, opt *dns.OPT, tcp bool) *dns.Msg {
	servfail := func(rcode int) *dns.Msg {
		m := new(dns.Msg)
		m.SetRcode(req, rcode)
		m.RecursionAvailable = rcode == dns.RcodeServerFailure
		return s.finish(m, opt, tcp)
	}
	if len(s.cfg.Upstreams) == 0 {
		return servfail(dns.RcodeRefused)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.UpstreamTimeout)
	defer cancel()
	network := "udp"
	if tcp {
		network = "tcp"
	}
	c := &dns.Client{Net: network, UDPSize: ServerUDPSize}
	var lastErr error
	for _, up := range s.cfg.Upstreams {
		resp, _, err := c.ExchangeContext(ctx, req.Copy(), up)
		if err == nil && resp != nil {
			resp.Id = req.Id
			if opt != nil && resp.IsEdns0() == nil {
				resp.SetEdns0(ServerUDPSize, opt.Do())
			}
			if !tcp {
				resp.Truncate(udpSize(opt))
			}
			return resp
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	s.log.Warn("resolver: forward failed", "name", req.Question[0].Name, "network", network, "err", lastErr)
	return servfail(dns.RcodeServerFailure)
}

// Serve answers queries on pc (UDP) and ln (TCP) until Close; either may be nil. It returns once
// both servers run.
func (s *Server) Serve(pc net.PacketConn, ln net.Listener) error {
	var started []*dns.Server
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: s, UDPSize: ServerUDPSize},
		{Listener: ln, Handler: s, ReadTimeout: 10 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second }},
	} {
		if srv.PacketConn == nil && srv.Listener == nil {
			continue
		}
		ready := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(ready) }
		errc := make(chan error, 1)
		go func() { errc <- srv.ActivateAndServe() }()
		select {
		case <-ready:
			started = append(started, srv)
		case err := <-errc:
			for _, st := range started {
				_ = st.Shutdown()
			}
			return fmt.Errorf("resolver: serve: %w", err)
		}
	}
	s.mu.Lock()
	s.servers = append(s.servers, started...)
	s.mu.Unlock()
	return nil
}

// ListenAndServe listens on addr ("ip:port") over UDP and TCP and serves until Close.
func (s *Server) ListenAndServe(addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("resolver: listen udp %s: %w", addr, err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("resolver: listen tcp %s: %w", addr, err)
	}
	return s.Serve(pc, ln)
}

// Addrs returns the addresses served (UDP first), for tests that listen on port 0.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []net.Addr
	for _, srv := range s.servers {
		if srv.PacketConn != nil {
			out = append(out, srv.PacketConn.LocalAddr())
		}
		if srv.Listener != nil {
			out = append(out, srv.Listener.Addr())
		}
	}
	return out
}

// Close stops serving; it is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	srvs := s.servers
	s.servers = nil
	s.mu.Unlock()
	var errs []error
	for _, srv := range srvs {
		if err := srv.Shutdown(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
