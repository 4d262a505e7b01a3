package hbone

import (
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

func hf(kv ...string) []hpack.HeaderField {
	var f []hpack.HeaderField
	for i := 0; i+1 < len(kv); i += 2 {
		f = append(f, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return f
}

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fields  []hpack.HeaderField
		target  string
		source  string
		host    string
		wantErr string
	}{
		{name: "minimal", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80"), target: "10.0.0.1:80"},
		{name: "ipv6", fields: hf(":method", "CONNECT", ":authority", "[fd00::1]:443"), target: "[fd00::1]:443"},
		{name: "v4-mapped is unmapped", fields: hf(":method", "CONNECT", ":authority", "[::ffff:10.0.0.1]:80"), target: "10.0.0.1:80"},
		{name: "scheme and path ignored", fields: hf(":method", "CONNECT", ":scheme", "https", ":path", "/", ":authority", "10.0.0.1:80"), target: "10.0.0.1:80"},
		{name: "forwarded for and host", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for="10.0.0.9:1234";host=echo.default.svc.cluster.local`), target: "10.0.0.1:80", source: "10.0.0.9:1234", host: "echo.default.svc.cluster.local"},
		{name: "forwarded v6", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for="[fd00::9]:1234"`), target: "10.0.0.1:80", source: "[fd00::9]:1234"},
		{name: "forwarded first element wins", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for="10.0.0.9:1", for="10.0.0.8:2"`), target: "10.0.0.1:80", source: "10.0.0.9:1"},
		{name: "forwarded bare ip", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for=10.0.0.9`), target: "10.0.0.1:80", source: "10.0.0.9:0"},
		{name: "forwarded obfuscated", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for=_hidden;proto=https`), target: "10.0.0.1:80"},
		{name: "GET", fields: hf(":method", "GET", ":authority", "10.0.0.1:80"), wantErr: `:method is "GET"`},
		{name: "no method", fields: hf(":authority", "10.0.0.1:80"), wantErr: "missing :method"},
		{name: "no authority", fields: hf(":method", "CONNECT"), wantErr: "missing :authority"},
		{name: "hostname", fields: hf(":method", "CONNECT", ":authority", "svc:80"), wantErr: "not ip:port"},
		{name: "no port", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1"), wantErr: "not ip:port"},
		{name: "port 0", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:0"), wantErr: "port 0"},
		{name: "extended", fields: hf(":method", "CONNECT", ":protocol", "connect-udp", ":authority", "10.0.0.1:80"), wantErr: "extended CONNECT"},
		{name: "unknown pseudo", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80", ":weird", "x"), wantErr: "unknown pseudo-header"},
		{name: "bad forwarded", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for="10.0.0.1`), wantErr: "header forwarded"},
		{name: "forwarded not an address", fields: hf(":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for=pod-a`), wantErr: "not an address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseRequest(tc.fields)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Target.String() != tc.target {
				t.Errorf("target %s, want %s", r.Target, tc.target)
			}
			if tc.source != "" && r.Source.String() != tc.source {
				t.Errorf("source %s, want %s", r.Source, tc.source)
			}
			if tc.source == "" && r.Source.IsValid() {
				t.Errorf("source %s, want none", r.Source)
			}
			if r.Host != tc.host {
				t.Errorf("host %q, want %q", r.Host, tc.host)
			}
		})
	}
}

// What the client sends, the server reads back.
func TestRequestRoundTrip(t *testing.T) {
	for _, src := range []string{"10.0.0.9:1234", "[fd00::9]:5678"} {
		in := &ConnectRequest{
			Target:      netip.MustParseAddrPort("10.0.0.1:80"),
			Source:      netip.MustParseAddrPort(src),
			Host:        `odd"host`,
			Baggage:     "a=b",
			TraceParent: "00-x-y-01",
		}
		fields, err := requestFields(in)
		if err != nil {
			t.Fatal(err)
		}
		out, err := parseRequest(fields)
		if err != nil {
			t.Fatal(err)
		}
		if out.Target != in.Target || out.Source != in.Source || out.Host != in.Host || out.Baggage != in.Baggage || out.TraceParent != in.TraceParent {
			t.Errorf("round trip: sent %+v, got %+v", in, out)
		}
	}
	if _, err := requestFields(&ConnectRequest{}); err == nil {
		t.Error("request without target accepted")
	}
}

// FuzzParseRequest feeds arbitrary header blocks; the parser must never
// panic, and what it accepts must be a CONNECT to a real ip:port.
func FuzzParseRequest(f *testing.F) {
	f.Add(":method\x00CONNECT\x00:authority\x0010.0.0.1:80")
	f.Add(":method\x00CONNECT\x00:authority\x00[fd00::1]:443\x00forwarded\x00for=\"10.1.1.1:5\";host=a.b")
	f.Add("forwarded\x00for=\"\\\x00:method\x00GET")
	f.Fuzz(func(t *testing.T, s string) {
		parts := strings.Split(s, "\x00")
		r, err := parseRequest(hf(parts...))
		if err != nil {
			return
		}
		if !r.Target.IsValid() || r.Target.Port() == 0 {
			t.Fatalf("accepted invalid target %v", r.Target)
		}
	})
}

// FuzzParseForwarded checks the Forwarded parser against its own writer.
func FuzzParseForwarded(f *testing.F) {
	f.Add(`for="10.0.0.1:80";host=x`, "10.0.0.1:80", "svc.ns")
	f.Add(`for="[::1]:1", for=_x`, "[fd00::1]:9", `we"ird\`)
	f.Fuzz(func(t *testing.T, header, addr, host string) {
		parseForwarded(header) // must not panic
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return
		}
		ap = unmap(ap)
		src, h, err := parseForwarded(formatForwarded(ap, host))
		if err != nil {
			t.Fatalf("own output %q rejected: %v", formatForwarded(ap, host), err)
		}
		if src != ap || h != host {
			t.Fatalf("round trip of (%v,%q) gave (%v,%q)", ap, host, src, h)
		}
	})
}

// TestFormatForwarded: a source without a port is written as the bare
// address (RFC 7239: a v6 address in quoted brackets), not as port 0.
func TestFormatForwarded(t *testing.T) {
	for _, tc := range []struct {
		src, host, want string
	}{
		{"10.0.0.9:1234", "", `for="10.0.0.9:1234"`},
		{"10.0.0.9:0", "", `for=10.0.0.9`},
		{"[fd00::9]:0", "", `for="[fd00::9]"`},
		{"[fd00::9]:5", "a.b", `for="[fd00::9]:5";host=a.b`},
	} {
		if got := formatForwarded(netip.MustParseAddrPort(tc.src), tc.host); got != tc.want {
			t.Errorf("formatForwarded(%s, %q) = %s, want %s", tc.src, tc.host, got, tc.want)
		}
	}
}
