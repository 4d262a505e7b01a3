package upstream

import (
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock shared by a balancer and its detector.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// istioOD is outlier detection as Istio compiles a DestinationRule with
// consecutive5xxErrors 5 and maxEjectionPercent 100 (Envoy's defaults for
// the rest: gateway failures detected, not enforced).
func istioOD() OutlierDetection {
	return OutlierDetection{
		Consecutive5xx: 5, EnforcingConsecutive5xx: 100,
		ConsecutiveGatewayFailure: 5, EnforcingGatewayFailure: 0,
		ConsecutiveLocalOriginFailure: 5, EnforcingLocalOriginFailure: 100,
		Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second,
		MaxEjectionPercent: 100,
	}
}

type odFixture struct {
	t   testing.TB
	clk *fakeClock
	b   *Balancer
	d   *Detector
}

func newOD(t testing.TB, od OutlierDetection, hosts int, panic float64) *odFixture {
	t.Helper()
	c := cluster(RoundRobin)
	c.LB.HealthyPanicThreshold = panic
	c.Outlier = &od
	eps := make([]Endpoint, hosts)
	for i := range eps {
		eps[i] = ep(i+1, 1)
	}
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	b := NewBalancer(c, oneLevel(eps...))
	b.now = clk.now
	d := NewDetector(nil, b, DetectorOptions{})
	if d == nil {
		t.Fatal("no detector for a cluster with outlier detection")
	}
	return &odFixture{t: t, clk: clk, b: b, d: d}
}

func (f *odFixture) host(i int) *Host { return &f.b.hosts[i] }

func (f *odFixture) report(i int, o Outcome, n int) {
	for range n {
		f.d.Report(f.host(i), o)
	}
}

func (f *odFixture) ejected(i int) bool { return f.host(i).Ejected(f.clk.now()) }

func (f *odFixture) wantEjected(what string, i int, want bool) {
	f.t.Helper()
	if got := f.ejected(i); got != want {
		f.t.Fatalf("%s: host %d ejected = %v, want %v", what, i, got, want)
	}
}

func TestOutlierConsecutiveCounts(t *testing.T) {
	type step struct {
		o Outcome
		n int
	}
	split := istioOD()
	split.SplitExternalLocalOriginErrors = true
	split.ConsecutiveLocalOriginFailure = 3
	gw := istioOD()
	gw.Consecutive5xx = 0
	gw.ConsecutiveGatewayFailure = 3
	gw.EnforcingGatewayFailure = 100
	for _, tc := range []struct {
		name  string
		od    OutlierDetection
		steps []step
		eject bool
		// typ is the rule that must have fired (when eject).
		typ EjectionType
	}{
		{"five 5xx eject", istioOD(), []step{{500, 5}}, true, Consecutive5xx},
		{"four 5xx do not", istioOD(), []step{{500, 4}}, false, 0},
		{"a success resets the 5xx run", istioOD(), []step{{500, 4}, {200, 1}, {500, 4}}, false, 0},
		{"a 4xx is a success", istioOD(), []step{{503, 4}, {404, 1}, {503, 4}}, false, 0},
		{"mixed 5xx count together", istioOD(), []step{{500, 2}, {503, 2}, {501, 1}}, true, Consecutive5xx},
		{"threshold 0 never fires", func() OutlierDetection { o := istioOD(); o.Consecutive5xx = 0; return o }(), []step{{500, 50}}, false, 0},
		{"gateway errors eject", gw, []step{{502, 1}, {503, 1}, {504, 1}}, true, ConsecutiveGatewayFailure},
		{"a 500 ends the gateway run", gw, []step{{502, 2}, {500, 1}, {503, 2}}, false, 0},
		{"gateway detected but not enforced by default", func() OutlierDetection { o := gw; o.EnforcingGatewayFailure = 0; return o }(), []step{{503, 10}}, false, 0},
		{"no split: connect failures are 503s", istioOD(), []step{{ConnectFailed, 3}, {Reset, 2}}, true, Consecutive5xx},
		{"no split: timeouts are 504s", istioOD(), []step{{TimedOut, 5}}, true, Consecutive5xx},
		{"no split: Connected counts nothing", istioOD(), []step{{500, 4}, {Connected, 1}, {500, 1}}, true, Consecutive5xx},
		{"split: local failures eject", split, []step{{ConnectFailed, 1}, {TimedOut, 1}, {Reset, 1}}, true, ConsecutiveLocalOriginFailure},
		{"split: Connected resets the local run", split, []step{{ConnectFailed, 2}, {Connected, 1}, {ConnectFailed, 2}}, false, 0},
		{"split: local failures are not 5xx", split, []step{{500, 4}, {ConnectFailed, 2}, {500, 0}}, false, 0},
		{"split: statuses do not end the local run", split, []step{{ConnectFailed, 2}, {200, 1}, {ConnectFailed, 1}}, true, ConsecutiveLocalOriginFailure},
		{"split: a 5xx run is still counted", split, []step{{503, 5}}, true, Consecutive5xx},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newOD(t, tc.od, 4, 0)
			for _, s := range tc.steps {
				f.report(0, s.o, s.n)
			}
			f.wantEjected("after the steps", 0, tc.eject)
			st := f.d.Stats()
			want := uint64(0)
			if tc.eject {
				want = 1
			}
			if st.EjectionsEnforcedTotal != want || st.EjectionsActive != want || st.Enforced[tc.typ] != want {
				t.Fatalf("stats %+v, want %d enforced (%v) and active", st, want, tc.typ)
			}
			for i := 1; i < 4; i++ {
				f.wantEjected("bystander", i, false)
			}
		})
	}
}

