package push

import (
	"context"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"

	"github.com/zmesh/zmesh/controlplane/model"
	"github.com/zmesh/zmesh/controlplane/model/modeltest"
	"github.com/zmesh/zmesh/controlplane/translate"
	"github.com/zmesh/zmesh/controlplane/xds"
)

// The scale: 10 000 pods in 2 000 services across 100 namespaces.
func bigMesh() *model.Snapshot { return modeltest.Mesh(100, 20, 5) }

// BenchmarkFullPush is a cold start: translate everything and hand it to a
// fresh xDS server. It reports the heap the server then holds.
func BenchmarkFullPush(b *testing.B) {
	snap := bigMesh()
	opts := translate.Options{Mesh: model.DefaultMesh()}
	b.ReportAllocs()
	var s *xds.Server
	for b.Loop() {
		s = xds.New(nil, nil, xds.TypeAddress, xds.TypeAuthorization)
		out := translate.Translate(opts, snap)
		if _, _, err := s.Set(xds.TypeAddress, asMessages(out.Addresses)); err != nil {
			b.Fatal(err)
		}
		if _, _, err := s.Set(xds.TypeAuthorization, asMessages(out.Authorizations)); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	b.ReportMetric(float64(m.HeapInuse)/(1<<20), "heap-MiB")
	runtime.KeepAlive(s)
}

// client is a delta ADS subscriber that acks everything and reports when a
// response names a resource.
type client struct {
	got chan string
}

func subscribe(b *testing.B, ctx context.Context, cc *grpc.ClientConn, id string) *client {
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, t := range []string{xds.TypeAuthorization, xds.TypeAddress} {
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: id}, TypeUrl: t}); err != nil {
			b.Fatal(err)
		}
	}
	c := &client{got: make(chan string, 1024)}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
			for _, res := range r.Resources {
				select {
				case c.got <- res.Name:
				default: // the initial flood: nobody waits for it
				}
			}
		}
	}()
	return c
}

// BenchmarkPodChangeToProxies: one pod turns NotReady (or Ready again) and
// the pipeline (debounce, translation, diff) pushes it to 50 connected
// proxies; each op is one change, timed until the last proxy received it.
// It reports the median and p99 of that time and how many resources a
// change sent.
func BenchmarkPodChangeToProxies(b *testing.B) {
	const proxies = 50
	snap := bigMesh()
	srv := xds.New(nil, nil, xds.TypeAddress, xds.TypeAuthorization)
	p := &Pipeline{XDS: srv, Options: translate.Options{Mesh: model.DefaultMesh()}}
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	go p.Run(ctx)
	p.Update(snap)
	for !p.Pushed() {
		time.Sleep(10 * time.Millisecond)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go g.Serve(ln)
	defer g.Stop()
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	var clients []*client
	for i := range proxies {
		clients = append(clients, subscribe(b, ctx, cc, "ztunnel~node-"+string(rune('a'+i%26))+string(rune('0'+i/26))))
	}
	// Wait until every proxy has the full state (all acked).
	for {
		synced := 0
		for _, ps := range srv.Syncz() {
			if len(ps.Types) == 2 && ps.Types[0].State == "SYNCED" && ps.Types[1].State == "SYNCED" {
				synced++
			}
		}
		if synced == proxies {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range clients {
	drain:
		for {
			select {
			case <-c.got:
			default:
				break drain
			}
		}
	}

	pod := snap.Pods[len(snap.Pods)/2]
	want := translate.PodUID("Kubernetes", pod.Namespace, pod.Name)
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		next := *snap
		next.Pods = slices.Clone(snap.Pods)
		changed := pod.DeepCopy()
		if i%2 == 0 {
			changed.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
		}
		next.Pods[len(snap.Pods)/2] = changed
		start := time.Now()
		p.Update(&next)
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Go(func() {
				for name := range c.got {
					if name == want {
						return
					}
				}
			})
		}
		wg.Wait()
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
