package proxy

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/zmesh/zmesh/waypoint/upstream"
)

// dialPlaintext opens a TCP connection straight to an endpoint outside the
// mesh (a ServiceEntry endpoint that zmeshd marked tunnel "none"): no
// HBONE, no TLS, no Forwarded header, since there is no ztunnel at the
// other end to read one. HTTP then goes on it as the cluster says (HTTP/1.1,
// or HTTP/2 with prior knowledge, h2c), TCP as it is. The dial is bounded
// by the cluster's connect timeout like an HBONE dial, and the connections
// it opens are counted and pooled by the same pools.
func (u *upstreams) dialPlaintext(ctx context.Context, ep upstream.Endpoint, timeout time.Duration) (net.Conn, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := u.p.opts.DialUpstream(ctx, ep.Addr)
	if err != nil {
		return nil, &connectError{fmt.Errorf("plaintext endpoint %s: %w", ep.Addr, err)}
	}
	return c, nil
}
