package admin

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/zmesh/zmesh/internal/httpserve"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// server is a handler served over loopback by Serve for one test.
type server struct {
	t      *testing.T
	url    string
	client *http.Client
}

func serve(t *testing.T, h http.Handler) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- httpserve.Serve(ctx, ln, h) }()

	tr := &http.Transport{}
	s := &server{t: t, url: "http://" + ln.Addr().String(), client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// do sends a request and returns the status and body.
func (s *server) do(method, path string, body url.Values) (int, string) {
	s.t.Helper()
	var r io.Reader
	if body != nil {
		r = strings.NewReader(body.Encode())
	}
	req, err := http.NewRequest(method, s.url+path, r)
	if err != nil {
		s.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func (s *server) expect(method, path string, body url.Values, code int, contains string) string {
	s.t.Helper()
	got, b := s.do(method, path, body)
	if got != code || !strings.Contains(b, contains) {
		s.t.Errorf("%s %s = %d %q, want %d containing %q", method, path, got, b, code, contains)
	}
	return b
}

func newAdmin(t *testing.T, dump func() any) (*server, *slog.LevelVar) {
	t.Helper()
	var level slog.LevelVar
	h, err := NewAdmin(dump, &level)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, h), &level
}

func TestAdminConfigDump(t *testing.T) {
	type workload struct {
		Name string `json:"name"`
		IP   string `json:"ip"`
	}
	s, _ := newAdmin(t, func() any {
		return map[string]any{"workloads": []workload{{"reviews-v2", "10.0.2.7"}}}
	})
	b := s.expect("GET", "/config_dump", nil, http.StatusOK, "reviews-v2")
	var got struct{ Workloads []workload }
	if err := json.Unmarshal([]byte(b), &got); err != nil {
		t.Fatalf("config dump %q: %v", b, err)
	}
	if len(got.Workloads) != 1 || got.Workloads[0].IP != "10.0.2.7" {
		t.Errorf("config dump = %+v", got)
	}
}

func TestAdminConfigDumpUnencodable(t *testing.T) {
	s, _ := newAdmin(t, func() any { return func() {} })
	s.expect("GET", "/config_dump", nil, http.StatusInternalServerError, "encode config dump")
}

// GET only shows the level: a GET that names one is refused and changes
// nothing; POST and PUT set it.
func TestAdminLogging(t *testing.T) {
	s, level := newAdmin(t, func() any { return nil })

	s.expect("GET", "/logging", nil, http.StatusOK, "level: info")
	s.expect("GET", "/logging?level=debug", nil, http.StatusMethodNotAllowed, "POST or PUT")
	if level.Level() != slog.LevelInfo {
		t.Errorf("a GET changed the level to %v", level.Level())
	}
	s.expect("POST", "/logging", url.Values{"level": {"WARN"}}, http.StatusOK, "level: warn")
	s.expect("PUT", "/logging?level=debug", nil, http.StatusOK, "level: debug")
	s.expect("POST", "/logging?level=error", nil, http.StatusOK, "level: error")
	if level.Level() != slog.LevelError {
		t.Errorf("level = %v after POST ?level=error", level.Level())
	}
	s.expect("GET", "/logging", nil, http.StatusOK, "level: error")

	s.expect("PUT", "/logging?level=verbose", nil, http.StatusBadRequest, `"verbose"`)
	s.expect("POST", "/logging", url.Values{"level": {"info+2"}}, http.StatusBadRequest, `"info+2"`)
	if level.Level() != slog.LevelError {
		t.Errorf("a bad level changed the level to %v", level.Level())
	}
	s.expect("DELETE", "/logging", nil, http.StatusMethodNotAllowed, "")
}

func TestAdminPprof(t *testing.T) {
	s, _ := newAdmin(t, func() any { return nil })
	s.expect("GET", "/debug/pprof/", nil, http.StatusOK, "goroutine")
	s.expect("GET", "/debug/pprof/goroutine?debug=1", nil, http.StatusOK, "goroutine profile")
	s.expect("GET", "/debug/pprof/cmdline", nil, http.StatusOK, "")
}

func TestAdminIndex(t *testing.T) {
	s, _ := newAdmin(t, func() any { return nil })
	b := s.expect("GET", "/", nil, http.StatusOK, "")
	for _, e := range endpoints {
		if !strings.Contains(b, e.path) {
			t.Errorf("index does not list %s:\n%s", e.path, b)
		}
	}
	s.expect("GET", "/nothing-here", nil, http.StatusNotFound, "")
}

func TestNewAdminValidates(t *testing.T) {
	if _, err := NewAdmin(nil, new(slog.LevelVar)); err == nil {
		t.Error("NewAdmin with nil config dump succeeded")
	}
	if _, err := NewAdmin(func() any { return nil }, nil); err == nil {
		t.Error("NewAdmin with nil level succeeded")
	}
}

func TestReadiness(t *testing.T) {
	var r Ready
	s := serve(t, r.Handler())
	s.expect("GET", "/healthz/ready", nil, http.StatusOK, "ready")

	cfg := r.Register("config")
	nodes := r.Register("node-listeners")
	s.expect("GET", "/healthz/ready", nil, http.StatusServiceUnavailable, "pending: config, node-listeners")

	cfg.Done()
	cfg.Done() // idempotent: must not release anything else
	if got := r.Pending(); len(got) != 1 || got[0] != "node-listeners" {
		t.Errorf("Pending = %v, want [node-listeners]", got)
	}
	s.expect("GET", "/healthz/ready", nil, http.StatusServiceUnavailable, "pending: node-listeners")

	nodes.Done()
	s.expect("GET", "/healthz/ready", nil, http.StatusOK, "ready")
	s.expect("POST", "/healthz/ready", nil, http.StatusMethodNotAllowed, "")
}

func TestReadySameNameTwice(t *testing.T) {
	var r Ready
	a, b := r.Register("config"), r.Register("config")
	a.Done()
	if got := r.Pending(); len(got) != 1 {
		t.Errorf("Pending = %v after one of two \"config\" blockers is done", got)
	}
	b.Done()
	if got := r.Pending(); len(got) != 0 {
		t.Errorf("Pending = %v, want none", got)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "istio_tcp_connections_opened_total",
		Help: "The total number of TCP connections opened",
	}, []string{"reporter"})
	reg.MustRegister(c)
	c.WithLabelValues("source").Add(3)

	h, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, h)
	for _, path := range []string{"/metrics", "/stats/prometheus"} {
		s.expect("GET", path, nil, http.StatusOK, `istio_tcp_connections_opened_total{reporter="source"} 3`)
	}
	if _, err := NewMetrics(nil); err == nil {
		t.Error("NewMetrics with nil gatherer succeeded")
	}
}
