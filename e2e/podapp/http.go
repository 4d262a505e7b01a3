package podapp

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/websocket"
)

// Echo is the JSON the HTTP server answers with: echo-basic's
// RequestAssertions (path, host, method, proto, headers and the context
// fields namespace, ingress, service, pod) plus the pod's version label and
// the address the request came from.
type Echo struct {
	Path    string              `json:"path"`
	Host    string              `json:"host"`
	Method  string              `json:"method"`
	Proto   string              `json:"proto"`
	Headers map[string][]string `json:"headers"`

	Namespace string `json:"namespace"`
	Ingress   string `json:"ingress"`
	Service   string `json:"service"`
	Pod       string `json:"pod"`

	Version string `json:"version"`
	From    string `json:"from"`
}

// ParseEcho decodes an HTTP echo body.
func ParseEcho(body []byte) (Echo, error) {
	var e Echo
	if err := json.Unmarshal(body, &e); err != nil {
		return Echo{}, fmt.Errorf("decode echo: %w", err)
	}
	return e, nil
}

// maxDelay bounds ?delay=, so a request cannot hold a handler for long.
const maxDelay = 5 * time.Minute

// handler is the HTTP handler of every HTTP port; conns tracks connections
// taken over by an h2c upgrade.
func (a *App) handler(ctx context.Context, conns *connSet) http.Handler {
	var h http.HandlerFunc
	h = func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc"):
			a.grpc.ServeHTTP(w, r)
		case r.ProtoMajor == 1 && isH2CUpgrade(r):
			a.upgradeH2C(ctx, w, r, h, conns)
		case r.URL.Path == "/health":
			w.Write([]byte("OK"))
		case r.URL.Path == "/ws":
			// WebSocket echo, as echo-basic's /ws: a proxy must pass the
			// HTTP/1.1 Upgrade through. No Origin check: clients are tests.
			websocket.Server{Handler: func(ws *websocket.Conn) { io.Copy(ws, ws) }}.ServeHTTP(w, r)
		case a.pod.IstioFormat:
			a.serveIstioHTTP(w, r)
		default:
			a.serveHTTP(w, r)
		}
	}
	return h
}

// serveHTTP answers /status/NNN with that status and anything else with the
// Echo, after ?delay= (a Go duration) when given.
func (a *App) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if d := r.URL.Query().Get("delay"); d != "" {
		delay, err := time.ParseDuration(d)
		if err == nil && (delay < 0 || delay > maxDelay) {
			err = fmt.Errorf("want 0 to %s", maxDelay)
		}
		if err != nil {
			writeError(w, fmt.Errorf("delay %q: %w", d, err), http.StatusInternalServerError)
			return
		}
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
	}
	setEchoHeaders(w, r.Header)
	if code, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
		n, err := strconv.Atoi(code)
		if err != nil || len(code) != 3 || n < 100 || n > 599 {
			n = http.StatusBadRequest
		}
		w.WriteHeader(n)
		return
	}
	js, err := json.MarshalIndent(Echo{
		Path:      r.RequestURI,
		Host:      r.Host,
		Method:    r.Method,
		Proto:     r.Proto,
		Headers:   r.Header,
		Namespace: a.pod.Namespace,
		Service:   a.pod.Service,
		Pod:       a.pod.Name,
		Version:   a.pod.Version(),
		From:      r.RemoteAddr,
	}, "", " ")
	if err != nil {
		writeError(w, err, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Write(js)
}

// setEchoHeaders sets the response headers X-Echo-Set-Header asks for: a
// comma-separated list of "Name: value", the name's casing kept, a repeated
// name's values joined with commas.
func setEchoHeaders(w http.ResponseWriter, req http.Header) {
	for _, list := range req.Values("X-Echo-Set-Header") {
		for _, kv := range strings.Split(list, ",") {
			name, value, _ := strings.Cut(strings.TrimSpace(kv), ":")
			name, value = strings.TrimSpace(name), strings.TrimSpace(value)
			if name == "" {
				continue
			}
			if old := w.Header()[name]; len(old) > 0 {
				old[0] += "," + value
			} else {
				w.Header()[name] = []string{value}
			}
		}
	}
}

func writeError(w http.ResponseWriter, err error, code int) {
	body, _ := json.Marshal(struct {
		Message string `json:"message"`
	}{err.Error()})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(body)
}

// isH2CUpgrade reports an HTTP/1.1 request asking to continue as HTTP/2
// (RFC 7540 section 3.2). Requests with a body keep HTTP/1.1: the body
// would have to be read before switching.
func isH2CUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "h2c") &&
		len(r.Header.Values("HTTP2-Settings")) == 1 &&
		r.ContentLength == 0 &&
		headerHasToken(r.Header, "Connection", "upgrade") &&
		headerHasToken(r.Header, "Connection", "http2-settings")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// upgradeH2C answers 101 and serves the connection as HTTP/2, the upgrading
// request becoming stream 1.
func (a *App) upgradeH2C(ctx context.Context, w http.ResponseWriter, r *http.Request, h http.Handler, conns *connSet) {
	settings, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(r.Header.Get("HTTP2-Settings"), "="))
	if err != nil {
		writeError(w, fmt.Errorf("HTTP2-Settings: %w", err), http.StatusBadRequest)
		return
	}
	c, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, fmt.Errorf("h2c upgrade: %w: %w", errNoHijack, err), http.StatusInternalServerError)
		return
	}
	if !conns.add(c) {
		return
	}
	defer conns.remove(c)
	if _, err := rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"); err != nil {
		c.Close()
		return
	}
	if err := rw.Flush(); err != nil {
		c.Close()
		return
	}
	up := r.Clone(ctx)
	up.Proto, up.ProtoMajor, up.ProtoMinor = "HTTP/2.0", 2, 0
	for _, hop := range []string{"Connection", "Upgrade", "HTTP2-Settings"} {
		up.Header.Del(hop)
	}
	up.Body = http.NoBody
	a.h2.ServeConn(&peekedConn{Conn: c, r: rw.Reader}, &http2.ServeConnOpts{
		Context:        ctx,
		Handler:        h,
		UpgradeRequest: up,
		Settings:       settings,
	})
}
