package proxy

import (
	"net/http"

	"github.com/zmesh/zmesh/waypoint/route"
)

// CORS as Envoy's cors filter applies a route's policy: a preflight from
// an allowed origin is answered here; responses to an allowed origin get
// its allow and expose headers; everything else passes untouched.

func (x *exchange) allowedOrigin(c *route.CORSPolicy) (string, bool) {
	origin := x.r.Header.Get("Origin")
	if origin == "" {
		return "", false
	}
	for i := range c.AllowOrigins {
		if c.AllowOrigins[i].Match(origin) {
			return origin, true
		}
	}
	return "", false
}

// preflight answers a CORS preflight; false when the request goes on.
// The answer is plain HTTP for any request: Envoy's CORS filter sends it
// itself, not as a local reply.
func (x *exchange) preflight(c *route.CORSPolicy) bool {
	r := x.r
	if r.Method != http.MethodOptions || r.Header.Get("Origin") == "" || r.Header.Get("Access-Control-Request-Method") == "" {
		return false
	}
	origin, ok := x.allowedOrigin(c)
	if !ok {
		if c.ForwardNotMatchingPreflights == nil || *c.ForwardNotMatchingPreflights {
			return false
		}
		x.plainReply(http.StatusOK, "")
		return true
	}
	h := x.w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	if c.AllowCredentials != nil && *c.AllowCredentials {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	if c.AllowMethods != "" {
		h.Set("Access-Control-Allow-Methods", c.AllowMethods)
	}
	if c.AllowHeaders != "" {
		h.Set("Access-Control-Allow-Headers", c.AllowHeaders)
	}
	if c.MaxAge != "" {
		h.Set("Access-Control-Max-Age", c.MaxAge)
	}
	if c.AllowPrivateNetworkAccess != nil && *c.AllowPrivateNetworkAccess && r.Header.Get("Access-Control-Request-Private-Network") == "true" {
		h.Set("Access-Control-Allow-Private-Network", "true")
	}
	x.d.ResponseHeaders.Apply(h)
	x.plainReply(http.StatusOK, "")
	return true
}

func (x *exchange) addCORS(c *route.CORSPolicy) { x.addCORSTo(x.w.Header(), c) }

// addCORSTo adds the headers of a response to an allowed origin.
func (x *exchange) addCORSTo(h http.Header, c *route.CORSPolicy) {
	if c == nil {
		return
	}
	origin, ok := x.allowedOrigin(c)
	if !ok {
		return
	}
	h.Set("Access-Control-Allow-Origin", origin)
	if c.AllowCredentials != nil && *c.AllowCredentials {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	if c.ExposeHeaders != "" {
		h.Set("Access-Control-Expose-Headers", c.ExposeHeaders)
	}
}
