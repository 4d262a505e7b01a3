package upstream

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func limitedCluster(l Limits) *Cluster {
	c := cluster(RoundRobin)
	c.Limits = l
	c.HTTP = HTTPOptions{IdleTimeout: 90 * time.Second, MaxRequestsPerConnection: 3}
	c.ConnectTimeout = 2 * time.Second
	return c
}

// breakers lists each circuit breaker with how to take and free it, its
// limit field, and the overflow counter(s) it must move.
var breakers = []struct {
	name     string
	try      func(*Admission) bool
	done     func(*Admission)
	limit    func(*Limits) *uint32
	overflow func(AdmissionStats) []uint64
}{
	{"connections", (*Admission).TryConnection, (*Admission).ConnectionDone,
		func(l *Limits) *uint32 { return &l.MaxConnections },
		func(s AdmissionStats) []uint64 { return []uint64{s.CxOverflow} }},
	{"pending", (*Admission).TryPending, (*Admission).PendingDone,
		func(l *Limits) *uint32 { return &l.MaxPendingRequests },
		func(s AdmissionStats) []uint64 { return []uint64{s.RqPendingOverflow} }},
	{"requests", (*Admission).TryRequest, (*Admission).RequestDone,
		func(l *Limits) *uint32 { return &l.MaxRequests },
		func(s AdmissionStats) []uint64 { return []uint64{s.RqPendingOverflow, s.RqActiveOverflow} }},
	{"retries", (*Admission).TryRetry, (*Admission).RetryDone,
		func(l *Limits) *uint32 { return &l.MaxRetries },
		func(s AdmissionStats) []uint64 { return []uint64{s.RqRetryOverflow} }},
}

func bigLimits() Limits {
	return Limits{MaxConnections: 1000, MaxPendingRequests: 1000, MaxRequests: 1000, MaxRetries: 1000}
}

func sum(v []uint64) (s uint64) {
	for _, x := range v {
		s += x
	}
	return s
}

func TestAdmissionLimits(t *testing.T) {
	for _, br := range breakers {
		for _, n := range []uint32{0, 1, 3} {
			t.Run(br.name, func(t *testing.T) {
				l := bigLimits()
				*br.limit(&l) = n
				a := NewAdmission(nil, limitedCluster(l))
				for i := range n {
					if !br.try(a) {
						t.Fatalf("limit %d: admission %d refused", n, i+1)
					}
				}
				if br.try(a) {
					t.Fatalf("limit %d: admission %d granted", n, n+1)
				}
				st := a.Stats()
				for _, o := range br.overflow(st) {
					if o != 1 {
						t.Fatalf("limit %d: overflow counters %v, want 1 each", n, br.overflow(st))
					}
				}
				// Only this breaker's counters moved.
				all := st.CxOverflow + st.RqPendingOverflow + st.RqRetryOverflow
				if all != 1 {
					t.Fatalf("overflows %+v, want this breaker's only", st)
				}
				if n == 0 {
					return
				}
				br.done(a)
				if !br.try(a) {
					t.Fatal("refused after a release")
				}
				if br.try(a) {
					t.Fatal("granted past the limit after a release")
				}
				for range n {
					br.done(a)
				}
				if s := a.Stats(); s.Connections+s.Pending+s.Requests+s.Retries != 0 {
					t.Fatalf("held after every release: %+v", s)
				}
			})
		}
	}
}