func TestOutlierDetectedNotEnforced(t *testing.T) {
	f := newOD(t, istioOD(), 4, 0)
	f.report(0, 503, 4) // four gateway errors and four 5xx
	f.report(0, 503, 1) // both rules reach 5; only the 5xx one is enforced
	f.wantEjected("after 5 × 503", 0, true)
	st := f.d.Stats()
	if st.Detected[ConsecutiveGatewayFailure] != 1 || st.Enforced[ConsecutiveGatewayFailure] != 0 ||
		st.Detected[Consecutive5xx] != 1 || st.Enforced[Consecutive5xx] != 1 {
		t.Fatalf("stats %+v: want gateway detected 1 enforced 0, 5xx detected 1 enforced 1", st)
	}
}

func TestOutlierEnforcingPercentage(t *testing.T) {
	od := istioOD()
	od.EnforcingConsecutive5xx = 30
	f := newOD(t, od, 4, 0)
	draw := uint64(30)
	f.d.lin.randN = func(uint64) uint64 { return draw }
	f.report(0, 500, 5)
	f.wantEjected("draw 30 of enforcing 30", 0, false)
	draw = 29
	f.report(0, 500, 5)
	f.wantEjected("draw 29 of enforcing 30", 0, true)
	if st := f.d.Stats(); st.Detected[Consecutive5xx] != 2 || st.Enforced[Consecutive5xx] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestOutlierEjectionTime follows the host's ejection multiplier: it grows
// by one per ejection, is capped by max_ejection_time, drops by one for
// every interval the host spends in service, and the host comes back at
// the first interval tick at or after the ejection's end.
func TestOutlierEjectionTime(t *testing.T) {
	od := istioOD()
	od.Consecutive5xx = 1
	od.BaseEjectionTime = 10 * time.Second
	od.MaxEjectionTime = 35 * time.Second
	od.Interval = 10 * time.Second
	f := newOD(t, od, 1, 0)
	start := f.clk.now()
	at := func(s int) { // set the clock to start + s seconds
		f.clk.mu.Lock()
		f.clk.t = start.Add(time.Duration(s) * time.Second)
		f.clk.mu.Unlock()
	}
	// eject at second s; the host must be out until second back.
	for i, c := range []struct{ s, back int }{
		{0, 10},      // multiplier 1: 10 s
		{10, 30},     // 2: 20 s
		{30, 60},     // 3: 30 s
		{60, 100},    // 4: 40 s capped to 35 s, back at the next tick, 100
		{100, 140},   // 5 (4 × 10 < 35 + 10): still 35 s, back at 140
		{180, 200},   // four ticks in service (150…180): 5 − 4 = 1, +1 = 2: 20 s
		{1000, 1010}, // long in service: 0, +1: 10 s
		{1015, 1040}, // between ticks: 2 × 10 = 20 s from 1015 is 1035, back at tick 1040
	} {
		at(c.s)
		f.report(0, 500, 1)
		if !f.ejected(0) {
			t.Fatalf("ejection %d at %ds: not ejected", i, c.s)
		}
		at(c.back - 1)
		f.wantEjected("a second before it is due back", 0, true)
		at(c.back)
		f.wantEjected("when due back", 0, false)
	}
	if n := f.d.Ejections(f.host(0)); n != 8 {
		t.Fatalf("Ejections = %d, want 8", n)
	}
}

func TestOutlierMaxEjectionPercent(t *testing.T) {
	for _, tc := range []struct {
		name           string
		hosts, percent int
		// ejected is how many of the hosts, all failing, end up ejected.
		ejected int
	}{
		{"10 hosts at 10% eject one", 10, 10, 1},
		{"20 hosts at 10% eject two", 20, 10, 2},
		{"9 hosts at 10% eject none", 9, 10, 0},
		{"3 hosts at 50% eject one", 3, 50, 1},
		{"4 hosts at 50% eject two", 4, 50, 2},
		{"3 hosts at 100% eject all", 3, 100, 3},
		{"percent over 100 is 100", 2, 250, 2},
		{"0% ejects none", 5, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			od := istioOD()
			od.MaxEjectionPercent = uint32(tc.percent)
			f := newOD(t, od, tc.hosts, 0)
			for i := range tc.hosts {
				f.report(i, 500, 5)
			}
			st := f.d.Stats()
			if st.EjectionsActive != uint64(tc.ejected) || st.EjectionsEnforcedTotal != uint64(tc.ejected) {
				t.Fatalf("stats %+v: want %d ejected", st, tc.ejected)
			}
			if st.EjectionsOverflow != uint64(tc.hosts-tc.ejected) {
				t.Fatalf("overflow %d, want %d", st.EjectionsOverflow, tc.hosts-tc.ejected)
			}
		})
	}
}

