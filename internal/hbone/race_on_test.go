//go:build race

package hbone

// raceEnabled: the race detector slows TLS and the read loop several
// times, so flood tests send fewer frames under it (the figures come from
// runs without it).
const raceEnabled = true
