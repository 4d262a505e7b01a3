package proxy

import (
	"log/slog"
	"net"
	"time"

	"github.com/zmesh/zmesh/ztunnel/authz"
)

// inboundPlain serves plaintext that capture steered to 15006: a client
// outside the mesh (or not using HBONE). It has no identity, so a STRICT
// PeerAuthentication (a DENY on not_principals: presence) refuses it and
// principal-based ALLOW rules cannot match it.
func (p *Proxy) inboundPlain(pd *pod, c *net.TCPConn) {
	start := time.Now()
	src := unmapped(c.RemoteAddr().(*net.TCPAddr).AddrPort())
	dst := unmapped(c.LocalAddr().(*net.TCPAddr).AddrPort())
	if err := CheckDestination(dst); err != nil {
		// Someone dialled ztunnel's own port from outside the pod: serving
		// it would dial that port again.
		c.SetLinger(0)
		p.logRejected(rejectSelfCall, slog.LevelInfo, "plaintext connection refused",
			slog.String("dst.workload", pd.String()), slog.String("dst.addr", dst.String()),
			slog.String("src.addr", src.String()), slog.String("reason", err.Error()))
		return
	}
	p.serveInbound(pd.ctx, pd, c, authz.Conn{Src: src, Dst: dst}, "", false, start, func(status int, reason string) {
		if status != 200 {
			// A plaintext client learns nothing but a reset.
			c.SetLinger(0)
		}
	})
}