// TestOutlierPanicUsesEjectedHosts: below the panic threshold (Istio's
// minHealthPercent) ejected hosts take traffic again; without one, every
// host ejected means no pick (503 no healthy upstream).
func TestOutlierPanicUsesEjectedHosts(t *testing.T) {
	for _, tc := range []struct {
		name    string
		panic   float64
		eject   int
		picked  int // distinct hosts picked
		noPicks bool
	}{
		{"above the threshold ejected hosts are out", 50, 2, 2, false},
		{"below it all hosts are used", 50, 3, 4, false},
		{"no threshold: two of four ejected", 0, 2, 2, false},
		{"no threshold: all ejected, nothing to pick", 0, 4, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newOD(t, istioOD(), 4, tc.panic)
			for i := range tc.eject {
				f.report(i, 500, 5)
				f.wantEjected("failing host", i, true)
			}
			seen := map[netip.AddrPort]bool{}
			for i := range 400 {
				h, ok := f.b.Pick(seq(i))
				if !ok {
					if !tc.noPicks {
						t.Fatalf("pick %d failed", i)
					}
					continue
				}
				if tc.noPicks {
					t.Fatalf("pick %d got %v, want none", i, h.Endpoint.Addr)
				}
				seen[h.Endpoint.Addr] = true
			}
			if len(seen) != tc.picked {
				t.Fatalf("picked %d distinct hosts, want %d", len(seen), tc.picked)
			}
		})
	}
}