// TestAdmissionConcurrentExact: with N slots and many goroutines taking
// one each at once, exactly N are admitted and the rest overflow; under
// churn no more than N are ever held.
func TestAdmissionConcurrentExact(t *testing.T) {
	const n, g = 5, 64
	for _, br := range breakers {
		t.Run(br.name, func(t *testing.T) {
			l := bigLimits()
			*br.limit(&l) = n
			a := NewAdmission(nil, limitedCluster(l))
			var wg sync.WaitGroup
			// Many rounds: a check-then-take that is not one atomic step
			// lets two goroutines through for one slot only when they
			// interleave just there.
			for round := range 100 {
				var admitted atomic.Int64
				start := make(chan struct{})
				for range g {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						if br.try(a) {
							admitted.Add(1)
						}
					}()
				}
				close(start)
				wg.Wait()
				if admitted.Load() != n || sum(br.overflow(a.Stats()))/uint64(len(br.overflow(a.Stats()))) != uint64(round+1)*(g-n) {
					t.Fatalf("round %d: admitted %d (want %d), overflow %v (want %d)", round, admitted.Load(), n, br.overflow(a.Stats()), uint64(round+1)*(g-n))
				}
				for range n {
					br.done(a)
				}
			}

			var held, peak atomic.Int64
			for range g {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 2000 {
						if !br.try(a) {
							continue
						}
						h := held.Add(1)
						for {
							p := peak.Load()
							if h <= p || peak.CompareAndSwap(p, h) {
								break
							}
						}
						held.Add(-1)
						br.done(a)
					}
				}()
			}
			wg.Wait()
			if peak.Load() > n {
				t.Fatalf("%d held at once, limit %d", peak.Load(), n)
			}
			// A lost update (a take or a release overwritten by another)
			// would leave the count off once everything is released.
			if s := a.Stats(); s.Connections+s.Pending+s.Requests+s.Retries != 0 {
				t.Fatalf("held after every release: %+v", s)
			}
		})
	}
}

func TestAdmissionStrayReleaseIgnored(t *testing.T) {
	for _, br := range breakers {
		l := bigLimits()
		*br.limit(&l) = 1
		a := NewAdmission(nil, limitedCluster(l))
		br.done(a) // never taken
		if !br.try(a) {
			t.Fatalf("%s: a stray release closed the breaker", br.name)
		}
		if br.try(a) {
			t.Fatalf("%s: a stray release made room for a second holder", br.name)
		}
	}
}

func TestAdmissionCarriesOver(t *testing.T) {
	l := bigLimits()
	a := NewAdmission(nil, limitedCluster(l))
	for range 4 {
		a.TryRequest()
	}
	l.MaxRequests = 4
	a2 := Admissions(map[string]*Admission{"c": a}, map[string]*Cluster{"c": limitedCluster(l)})["c"]
	if a2.TryRequest() {
		t.Fatal("requests in flight before the push not counted against the new limit")
	}
	a.RequestDone() // a request of the old snapshot ends
	if !a2.TryRequest() {
		t.Fatal("a slot freed through the old admission is not free in the new one")
	}
	if a2.Stats().RqPendingOverflow != 1 || a.Stats().RqPendingOverflow != 1 {
		t.Fatal("overflow counter not shared across the push")
	}
}

func TestAdmissionPoolSettings(t *testing.T) {
	a := NewAdmission(nil, limitedCluster(bigLimits()))
	if a.ConnectTimeout() != 2*time.Second || a.IdleTimeout() != 90*time.Second || a.MaxRequestsPerConnection() != 3 {
		t.Fatalf("settings %v %v %v", a.ConnectTimeout(), a.IdleTimeout(), a.MaxRequestsPerConnection())
	}
	for n, want := range map[uint64]bool{1: false, 2: false, 3: true, 4: true} {
		if a.LastOnConnection(n) != want {
			t.Errorf("LastOnConnection(%d) = %v, want %v", n, !want, want)
		}
	}
	c := limitedCluster(bigLimits())
	c.HTTP.MaxRequestsPerConnection = 0
	c.ConnectTimeout = 0
	a = NewAdmission(nil, c)
	if a.LastOnConnection(1_000_000) {
		t.Error("0 requests per connection must mean no limit")
	}
	if a.ConnectTimeout() != DefaultConnectTimeout {
		t.Errorf("connect timeout %v, want Envoy's default", a.ConnectTimeout())
	}
}

