package agent

import (
	"net/netip"
	"testing"
)

func TestPlan(t *testing.T) {
	pods := []PodInfo{
		{UID: "new", Ambient: true, IPs: []string{"10.0.0.1"}},
		{UID: "pending", Ambient: true},
		{UID: "kept", Ambient: true, IPs: []string{"10.0.0.2"}},
		{UID: "leaving", IPs: []string{"10.0.0.3"}},
		{UID: "plain", IPs: []string{"10.0.0.4"}},
	}
	captured := map[string]bool{"kept": true, "leaving": true, "deleted": true}
	got := Plan(pods, func(uid string) bool { return captured[uid] })
	want := map[string]Action{"new": Enrol, "kept": Publish, "leaving": Release, "plain": Clear}
	if len(got) != len(want) {
		t.Fatalf("Plan = %v, want %v", got, want)
	}
	for uid, a := range want {
		if got[uid] != a {
			t.Errorf("Plan[%s] = %v, want %v", uid, got[uid], a)
		}
	}
}

func TestDoomed(t *testing.T) {
	pod := []netip.Addr{netip.MustParseAddr("10.0.0.5")}
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name  string
		s     tcpSocket
		which openConnections
		want  bool
	}{
		{"app to remote", tcpSocket{state: tcpEstablished, remote: ap("10.0.0.9:80")}, appConnections, true},
		{"ztunnel's marked socket at enrolment", tcpSocket{state: tcpEstablished, remote: ap("10.0.0.9:15008"), mark: 0x539}, appConnections, false},
		{"ztunnel's marked socket at release", tcpSocket{state: tcpEstablished, remote: ap("10.0.0.9:15008"), mark: 0x539}, allConnections, true},
		{"loopback", tcpSocket{state: tcpEstablished, remote: ap("127.0.0.1:80")}, allConnections, false},
		{"to itself", tcpSocket{state: tcpEstablished, remote: ap("10.0.0.5:80")}, allConnections, false},
		{"listener", tcpSocket{state: tcpListen}, allConnections, false},
		{"time-wait", tcpSocket{state: tcpTimeWait, remote: ap("10.0.0.9:80")}, allConnections, false},
		{"connecting", tcpSocket{state: 2, remote: ap("10.0.0.9:80")}, appConnections, true},
		{"v6 loopback", tcpSocket{state: tcpEstablished, remote: ap("[::1]:80")}, allConnections, false},
	} {
		if got := doomed(tc.s, pod, tc.which); got != tc.want {
			t.Errorf("%s: doomed = %v, want %v", tc.name, got, tc.want)
		}
	}
}
