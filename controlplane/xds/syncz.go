package xds

import (
	"encoding/json"
	"net/http"
)

// SynczHandler serves Syncz as JSON (GET /debug/syncz).
func (s *Server) SynczHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Syncz())
	})
}
