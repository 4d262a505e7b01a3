package config

import "fmt"

// NackError is a refused resource: Path is the field path inside it
// ("virtual_hosts[0].routes[2].match.grpc"), Problem what is wrong there.
// Its Error text is what the waypoint puts in the NACK's error_detail.
type NackError struct {
	Resource string // the resource's name, when known
	Path     string
	Problem  string
}

func (e *NackError) Error() string {
	s := e.Path + ": " + e.Problem
	if e.Resource != "" {
		s = e.Resource + ": " + s
	}
	return s
}

func nackf(path, format string, args ...any) *NackError {
	return &NackError{Path: path, Problem: fmt.Sprintf(format, args...)}
}
