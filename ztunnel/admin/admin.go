package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
)

// endpoints is what the admin server's index lists.
var endpoints = []struct{ path, help string }{
	{"/config_dump", "the proxy's current configuration, as JSON"},
	{"/debug/pprof/", "Go runtime profiles (net/http/pprof)"},
	{"/logging", "GET shows the log level; POST or PUT with level=debug|info|warn|error sets it"},
}

// NewAdmin returns the handler of the admin server. configDump is called
// for each /config_dump request and its result encoded as JSON; /logging
// reads and sets level.
//
// The admin server changes the process's behaviour and exposes its
// configuration; the caller binds it to localhost only.
func NewAdmin(configDump func() any, level *slog.LevelVar) (http.Handler, error) {
	if configDump == nil {
		return nil, errors.New("new admin handler: nil config dump")
	}
	if level == nil {
		return nil, errors.New("new admin handler: nil log level")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", index)
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		serveConfigDump(w, configDump())
	})
	mux.HandleFunc("/logging", func(w http.ResponseWriter, r *http.Request) {
		serveLogging(w, r, level)
	})

	// On this mux, not http.DefaultServeMux: importing net/http/pprof
	// registers there too, but nothing serves the default mux.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux, nil
}

func index(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ztunnel admin")
	for _, e := range endpoints {
		fmt.Fprintf(w, "  %-15s %s\n", e.path, e.help)
	}
}

func serveConfigDump(w http.ResponseWriter, v any) {
	// Encode before writing, so that a failure is a clean 500 rather than
	// a 200 with half a document.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		http.Error(w, fmt.Sprintf("encode config dump: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(buf.Bytes())
}

// serveLogging shows the log level on GET, and sets it on POST or PUT
// (level= in the query or the form). A GET never changes it: a page the
// operator's browser loads, or a link followed, must not turn on debug
// logging.
func serveLogging(w http.ResponseWriter, r *http.Request, level *slog.LevelVar) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if r.URL.Query().Has("level") {
			w.Header().Set("Allow", "POST, PUT")
			http.Error(w, "level: set it with POST or PUT; GET only shows it", http.StatusMethodNotAllowed)
			return
		}
	case http.MethodPost, http.MethodPut:
		if err := r.ParseForm(); err != nil {
			http.Error(w, fmt.Sprintf("parse form: %v", err), http.StatusBadRequest)
			return
		}
		if name, ok := r.Form["level"]; ok {
			l, err := parseLevel(name[0])
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			level.Set(l)
		}
	default:
		w.Header().Set("Allow", "GET, POST, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "level: %s\n", strings.ToLower(level.Level().String()))
}

// parseLevel accepts the four level names only. slog.Level's own parser
// also takes offsets such as "info+2", which the output could not show
// back as a name.
func parseLevel(name string) (slog.Level, error) {
	switch strings.ToLower(name) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("invalid log level %q: want debug, info, warn or error", name)
}