func TestAdmissionStatsNames(t *testing.T) {
	l := Limits{MaxConnections: 2, MaxPendingRequests: 1, MaxRequests: 1, MaxRetries: 3}
	a := NewAdmission(nil, limitedCluster(l))
	a.TryConnection()
	a.TryPending()
	a.TryPending()
	a.TryRequest()
	got := map[string]uint64{}
	a.Stats().Each(func(name string, v uint64, _ bool) { got[name] = v })
	for name, want := range map[string]uint64{
		"upstream_cx_overflow":                       0,
		"upstream_rq_pending_overflow":               1,
		"upstream_rq_active_overflow":                0,
		"upstream_rq_retry_overflow":                 0,
		"circuit_breakers.default.remaining_cx":      1,
		"circuit_breakers.default.remaining_pending": 0,
		"circuit_breakers.default.remaining_rq":      0,
		"circuit_breakers.default.remaining_retries": 3,
		"circuit_breakers.default.cx_open":           0,
		"circuit_breakers.default.rq_pending_open":   1,
		"circuit_breakers.default.rq_open":           1,
		"circuit_breakers.default.rq_retry_open":     0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %d (present %v), want %d", name, v, ok, want)
		}
	}
}

func TestAdmissionAllocationFree(t *testing.T) {
	a := NewAdmission(nil, limitedCluster(Limits{MaxConnections: 1, MaxPendingRequests: 1, MaxRequests: 1, MaxRetries: 1}))
	n := testing.AllocsPerRun(1000, func() {
		for _, br := range breakers {
			br.try(a)
			br.try(a) // overflow
			br.done(a)
		}
	})
	if n != 0 {
		t.Fatalf("admission allocates %v times", n)
	}
}

// BenchmarkAdmission measures TryRequest and RequestDone from all
// processors on one cluster, the contended case.
func BenchmarkAdmission(b *testing.B) {
	a := NewAdmission(nil, limitedCluster(Limits{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1 << 30, MaxRetries: 3}))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if a.TryRequest() {
				a.RequestDone()
			}
		}
	})
}

// BenchmarkAdmissionAtLimit measures the refusal path: every slot taken.
func BenchmarkAdmissionAtLimit(b *testing.B) {
	a := NewAdmission(nil, limitedCluster(Limits{MaxRequests: 0}))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if a.TryRequest() {
				b.Fatal("admitted past a limit of 0")
			}
		}
	})
}

// TestAdmissionNoLostUpdates hammers a breaker of one slot from several
// goroutines on more threads than processors, so that the scheduler cuts
// into takes: two goroutines taking the one slot (a take that is not one
// atomic step) would both hold it.
func TestAdmissionNoLostUpdates(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	const g = 8
	for _, br := range breakers {
		l := bigLimits()
		*br.limit(&l) = 1
		a := NewAdmission(nil, limitedCluster(l))
		var held, over atomic.Int64
		var wg sync.WaitGroup
		for range g {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 1_000_000 {
					if !br.try(a) {
						continue
					}
					if held.Add(1) > 1 {
						over.Add(1)
					}
					held.Add(-1)
					br.done(a)
				}
			}()
		}
		wg.Wait()
		if over.Load() != 0 {
			t.Fatalf("%s: the one slot held twice, %d times", br.name, over.Load())
		}
		if s := a.Stats(); s.Connections+s.Pending+s.Requests+s.Retries != 0 {
			t.Fatalf("%s: held after every release: %+v", br.name, s)
		}
	}
}

// TestAdmissionReleased: a pending request waiting on Released is woken
// when a connection or a request slot is given back; TakeConnection does
// not count the refusals of a request asking again.
func TestAdmissionReleased(t *testing.T) {
	a := NewAdmission(nil, &Cluster{Limits: Limits{MaxConnections: 1, MaxPendingRequests: 1, MaxRequests: 1, MaxRetries: 1}})
	if !a.TryConnection() || !a.TryRequest() {
		t.Fatal("first connection and request refused")
	}
	if a.TakeConnection() {
		t.Fatal("a second connection over max_connections 1")
	}
	if s := a.Stats(); s.CxOverflow != 0 {
		t.Errorf("TakeConnection counted %d overflows", s.CxOverflow)
	}
	if !a.TryPending() {
		t.Fatal("pending refused")
	}
	for _, release := range []func(){a.RequestDone, a.ConnectionDone} {
		ch := a.Released()
		select {
		case <-ch:
			t.Fatal("released before anything was given back")
		default:
		}
		release()
		select {
		case <-ch:
		default:
			t.Fatal("a pending request was not woken")
		}
	}
	if !a.TakeConnection() {
		t.Error("the released connection slot was not free")
	}
	a.PendingDone()
}
