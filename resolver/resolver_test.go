package resolver

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startServer serves s on a fresh loopback port (UDP and TCP) and returns "ip" and "port".
func startServer(t *testing.T, cfg Config, records map[string]netip.Addr) (*Server, string, string) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetRecords(records); err != nil {
		t.Fatal(err)
	}
	// Pick a port free for UDP and TCP alike.
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		if err := s.Serve(pc, ln); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		host, port, _ := net.SplitHostPort(pc.LocalAddr().String())
		return s, host, port
	}
	t.Fatal("no free port for UDP and TCP")
	return nil, "", ""
}

func dig(t *testing.T, host, port string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig is not installed (apt-get install dnsutils)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "dig", append([]string{"@" + host, "-p", port, "+time=2", "+tries=1"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out.String())
	}
	return out.String()
}

var (
	statusRe = regexp.MustCompile(`status: ([A-Z]+)`)
	flagsRe  = regexp.MustCompile(`;; flags: ([a-z ]*);`)
)

func TestDig(t *testing.T) {
	// An upstream for names outside the domain, and one that never answers.
	upHandler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 77)})
		_ = w.WriteMsg(m)
	})
	upPC, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upLn, err := net.Listen("tcp", upPC.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*dns.Server{{PacketConn: upPC, Handler: upHandler}, {Listener: upLn, Handler: upHandler}} {
		go func() { _ = srv.ActivateAndServe() }()
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	dead, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dead.Close() })

	records := map[string]netip.Addr{
		"azure-pg-mi-prod":          netip.MustParseAddr("100.64.0.3"),
		"reports.eu.ferry.internal": netip.MustParseAddr("100.64.0.4"),
	}
	_, host, port := startServer(t, Config{Domain: "ferry.internal", Upstreams: []string{upPC.LocalAddr().String()}}, records)
	_, dhost, dport := startServer(t, Config{Domain: "ferry.internal", Upstreams: []string{dead.LocalAddr().String()}}, records)

	tests := []struct {
		name       string
		host, port string
		args       []string
		status     string
		answer     string // a regexp the answer section must match; "" = no answer
		authSOA    bool
		opt        bool
		flags      []string
	}{
		{"A for an alias", host, port, []string{"azure-pg-mi-prod.ferry.internal", "A"}, "NOERROR", `azure-pg-mi-prod\.ferry\.internal\.\s+5\s+IN\s+A\s+100\.64\.0\.3`, false, true, []string{"aa"}},
		{"alias given with its domain", host, port, []string{"reports.eu.ferry.internal", "A"}, "NOERROR", `100\.64\.0\.4`, false, true, nil},
		{"AAAA for an alias is NODATA", host, port, []string{"azure-pg-mi-prod.ferry.internal", "AAAA"}, "NOERROR", "", true, true, []string{"aa"}},
		{"TXT for an alias is NODATA", host, port, []string{"azure-pg-mi-prod.ferry.internal", "TXT"}, "NOERROR", "", true, true, nil},
		{"HTTPS for an alias is NODATA", host, port, []string{"azure-pg-mi-prod.ferry.internal", "TYPE65"}, "NOERROR", "", true, true, nil},
		{"empty non-terminal is NODATA", host, port, []string{"eu.ferry.internal", "A"}, "NOERROR", "", true, true, nil},
		{"apex SOA", host, port, []string{"ferry.internal", "SOA"}, "NOERROR", `ferry\.internal\.\s+5\s+IN\s+SOA`, false, true, nil},
		{"unknown name is NXDOMAIN", host, port, []string{"nosuch.ferry.internal", "A"}, "NXDOMAIN", "", true, true, []string{"aa"}},
		{"mixed case is echoed", host, port, []string{"AzUre-PG-mi-PROD.Ferry.Internal", "A"}, "NOERROR", `AzUre-PG-mi-PROD\.Ferry\.Internal\.\s+5\s+IN\s+A\s+100\.64\.0\.3`, false, true, nil},
		{"A over TCP", host, port, []string{"+tcp", "azure-pg-mi-prod.ferry.internal", "A"}, "NOERROR", `100\.64\.0\.3`, false, true, nil},
		{"AAAA over TCP is NODATA", host, port, []string{"+tcp", "azure-pg-mi-prod.ferry.internal", "AAAA"}, "NOERROR", "", true, true, nil},
		{"NXDOMAIN over TCP", host, port, []string{"+tcp", "nosuch.ferry.internal", "A"}, "NXDOMAIN", "", true, true, nil},
		{"mixed case over TCP", host, port, []string{"+tcp", "AZURE-pg-mi-prod.FERRY.internal", "A"}, "NOERROR", `AZURE-pg-mi-prod\.FERRY\.internal\.\s+5\s+IN\s+A`, false, true, nil},
		{"no EDNS0 gets no OPT", host, port, []string{"+noedns", "azure-pg-mi-prod.ferry.internal", "A"}, "NOERROR", `100\.64\.0\.3`, false, false, nil},
		{"EDNS0 with a small size gets OPT", host, port, []string{"+bufsize=600", "azure-pg-mi-prod.ferry.internal", "A"}, "NOERROR", `100\.64\.0\.3`, false, true, nil},
		{"outside the domain is forwarded (UDP)", host, port, []string{"www.example.com", "A"}, "NOERROR", `www\.example\.com\.\s+\d+\s+IN\s+A\s+192\.0\.2\.77`, false, true, nil},
		{"outside the domain is forwarded (TCP)", host, port, []string{"+tcp", "www.example.com", "A"}, "NOERROR", `192\.0\.2\.77`, false, true, nil},
		// The server gives up after UpstreamTimeout (1.5 s); dig waits longer so that a loaded machine
		// does not turn a late SERVFAIL into a failed test (timings are measured, not asserted).
		{"dead upstream gives SERVFAIL", dhost, dport, []string{"+time=5", "www.example.com", "A"}, "SERVFAIL", "", false, true, nil},
		{"dead upstream over TCP gives SERVFAIL", dhost, dport, []string{"+tcp", "www.example.com", "A"}, "SERVFAIL", "", false, true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := dig(t, tc.host, tc.port, tc.args...)
			m := statusRe.FindStringSubmatch(out)
			if m == nil || m[1] != tc.status {
				t.Fatalf("status: want %s\n%s", tc.status, out)
			}
			ans := section(out, "ANSWER")
			if tc.answer == "" && ans != "" {
				t.Errorf("want no answer, got %q\n%s", ans, out)
			}
			if tc.answer != "" && !regexp.MustCompile(tc.answer).MatchString(ans) {
				t.Errorf("answer does not match %s\n%s", tc.answer, out)
			}
			auth := section(out, "AUTHORITY")
			if tc.authSOA != strings.Contains(auth, "SOA") {
				t.Errorf("SOA in authority: want %v\n%s", tc.authSOA, out)
			}
			if got := strings.Contains(out, "OPT PSEUDOSECTION"); got != tc.opt {
				t.Errorf("OPT in reply: want %v\n%s", tc.opt, out)
			}
			if q := section(out, "QUESTION"); !strings.Contains(q, tc.args[len(tc.args)-2]+".") {
				t.Errorf("question not echoed as asked (%s)\n%s", tc.args[len(tc.args)-2], out)
			}
			fl := flagsRe.FindStringSubmatch(out)
			for _, f := range tc.flags {
				if fl == nil || !strings.Contains(" "+fl[1]+" ", " "+f+" ") {
					t.Errorf("flag %s missing\n%s", f, out)
				}
			}
		})
	}
}

