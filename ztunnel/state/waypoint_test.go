package state_test

import (
	"testing"

	"github.com/zmesh/zmesh/ztunnel/state"
)

// TestWaypointsOf is which ports of a workload a service's waypoint
// holds: the target port as the workload resolves it (its own override,
// else the service's target port, else the service port), an override for
// a port the service does not list, not the service port itself when it
// maps elsewhere, nothing for a headless service, an unbound one, a
// service the state lacks, or an exempt pod; a workload's own waypoint
// holds every port.
func TestWaypointsOf(t *testing.T) {
	u, err := state.ParseLocalConfig([]byte(`
workloads:
  - {uid: wp, namespace: ns, serviceAccount: wp, addresses: [10.0.9.1], tunnelProtocol: HBONE, services: {ns/wp: {}}}
  - {uid: pod, namespace: ns, addresses: [10.0.0.1], tunnelProtocol: HBONE,
     services: {ns/mapped: {}, ns/same: {}, ns/own: {ports: [{servicePort: 80, targetPort: 9000}, {servicePort: 81, targetPort: 9100}]},
                ns/headless: {}, ns/unbound: {}, ns/absent: {ports: [{servicePort: 70, targetPort: 7000}]}}}
  - {uid: exempt, namespace: ns, addresses: [10.0.0.2], tunnelProtocol: HBONE, waypointExempt: true, services: {ns/same: {}}}
  - {uid: bound, namespace: ns, addresses: [10.0.0.3], tunnelProtocol: HBONE, waypoint: {address: 10.96.9.1}}
services:
  - {namespace: ns, hostname: wp, addresses: [10.96.9.1], ports: [{servicePort: 15008}]}
  - {namespace: ns, hostname: mapped, addresses: [10.96.0.1], ports: [{servicePort: 80, targetPort: 8080}], waypoint: {address: 10.96.9.1}}
  - {namespace: ns, hostname: same, addresses: [10.96.0.2], ports: [{servicePort: 6000}], waypoint: {address: 10.96.9.1}}
  - {namespace: ns, hostname: own, addresses: [10.96.0.3], ports: [{servicePort: 80, targetPort: 8080}], waypoint: {address: 10.96.9.1}}
  - {namespace: ns, hostname: headless, ports: [{servicePort: 5432}], waypoint: {address: 10.96.9.1}}
  - {namespace: ns, hostname: unbound, addresses: [10.96.0.5], ports: [{servicePort: 4000}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := state.NewStore()
	if err := s.Replace(u); err != nil {
		t.Fatal(err)
	}
	snap := s.Snapshot()
	for _, tt := range []struct {
		uid  string
		port uint16
		held bool
	}{
		{"pod", 8080, true},  // mapped's target port
		{"pod", 80, false},   // the service port maps elsewhere (and own overrides it)
		{"pod", 6000, true},  // same: no target port, the service port
		{"pod", 9000, true},  // own: the workload's override wins...
		{"pod", 9100, true},  // ...also for a port the service does not list
		{"pod", 5432, false}, // headless
		{"pod", 4000, false}, // unbound
		{"pod", 7000, false}, // absent from the state
		{"pod", 1234, false}, // no service's
		{"exempt", 6000, false},
		{"bound", 1234, true},
	} {
		gws := snap.WaypointsOf(snap.Workload(tt.uid), tt.port)
		if held := len(gws) > 0; held != tt.held {
			t.Errorf("%s port %d: held=%v (%v), want %v", tt.uid, tt.port, held, gws, tt.held)
		}
	}
}
