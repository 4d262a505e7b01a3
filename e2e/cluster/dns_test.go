package cluster

import (
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

func TestAnswerDNS(t *testing.T) {
	lookup := func(name string) (netip.Addr, bool) {
		if name == "zmeshd.istio-system.svc.cluster.local." {
			return netip.MustParseAddr("10.96.0.42"), true
		}
		return netip.Addr{}, false
	}
	query := func(name string, typ dnsmessage.Type) []byte {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
		b.StartQuestions()
		b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET})
		msg, err := b.Finish()
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	for _, tc := range []struct {
		name    string
		typ     dnsmessage.Type
		rcode   dnsmessage.RCode
		answers int
	}{
		{"zmeshd.istio-system.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, 1},
		{"zmeshd.istio-system.svc.cluster.local.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, 0},
		{"zmeshd.istio-system.svc.istio-system.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, 0},
		{"example.com.", dnsmessage.TypeA, dnsmessage.RCodeNameError, 0},
	} {
		resp, ok := answerDNS(query(tc.name, tc.typ), lookup)
		if !ok {
			t.Fatalf("%s %v: no answer", tc.name, tc.typ)
		}
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatal(err)
		}
		if m.ID != 7 || !m.Response || m.RCode != tc.rcode || len(m.Answers) != tc.answers {
			t.Errorf("%s %v: id %d response %v rcode %v, %d answers; want rcode %v, %d answers", tc.name, tc.typ, m.ID, m.Response, m.RCode, len(m.Answers), tc.rcode, tc.answers)
			continue
		}
		if tc.answers == 1 {
			if a, ok := m.Answers[0].Body.(*dnsmessage.AResource); !ok || netip.AddrFrom4(a.A) != netip.MustParseAddr("10.96.0.42") {
				t.Errorf("%s: answer %v, want 10.96.0.42", tc.name, m.Answers[0].Body)
			}
		}
	}
	// A response is never answered (no loops between servers).
	resp, _ := answerDNS(query("example.com.", dnsmessage.TypeA), lookup)
	if _, ok := answerDNS(resp, lookup); ok {
		t.Error("a response was answered")
	}
}

func TestServiceName(t *testing.T) {
	for name, want := range map[string][2]string{
		"zmeshd.istio-system.svc.cluster.local.": {"zmeshd", "istio-system"},
		"ZMESHD.istio-system.svc.cluster.local":  {"zmeshd", "istio-system"},
		"a.b.c.svc.cluster.local.":               {},
		"zmeshd.istio-system.svc.example.":       {},
		"istio-system.svc.cluster.local.":        {},
	} {
		svc, ns, ok := serviceName(name, "cluster.local")
		if got := [2]string{svc, ns}; ok != (want != [2]string{}) || (ok && got != want) {
			t.Errorf("serviceName(%q) = %q, %q, %v; want %q", name, svc, ns, ok, want)
		}
	}
}
