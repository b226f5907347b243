package resolver

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// FuzzAnswer feeds arbitrary DNS messages to the handler's answer step (no upstreams, so nothing
// leaves the process). It must never panic; it must not answer a response; an answer must carry
// the query's ID, pack, and fit the UDP size the query allows (512 bytes without EDNS0, RFC 1035
// §4.2.1; the advertised size up to 1232 with it, RFC 6891) when it came over UDP.
func FuzzAnswer(f *testing.F) {
	q := func(name string, qtype uint16, edns bool, mut func(*dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if edns {
			m.SetEdns0(4096, true)
		}
		if mut != nil {
			mut(m)
		}
		b, _ := m.Pack()
		return b
	}
	for _, seed := range [][]byte{
		q("db.ferry.internal.", dns.TypeA, false, nil),
		q("DB.Ferry.Internal.", dns.TypeANY, true, nil),
		q("ferry.internal.", dns.TypeSOA, false, nil),
		q("nope.ferry.internal.", dns.TypeAAAA, true, nil),
		q("internal.", dns.TypeA, false, nil),
		q("example.com.", dns.TypeA, false, nil),
		q("a.b.ferry.internal.", dns.TypeA, false, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }),
		q("db.ferry.internal.", dns.TypeA, false, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }),
		q("db.ferry.internal.", dns.TypeA, false, func(m *dns.Msg) { m.Response = true }),
		q("db.ferry.internal.", dns.TypeA, true, func(m *dns.Msg) { m.IsEdns0().SetVersion(1) }),
		q("db.ferry.internal.", dns.TypeA, false, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }),
		{0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		{},
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	s, err := New(Config{Domain: "ferry.internal", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	recs := map[string]netip.Addr{}
	for i, name := range []string{"db", "a.b", "long-name-of-a-resource-for-truncation"} {
		recs[FQDN(name, "ferry.internal")] = netip.AddrFrom4([4]byte{100, 64, 0, byte(3 + i)})
	}
	if err := s.SetRecords(recs); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, tcp bool) {
		req := new(dns.Msg)
		if req.Unpack(data) != nil {
			return // the dns.Server drops what does not parse
		}
		resp := s.answer(req, tcp)
		if resp == nil {
			if !req.Response {
				t.Fatal("no answer to a query")
			}
			return
		}
		if req.Response {
			t.Fatal("answered a response")
		}
		if resp.Id != req.Id || !resp.Response {
			t.Fatalf("answer id %d response %v to query id %d", resp.Id, resp.Response, req.Id)
		}
		b, err := resp.Pack()
		if err != nil {
			t.Fatalf("answer does not pack: %v\n%v", err, resp)
		}
		if !tcp {
			if limit := udpSize(req.IsEdns0()); len(b) > limit {
				t.Fatalf("UDP answer of %d bytes, limit %d", len(b), limit)
			}
		}
	})
}
