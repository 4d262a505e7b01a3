package l7

import (
	"fmt"
	"regexp"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// The waypoint refuses a whole route configuration for one invalid value,
// which would take every route of the Service port down with it. These
// checks keep such values out, each reported on the object it came from.

// maxDirectBody is Envoy's default max_direct_response_body_size_bytes,
// which the route configurations built here leave unset.
const maxDirectBody = 4096

// checkSubstitution checks a regex rewrite's substitution as RE2 (and the
// waypoint) read it: \0 to \9 name groups the pattern has, \\ is a
// backslash, any other escape is an error.
func checkSubstitution(pattern, sub string) error {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return fmt.Errorf("invalid RE2 regex %q: %v", pattern, err)
	}
	for i := 0; i < len(sub); i++ {
		if sub[i] != '\\' {
			continue
		}
		i++
		switch {
		case i == len(sub):
			return fmt.Errorf("substitution %q ends with a lone backslash", sub)
		case sub[i] == '\\':
		case '0' <= sub[i] && sub[i] <= '9':
			if n := int(sub[i] - '0'); n > re.NumSubexp() {
				return fmt.Errorf("substitution %q uses group \\%d but the pattern has %d", sub, n, re.NumSubexp())
			}
		default:
			return fmt.Errorf("substitution %q has an invalid escape \\%c", sub, sub[i])
		}
	}
	return nil
}

// literalSubstitution is s as a regex substitution that inserts it as is.
func literalSubstitution(s string) string {
	return strings.ReplaceAll(s, `\`, `\\`)
}

// checkMatchName tells why a header or query parameter name cannot be
// matched on, or "".
func checkMatchName(name string, header bool) string {
	switch {
	case name == "":
		return "an empty name"
	case header && !strings.HasPrefix(name, ":") && !httpguts.ValidHeaderFieldName(name):
		return fmt.Sprintf("%q is not a header name", name)
	}
	return ""
}

// checkPrefix tells why a path prefix cannot be a path-separated prefix.
func checkPrefix(p string) string {
	if strings.ContainsAny(p, "?#") {
		return fmt.Sprintf("%q holds '?' or '#': a path never does", p)
	}
	return ""
}

// isToken reports whether s is an HTTP token (a cookie name).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !httpguts.IsTokenRune(rune(s[i])) {
			return false
		}
	}
	return true
}