// section returns the lines of dig's "NAME SECTION" without the header.
func section(out, name string) string {
	i := strings.Index(out, ";; "+name+" SECTION:\n")
	if i < 0 {
		return ""
	}
	rest := out[i+len(";; "+name+" SECTION:\n"):]
	if j := strings.Index(rest, "\n\n"); j >= 0 {
		rest = rest[:j]
	}
	return strings.TrimSpace(rest)
}

// TestTruncate checks that a UDP answer that does not fit the client's advertised size is cut to
// it with TC set and keeps its OPT, and that the same answer over TCP is whole.
func TestTruncate(t *testing.T) {
	s, err := New(Config{Domain: "ferry.internal"})
	if err != nil {
		t.Fatal(err)
	}
	big := func() *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("x.ferry.internal.", dns.TypeA)
		for i := range 100 {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "x.ferry.internal.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(100, 64, 1, byte(i))})
		}
		return m
	}
	tests := []struct {
		name    string
		edns    uint16 // 0: no EDNS0
		tcp     bool
		maxLen  int
		wantTC  bool
		wantOPT bool
	}{
		{"plain UDP", 0, false, 512, true, false},
		{"EDNS0 600", 600, false, 600, true, true},
		{"EDNS0 4096 capped at server size", 4096, false, ServerUDPSize, true, true},
		{"TCP", 600, true, dns.MaxMsgSize, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var opt *dns.OPT
			if tc.edns > 0 {
				q := new(dns.Msg)
				q.SetEdns0(tc.edns, false)
				opt = q.IsEdns0()
			}
			m := s.finish(big(), opt, tc.tcp)
			b, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > tc.maxLen {
				t.Errorf("answer is %d bytes, limit %d", len(b), tc.maxLen)
			}
			if m.Truncated != tc.wantTC {
				t.Errorf("TC = %v, want %v", m.Truncated, tc.wantTC)
			}
			if (m.IsEdns0() != nil) != tc.wantOPT {
				t.Errorf("OPT present = %v, want %v", m.IsEdns0() != nil, tc.wantOPT)
			}
			if !tc.wantTC && len(m.Answer) != 100 {
				t.Errorf("answer has %d records, want 100", len(m.Answer))
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	for _, d := range []string{"", "bad..name", "."} {
		if _, err := New(Config{Domain: d}); err == nil {
			t.Errorf("New(%q): want error", d)
		}
	}
	if _, err := New(Config{Domain: "ferry.internal", Upstreams: []string{"resolver.example"}}); err == nil {
		t.Error("upstream by name: want error")
	}
	s, _ := New(Config{Domain: "ferry.internal"})
	if err := s.SetRecords(map[string]netip.Addr{"x.other.test.": netip.MustParseAddr("100.64.0.3")}); err == nil {
		t.Error("record outside the domain: want error")
	}
	if err := s.SetRecords(map[string]netip.Addr{"x": netip.MustParseAddr("fd00::1")}); err == nil {
		t.Error("IPv6 record: want error")
	}
	// Two questions: FORMERR, no crash.
	q := new(dns.Msg)
	q.SetQuestion("a.ferry.internal.", dns.TypeA)
	q.Question = append(q.Question, q.Question[0])
	if m := s.answer(q, false); m.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: rcode %s", dns.RcodeToString[m.Rcode])
	}
	q.Question = nil
	if m := s.answer(q, false); m.Rcode != dns.RcodeFormatError {
		t.Errorf("no question: rcode %s", dns.RcodeToString[m.Rcode])
	}
}

func TestParseResolvConf(t *testing.T) {
	conf := "# generated\nsearch example.com\nnameserver 10.0.0.53\nnameserver 100.64.0.2\nnameserver fd00::53\nnameserver bogus\noptions edns0\n"
	got := ParseResolvConf([]byte(conf), netip.MustParseAddr("100.64.0.2"))
	want := []string{"10.0.0.53:53", "[fd00::53]:53"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestFQDN(t *testing.T) {
	tests := []struct{ sub, want string }{
		{"azure-pg-mi-prod", "azure-pg-mi-prod.ferry.internal."},
		{"Azure-PG.ferry.internal", "azure-pg.ferry.internal."},
		{"a.b", "a.b.ferry.internal."},
		{"", ""},
		{"ferry.internal", ""},
	}
	for _, tc := range tests {
		if got := FQDN(tc.sub, "ferry.internal"); got != tc.want {
			t.Errorf("FQDN(%q) = %q, want %q", tc.sub, got, tc.want)
		}
	}
}
