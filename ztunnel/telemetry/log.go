package telemetry

import (
	"context"
	"log/slog"
	"net/netip"
	"strconv"
	"time"
)

// Access-log keys. They are the keys of Istio's ztunnel access log, so log
// pipelines built for it keep working; reason, response_flags,
// authorization_policy and peer_authentication are ours.
const (
	KeySrcAddr       = "src.addr"
	KeySrcWorkload   = "src.workload"
	KeySrcNamespace  = "src.namespace"
	KeySrcIdentity   = "src.identity"
	KeySrcCluster    = "src.cluster"
	KeyDstAddr       = "dst.addr"
	KeyDstHBONEAddr  = "dst.hbone_addr"
	KeyDstService    = "dst.service"
	KeyDstWorkload   = "dst.workload"
	KeyDstNamespace  = "dst.namespace"
	KeyDstIdentity   = "dst.identity"
	KeyDstCluster    = "dst.cluster"
	KeyDirection     = "direction"
	KeyBytesSent     = "bytes_sent"
	KeyBytesRecv     = "bytes_recv"
	KeyDuration      = "duration"
	KeyError         = "error"
	KeyReason        = "reason"
	KeyResponseFlags = "response_flags"
	// KeyPolicy names the authorization policy that allowed or denied the
	// connection, KeyPeerAuthentication the PeerAuthentication when the
	// deciding policy is the one enforcing it (a STRICT refusal).
	KeyPolicy             = "authorization_policy"
	KeyPeerAuthentication = "peer_authentication"
)

const (
	msgOpened   = "connection opened"
	msgComplete = "connection complete"

	// maxAccessLogAttrs bounds the attributes of one line, so they fit in
	// an array on the stack.
	maxAccessLogAttrs = 21
)

// logOpen writes the Debug line Istio's ztunnel writes when a connection
// opens; the line that matters is logClose's.
func (t *Telemetry) logOpen(c *Conn) {
	ctx := context.Background()
	if !t.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	var buf [maxAccessLogAttrs]slog.Attr
	tx := formatTexts(&c.info, false)
	t.log.LogAttrs(ctx, slog.LevelDebug, msgOpened, peerAttrs(buf[:0], &c.info, &tx)...)
}

// logClose writes the connection's one access-log line: Info when it
// completed, Warn when it failed or was denied. Empty values are left out,
// as in Istio; identities appear only when mTLS proved them.
func (t *Telemetry) logClose(c *Conn, r *Result) {
	ctx := context.Background()
	level := slog.LevelInfo
	if r.Err != nil || r.Flags != FlagNone {
		level = slog.LevelWarn
	}
	if !t.log.Enabled(ctx, level) {
		return
	}

	// The log speaks for the local workload: on an outbound connection it
	// is the client, so its bytes sent are the client's; inbound, it is
	// the server and the two swap.
	sent, recv := r.Sent, r.Received
	if c.info.Direction == Inbound {
		sent, recv = recv, sent
	}

	var buf [maxAccessLogAttrs]slog.Attr
	tx := formatTexts(&c.info, true)
	a := peerAttrs(buf[:0], &c.info, &tx)
	a = append(a,
		slog.Int64(KeyBytesSent, sent),
		slog.Int64(KeyBytesRecv, recv),
		slog.String(KeyDuration, tx.duration),
	)
	if r.Flags != FlagNone {
		a = append(a, slog.String(KeyResponseFlags, r.Flags))
	}
	if r.Err != nil {
		a = append(a, slog.String(KeyError, r.Err.Error()))
	}
	if r.Reason != "" {
		a = append(a, slog.String(KeyReason, r.Reason))
	}
	if r.Policy != "" {
		a = append(a, slog.String(KeyPolicy, r.Policy))
	}
	if r.PeerAuthentication != "" {
		a = append(a, slog.String(KeyPeerAuthentication, r.PeerAuthentication))
	}
	t.log.LogAttrs(ctx, level, msgComplete, a...)
}

// lineTexts are the values of a line that are formatted rather than held
// as strings: the addresses (empty when not valid) and the duration.
type lineTexts struct{ src, dst, hbone, duration string }

// formatTexts formats ci's addresses and, if asked, the duration so far
// ("<ms>ms") into one string and returns its parts: one allocation a line
// rather than one a value, on every connection's line.
func formatTexts(ci *ConnInfo, duration bool) lineTexts {
	var scratch [160]byte
	b := scratch[:0]
	var ends [4]int
	for i, ap := range [3]netip.AddrPort{ci.Src.Addr, ci.Dst.Addr, ci.HBONETarget} {
		if ap.IsValid() {
			b = ap.AppendTo(b)
		}
		ends[i] = len(b)
	}
	if duration {
		b = strconv.AppendInt(b, time.Since(ci.Start).Milliseconds(), 10)
		b = append(b, "ms"...)
	}
	ends[3] = len(b)
	s := string(b)
	return lineTexts{src: s[:ends[0]], dst: s[ends[0]:ends[1]], hbone: s[ends[1]:ends[2]], duration: s[ends[2]:ends[3]]}
}

func peerAttrs(a []slog.Attr, ci *ConnInfo, tx *lineTexts) []slog.Attr {
	add := func(key, val string) {
		if val != "" {
			a = append(a, slog.String(key, val))
		}
	}
	src, dst := &ci.Src, &ci.Dst
	add(KeySrcAddr, tx.src)
	add(KeySrcWorkload, logName(src))
	add(KeySrcNamespace, src.Namespace)
	if ci.Secure {
		add(KeySrcIdentity, src.Identity)
	}
	add(KeySrcCluster, src.Cluster)
	add(KeyDstAddr, tx.dst)
	add(KeyDstHBONEAddr, tx.hbone)
	add(KeyDstService, dst.Service)
	add(KeyDstWorkload, logName(dst))
	add(KeyDstNamespace, dst.Namespace)
	if ci.Secure {
		add(KeyDstIdentity, dst.Identity)
	}
	add(KeyDstCluster, dst.Cluster)
	add(KeyDirection, ci.Direction.String())
	return a
}

// logName is the name the log gives a peer: the pod, as Istio's ztunnel
// logs it, else whatever names it more coarsely.
func logName(p *Peer) string {
	switch {
	case p.Pod != "":
		return p.Pod
	case p.Workload != "":
		return p.Workload
	default:
		return p.CanonicalName
	}
}
