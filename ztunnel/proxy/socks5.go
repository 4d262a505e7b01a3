package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/zmesh/zmesh/internal/hbone"
	"github.com/zmesh/zmesh/ztunnel/state"
	"github.com/zmesh/zmesh/ztunnel/telemetry"
)

// SOCKS5 (RFC 1928) replies.
const (
	socksSucceeded          = 0
	socksGeneralFailure     = 1
	socksHostUnreachable    = 4
	socksCommandUnsupported = 7
	socksAddrUnsupported    = 8
)

// socks5 serves the pod's 127.0.0.1:15080: an explicit way into the same
// outbound path as capture, for tools and tests. Only CONNECT without
// authentication; a name is resolved against mesh service hostnames.
func (p *Proxy) socks5(pd *pod, c *net.TCPConn) {
	c.SetDeadline(time.Now().Add(ConnectTimeout))
	br := bufio.NewReader(c)
	dst, err := readSOCKS5(br, c, p.cfg.State.Snapshot(), pd.namespace)
	if err != nil {
		var re *socksError
		if errors.As(err, &re) {
			writeSOCKS5Reply(c, re.code)
		}
		p.log.Debug("socks5 request refused", "pod", pd.String(), "error", err.Error())
		return
	}
	// The client is the pod's app on loopback; to the mesh it is the pod.
	src := netip.AddrPortFrom(pd.ips[0], uint16(c.RemoteAddr().(*net.TCPAddr).Port))
	up, tel, err := p.connect(pd, src, dst, nil, false)
	if err != nil {
		writeSOCKS5Reply(c, socksHostUnreachable)
		return
	}
	defer up.Close()
	if err := writeSOCKS5Reply(c, socksSucceeded); err != nil {
		tel.Close(telemetry.Result{Err: err})
		return
	}
	c.SetDeadline(time.Time{})
	down := net.Conn(c)
	if br.Buffered() > 0 { // the client did not wait for our reply
		down = &bufferedConn{TCPConn: c, r: br}
	}
	sent, recv, err := hbone.Join(down, up)
	tel.Close(telemetry.Result{Sent: sent, Received: recv, Err: ignoreClosed(err)})
}

type socksError struct {
	code byte
	msg  string
}

func (e *socksError) Error() string { return e.msg }

// readSOCKS5 runs the greeting and reads a CONNECT request.
func readSOCKS5(r *bufio.Reader, w io.Writer, snap *state.Snapshot, namespace string) (netip.AddrPort, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("read greeting: %w", err)
	}
	if hdr[0] != 5 {
		return netip.AddrPort{}, fmt.Errorf("version %d, want 5", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return netip.AddrPort{}, fmt.Errorf("read methods: %w", err)
	}
	noAuth := false
	for _, m := range methods {
		noAuth = noAuth || m == 0
	}
	if !noAuth {
		w.Write([]byte{5, 0xff})
		return netip.AddrPort{}, errors.New("client offers no method without authentication")
	}
	if _, err := w.Write([]byte{5, 0}); err != nil {
		return netip.AddrPort{}, err
	}
	var req [4]byte
	if _, err := io.ReadFull(r, req[:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("read request: %w", err)
	}
	if req[0] != 5 {
		return netip.AddrPort{}, &socksError{socksGeneralFailure, fmt.Sprintf("request version %d, want 5", req[0])}
	}
	if req[1] != 1 {
		return netip.AddrPort{}, &socksError{socksCommandUnsupported, fmt.Sprintf("command %d: only CONNECT (1) is supported", req[1])}
	}
	var addr netip.Addr
	switch req[3] {
	case 1, 4:
		b := make([]byte, 4)
		if req[3] == 4 {
			b = make([]byte, 16)
		}
		if _, err := io.ReadFull(r, b); err != nil {
			return netip.AddrPort{}, fmt.Errorf("read address: %w", err)
		}
		addr, _ = netip.AddrFromSlice(b)
	case 3:
		n, err := r.ReadByte()
		if err != nil {
			return netip.AddrPort{}, err
		}
		name := make([]byte, n)
		if _, err := io.ReadFull(r, name); err != nil {
			return netip.AddrPort{}, fmt.Errorf("read name: %w", err)
		}
		if addr, err = resolveMesh(snap, string(name), namespace); err != nil {
			return netip.AddrPort{}, &socksError{socksHostUnreachable, err.Error()}
		}
	default:
		return netip.AddrPort{}, &socksError{socksAddrUnsupported, fmt.Sprintf("address type %d", req[3])}
	}
	var port [2]byte
	if _, err := io.ReadFull(r, port[:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("read port: %w", err)
	}
	return netip.AddrPortFrom(addr.Unmap(), binary.BigEndian.Uint16(port[:])), nil
}

// resolveMesh answers a name from the mesh's services: an IP literal, or a
// service hostname (its first VIP) visible to a client of namespace.
// Other names are not looked up: ztunnel does not resolve DNS on a pod's
// behalf here.
func resolveMesh(snap *state.Snapshot, name, namespace string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(name); err == nil {
		return a, nil
	}
	for _, svc := range snap.ServicesByHostname(name) {
		if len(svc.VIPs) > 0 && svc.VisibleTo(namespace) {
			return svc.VIPs[0].Addr, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%q is not a mesh service hostname", name)
}

func writeSOCKS5Reply(w io.Writer, code byte) error {
	// Bound address 0.0.0.0:0: clients do not use it for CONNECT.
	_, err := w.Write([]byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0})
	return err
}

// bufferedConn reads what the SOCKS reader buffered before the socket.
type bufferedConn struct {
	*net.TCPConn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
