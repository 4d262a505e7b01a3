package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/zmesh/zmesh/cni/cniapi"
)

// Enroller does what the plugin asks; Node is the real one.
type Enroller interface {
	Add(ctx context.Context, p *cniapi.Pod) (captured bool, err error)
	Del(ctx context.Context, p *cniapi.Pod) error
	Check(ctx context.Context, p *cniapi.Pod) error
}

// CNIServer answers the zmesh-cni plugin on a unix socket.
type CNIServer struct {
	srv *http.Server
	ln  net.Listener
	log *slog.Logger
}

// NewCNIServer listens on path (replacing a stale socket), readable by root
// only: whoever can talk to it can change pods' networking.
func NewCNIServer(path string, e Enroller, log *slog.Logger) (*CNIServer, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("cni server: listen %s: %w", path, err)
	}
	mux := http.NewServeMux()
	s := &CNIServer{ln: ln, log: log, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	mux.HandleFunc("POST "+cniapi.PathAdd, s.handle(func(ctx context.Context, p *cniapi.Pod) (any, error) {
		captured, err := e.Add(ctx, p)
		return &cniapi.AddResponse{Captured: captured}, err
	}))
	mux.HandleFunc("POST "+cniapi.PathDel, s.handle(func(ctx context.Context, p *cniapi.Pod) (any, error) {
		return struct{}{}, e.Del(ctx, p)
	}))
	mux.HandleFunc("POST "+cniapi.PathCheck, s.handle(func(ctx context.Context, p *cniapi.Pod) (any, error) {
		return struct{}{}, e.Check(ctx, p)
	}))
	return s, nil
}

// listenPrivate binds a unix stream socket at path with mode 0600 whatever
// the umask: it is bound in a private directory, made 0600 there and then
// renamed into place (replacing a stale socket), so it is never reachable
// with a wider mode. Closing the listener leaves the file; the next agent
// replaces it.
func listenPrivate(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".cni-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Run serves until ctx ends.
func (s *CNIServer) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.srv.Shutdown(sctx)
		<-errc
		return nil
	}
}

func (s *CNIServer) handle(do func(context.Context, *cniapi.Pod) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := decodePod(r.Body)
		if err == nil {
			var resp any
			resp, err = do(r.Context(), p)
			if err == nil {
				writeJSON(w, http.StatusOK, resp)
				return
			}
			s.log.Warn("cni request failed", "path", r.URL.Path, "pod", p.Namespace+"/"+p.Name, "reason", err.Error())
		}
		writeJSON(w, http.StatusInternalServerError, cniapi.ErrorResponse{Error: err.Error()})
	}
}

// decodePod reads a plugin request: untrusted in the sense that a broken
// plugin must not take the agent down.
func decodePod(r io.Reader) (*cniapi.Pod, error) {
	var p cniapi.Pod
	dec := json.NewDecoder(io.LimitReader(r, 64<<10))
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("decode request: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