func TestOutlierRecovery(t *testing.T) {
	od := istioOD()
	od.BaseEjectionTime = 10 * time.Second
	od.Interval = time.Second
	f := newOD(t, od, 2, 0)
	f.report(0, 500, 5)
	f.wantEjected("after 5 × 500", 0, true)
	for i := range 20 {
		if h, _ := f.b.Pick(seq(i)); h == f.host(0) {
			t.Fatal("ejected host picked")
		}
	}
	// Requests in flight when it was ejected keep failing: their count
	// does not carry into the host's return.
	f.report(0, 500, 4)
	f.clk.add(10 * time.Second)
	f.wantEjected("after the ejection time", 0, false)
	seen := false
	for i := range 20 {
		if h, _ := f.b.Pick(seq(i)); h == f.host(0) {
			seen = true
		}
	}
	if !seen {
		t.Fatal("host not picked after it came back")
	}
	f.report(0, 500, 1)
	f.wantEjected("one 5xx after coming back", 0, false)
	f.report(0, 500, 4)
	f.wantEjected("five 5xx after coming back", 0, true)
	if st := f.d.Stats(); st.EjectionsEnforcedTotal != 2 || st.EjectionsActive != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestOutlierCarriesOverSnapshots: a config push keeps ejections, counts
// and statistics of the hosts that remain; a report through the old
// snapshot's host counts in the new one; a removed host's reports are
// ignored.
func TestOutlierCarriesOverSnapshots(t *testing.T) {
	f := newOD(t, istioOD(), 3, 0)
	f.report(0, 500, 5)
	f.report(1, 500, 4)
	old1, old2 := f.host(1), f.host(2)

	c2 := *f.b.cluster
	od2 := istioOD()
	c2.Outlier = &od2
	b2 := f.b.Update(&c2, oneLevel(ep(1, 1), ep(2, 1), ep(4, 1)))
	d2 := NewDetector(f.d, b2, DetectorOptions{})
	h0, _ := b2.Host(ep(1, 1).Addr)
	if !h0.Ejected(f.clk.now()) {
		t.Fatal("ejection lost in the update")
	}
	f.d.Report(old1, 500) // through the old detector and old host: the fifth
	h1, _ := b2.Host(ep(2, 1).Addr)
	if !h1.Ejected(f.clk.now()) {
		t.Fatal("count lost in the update")
	}
	// Host 3 is gone: its reports, through either detector, are ignored.
	for range 5 {
		d2.Report(old2, 500)
		f.d.Report(old2, 500)
	}
	if st := d2.Stats(); st.EjectionsEnforcedTotal != 2 || st.EjectionsActive != 2 {
		t.Fatalf("stats after the update %+v", st)
	}
	if st := f.d.Stats(); st.EjectionsEnforcedTotal != 2 {
		t.Fatalf("old detector reads %+v, want the lineage's", st)
	}

	// Detectors keeps an unchanged cluster's detector, builds one for a
	// changed one and none for a cluster without outlier detection.
	plain := cluster(RoundRobin)
	plain.Name = "plain"
	prev := map[string]*Detector{"c": d2}
	ds := Detectors(prev, map[string]*Balancer{"c": b2, "plain": NewBalancer(plain, oneLevel(ep(9, 1)))}, DetectorOptions{})
	if ds["c"] != d2 || ds["plain"] != nil || len(ds) != 1 {
		t.Fatalf("Detectors = %v", ds)
	}

	// Outlier detection removed: its ejections end.
	c3 := c2
	c3.Outlier = nil
	b3 := b2.Update(&c3, oneLevel(ep(1, 1), ep(2, 1), ep(4, 1)))
	if d := NewDetector(d2, b3, DetectorOptions{}); d != nil {
		t.Fatal("detector without outlier detection")
	}
	if h, _ := b3.Host(ep(1, 1).Addr); h.Ejected(f.clk.now()) {
		t.Fatal("host still ejected after outlier detection was removed")
	}
}

func TestOutlierNilDetector(t *testing.T) {
	var d *Detector
	d.Report(nil, 500)
	if s := d.Stats(); s != (OutlierStats{}) {
		t.Fatal(s)
	}
	if NewDetector(nil, NewBalancer(cluster(RoundRobin), oneLevel(ep(1, 1))), DetectorOptions{}) != nil {
		t.Fatal("detector for a cluster without outlier detection")
	}
}

func TestOutlierStatsNames(t *testing.T) {
	f := newOD(t, istioOD(), 2, 0)
	f.report(0, 500, 5)
	got := map[string]uint64{}
	f.d.Stats().Each(func(name string, v uint64, _ bool) { got[name] = v })
	for name, want := range map[string]uint64{
		"outlier_detection.ejections_active":                                    1,
		"outlier_detection.ejections_enforced_total":                            1,
		"outlier_detection.ejections_overflow":                                  0,
		"outlier_detection.ejections_enforced_consecutive_5xx":                  1,
		"outlier_detection.ejections_detected_consecutive_5xx":                  1,
		"outlier_detection.ejections_enforced_consecutive_gateway_failure":      0,
		"outlier_detection.ejections_detected_consecutive_local_origin_failure": 0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %d (present %v), want %d", name, v, ok, want)
		}
	}
}

