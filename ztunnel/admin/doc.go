// Package admin serves ztunnel's three small HTTP endpoints: the admin
// server (config dump, pprof, log level; bound to localhost), the readiness
// probe (/healthz/ready) and the Prometheus scrape (/metrics).
//
// It builds handlers from values the caller hands it (a config-dump
// function, a *slog.LevelVar, a Ready, a prometheus.Gatherer) and runs them
// on listeners the caller opened. It imports nothing of zmesh: in
// particular not the telemetry package, whose metrics reach it only through
// the Gatherer.
package admin