func TestOutlierConcurrent(t *testing.T) {
	f := newOD(t, istioOD(), 8, 0)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				// Host 0 always fails; the others mostly succeed.
				f.d.Report(f.host(0), 503)
				code := Outcome(200)
				if i%7 == 0 {
					code = 500
				}
				f.d.Report(f.host(1+g%7), code)
				if h, ok := f.b.Pick(seq(i)); ok {
					h.Begin()
					h.End()
				}
				_ = f.d.Stats()
			}
		}()
	}
	wg.Wait()
	st := f.d.Stats()
	// The clock does not move: host 0 is ejected once and stays out.
	if st.Enforced[Consecutive5xx] != 1 || st.EjectionsActive != 1 || !f.ejected(0) {
		t.Fatalf("stats %+v", st)
	}
}

func TestReportAllocationFree(t *testing.T) {
	f := newOD(t, istioOD(), 4, 0)
	n := testing.AllocsPerRun(1000, func() {
		f.d.Report(f.host(1), 200)
		f.d.Report(f.host(2), 500)
		f.d.Report(f.host(3), Connected)
	})
	if n != 0 {
		t.Fatalf("Report allocates %v times", n)
	}
}

func BenchmarkReport(b *testing.B) {
	f := newOD(b, istioOD(), 16, 0)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			f.d.Report(f.host(i%16), 200)
		}
	})
}

func TestGRPCStatus(t *testing.T) {
	for grpc, http := range map[int]Outcome{0: 200, 1: 499, 2: 500, 4: 504, 8: 429, 12: 501, 13: 500, 14: 503, 16: 401, 99: 500} {
		if got := GRPCStatus(grpc); got != http {
			t.Errorf("GRPCStatus(%d) = %d, want %d", grpc, got, http)
		}
	}
}

// TestOutlierStartsNoGoroutine: detectors are replaced with every
// snapshot, so they must hold nothing that needs stopping.
func TestOutlierStartsNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	f := newOD(t, istioOD(), 4, 0)
	d := f.d
	for range 100 {
		b := f.b.Update(f.b.cluster, f.b.assignment)
		d = NewDetector(d, b, DetectorOptions{})
		d.Report(&b.hosts[0], 500)
	}
	// A detector that started one goroutine would leave 100; goroutines of
	// earlier tests in this package may still be ending or winding down, so
	// the count is held to a small margin instead of to equality.
	if after := runtime.NumGoroutine(); after > before+5 {
		t.Fatalf("%d goroutines before, %d after 100 snapshots", before, after)
	}
	if !d.b.hosts[0].Ejected(f.clk.now()) {
		t.Fatal("host 0 not ejected after 100 failures over 100 snapshots")
	}
}

// TestOutlierIstioScenario is the DestinationRule users copy from Istio's
// docs (consecutive5xxErrors 3, interval 1s, baseEjectionTime 10s,
// maxEjectionPercent 100, no minHealthPercent) against two endpoints that
// both answer 503: both are ejected, picks fail (503 no healthy upstream),
// and both come back at the first interval tick after ten seconds.
func TestOutlierIstioScenario(t *testing.T) {
	od := istioOD()
	od.Consecutive5xx = 3
	od.Interval = time.Second
	od.BaseEjectionTime = 10 * time.Second
	f := newOD(t, od, 2, 0)
	f.clk.add(300 * time.Millisecond)
	for i := range 6 {
		h, ok := f.b.Pick(seq(i))
		if !ok {
			t.Fatalf("request %d: no endpoint before any ejection", i)
		}
		f.d.Report(h, Connected)
		f.d.Report(h, Status(503))
	}
	if _, ok := f.b.Pick(seq(7)); ok {
		t.Fatal("an endpoint picked with both ejected")
	}
	if st := f.d.Stats(); st.EjectionsActive != 2 || st.EjectionsEnforcedTotal != 2 {
		t.Fatalf("stats %+v", st)
	}
	f.clk.add(10 * time.Second) // 10.3 s: the ejections end at the tick of 11 s
	if _, ok := f.b.Pick(seq(8)); ok {
		t.Fatal("an endpoint back before the interval tick")
	}
	f.clk.add(700 * time.Millisecond)
	if _, ok := f.b.Pick(seq(9)); !ok {
		t.Fatal("no endpoint back after the ejection time")
	}
	if st := f.d.Stats(); st.EjectionsActive != 0 || st.EjectionsEnforcedTotal != 2 {
		t.Fatalf("stats after recovery %+v", st)
	}
}
