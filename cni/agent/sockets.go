package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/zmesh/zmesh/cni/redirect"
)

// Connections open when a pod joins or leaves the mesh are not carried over
// (docs/decisions.md, "Enrolment and switch-over"): the agent takes the list of the pod's sockets
// before the change and destroys them (sock_diag SOCK_DESTROY, which needs
// CONFIG_INET_DIAG_DESTROY) after it, so an application blocked on them
// fails at once instead of hanging. Listing before and destroying after
// spares the connections opened through the new path in between.

// tcpSocket is one TCP socket of a pod as sock_diag reports it.
type tcpSocket struct {
	family        uint8
	state         uint8
	local, remote netip.AddrPort
	ifindex       uint32
	cookie        [2]uint32
	mark          uint32
}

// TCP states (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpTimeWait    = 6
	tcpClose       = 7
	tcpListen      = 10
)

const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	sockDestroy      = 21 // SOCK_DESTROY
	inetDiagMark     = 15 // INET_DIAG_MARK
	sizeofSockID     = 48
	sizeofDiagReq    = 8 + sizeofSockID
	sizeofDiagMsg    = 4 + sizeofSockID + 20
)

// connectionStates are the states whose sockets carry a connection that can
// be aborted: neither listeners nor time-wait/closed leftovers.
const connectionStates = (1<<12 - 1) &^ (1<<tcpListen | 1<<tcpTimeWait | 1<<tcpClose)

// openConnections is which sockets to kill on a change.
type openConnections int

const (
	// appConnections are the application's own (unmarked) sockets: at
	// enrolment, the ones that went directly and would now hang.
	appConnections openConnections = iota
	// allConnections adds ztunnel's marked sockets in the pod: at release,
	// every connection that went through the capture.
	allConnections
)

// doomed decides whether a socket open at a change is destroyed after it:
// not listening, peer neither loopback nor the pod itself (those never
// went through capture), and unmarked unless which is allConnections.
func doomed(s tcpSocket, podIPs []netip.Addr, which openConnections) bool {
	if connectionStates&(1<<s.state) == 0 {
		return false
	}
	if which == appConnections && s.mark == redirect.ProxyMark {
		return false
	}
	peer := s.remote.Addr().Unmap()
	if !peer.IsValid() || peer.IsLoopback() || peer.IsUnspecified() {
		return false
	}
	for _, ip := range podIPs {
		if peer == ip.Unmap() {
			return false
		}
	}
	return true
}

// socketsToKill lists the pod's sockets that doomed picks.
func socketsToKill(ns netns.NsHandle, podIPs []netip.Addr, which openConnections) ([]tcpSocket, error) {
	fd, err := diagSocketIn(ns)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out []tcpSocket
	for _, af := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := dumpTCP(fd, af)
		if err != nil {
			return nil, err
		}
		for _, s := range socks {
			if doomed(s, podIPs, which) {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// destroySockets aborts the given sockets; the ones already gone are fine.
// It returns how many it destroyed.
func destroySockets(ns netns.NsHandle, socks []tcpSocket) (int, error) {
	if len(socks) == 0 {
		return 0, nil
	}
	fd, err := diagSocketIn(ns)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	n := 0
	var errs []error
	for _, s := range socks {
		err := request(fd, sockDestroy, unix.NLM_F_REQUEST|unix.NLM_F_ACK, diagReq(s.family, 1<<s.state, &s))
		switch {
		case err == nil:
			n++
		case errors.Is(err, unix.ENOENT):
			// closed meanwhile
		case errors.Is(err, unix.EOPNOTSUPP):
			return n, fmt.Errorf("destroy sockets: kernel without CONFIG_INET_DIAG_DESTROY: %w", err)
		default:
			errs = append(errs, fmt.Errorf("destroy %s->%s: %w", s.local, s.remote, err))
		}
	}
	return n, errors.Join(errs...)
}

// diagSocketIn opens a NETLINK_INET_DIAG socket inside ns; a netlink socket
// answers for the namespace it was created in, whatever thread uses it.
func diagSocketIn(ns netns.NsHandle) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{-1, err}
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			ch <- result{-1, fmt.Errorf("enter pod netns: %w", err)}
			return
		}
		fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
		if err := netns.Set(orig); err != nil {
			if serr == nil {
				unix.Close(fd)
			}
			ch <- result{-1, fmt.Errorf("leave pod netns: %w", err)}
			return // tainted thread: exit locked so the runtime drops it
		}
		runtime.UnlockOSThread()
		if serr != nil {
			serr = fmt.Errorf("sock_diag socket: %w", serr)
		}
		ch <- result{fd, serr}
	}()
	r := <-ch
	if r.err != nil {
		return -1, r.err
	}
	if err := unix.Bind(r.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(r.fd)
		return -1, fmt.Errorf("sock_diag bind: %w", err)
	}
	return r.fd, nil
}

// diagReq encodes struct inet_diag_req_v2; id selects one socket (nil for a
// dump).
func diagReq(family uint8, states uint32, id *tcpSocket) []byte {
	b := make([]byte, sizeofDiagReq)
	b[0], b[1] = family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(b[4:], states)
	if id != nil {
		putSockID(b[8:], id)
	}
	return b
}

func putSockID(b []byte, s *tcpSocket) {
	binary.BigEndian.PutUint16(b[0:], s.local.Port())
	binary.BigEndian.PutUint16(b[2:], s.remote.Port())
	putAddr(b[4:20], s.local.Addr())
	putAddr(b[20:36], s.remote.Addr())
	binary.NativeEndian.PutUint32(b[36:], s.ifindex)
	binary.NativeEndian.PutUint32(b[40:], s.cookie[0])
	binary.NativeEndian.PutUint32(b[44:], s.cookie[1])
}

func putAddr(b []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(b, v[:])
		return
	}
	v := a.As16()
	copy(b, v[:])
}

func addrOf(family uint8, b []byte) netip.Addr {
	if family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16([16]byte(b[:16]))
}

// parseDiagMsg decodes struct inet_diag_msg and its attributes.
func parseDiagMsg(b []byte) (tcpSocket, error) {
	if len(b) < sizeofDiagMsg {
		return tcpSocket{}, fmt.Errorf("sock_diag: short message (%d bytes)", len(b))
	}
	s := tcpSocket{family: b[0], state: b[1]}
	id := b[4 : 4+sizeofSockID]
	s.local = netip.AddrPortFrom(addrOf(s.family, id[4:20]), binary.BigEndian.Uint16(id[0:]))
	s.remote = netip.AddrPortFrom(addrOf(s.family, id[20:36]), binary.BigEndian.Uint16(id[2:]))
	s.ifindex = binary.NativeEndian.Uint32(id[36:])
	s.cookie = [2]uint32{binary.NativeEndian.Uint32(id[40:]), binary.NativeEndian.Uint32(id[44:])}
	for attrs := b[sizeofDiagMsg:]; len(attrs) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(attrs[0:]))
		typ := binary.NativeEndian.Uint16(attrs[2:])
		if l < unix.SizeofRtAttr || l > len(attrs) {
			break
		}
		if typ == inetDiagMark && l >= unix.SizeofRtAttr+4 {
			s.mark = binary.NativeEndian.Uint32(attrs[unix.SizeofRtAttr:])
		}
		next := (l + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1)
		if next > len(attrs) {
			break
		}
		attrs = attrs[next:]
	}
	return s, nil
}

// dumpTCP lists the namespace's TCP sockets of one family in the states
// that carry connections.
func dumpTCP(fd int, family uint8) ([]tcpSocket, error) {
	var out []tcpSocket
	err := exchange(fd, sockDiagByFamily, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, diagReq(family, connectionStates, nil), func(payload []byte) error {
		s, err := parseDiagMsg(payload)
		if err == nil {
			out = append(out, s)
		}
		return err
	})
	return out, err
}

// request sends one message and waits for its ack.
func request(fd int, typ uint16, flags uint16, payload []byte) error {
	return exchange(fd, typ, flags, payload, func([]byte) error { return nil })
}

// exchange sends a netlink message and reads answers until NLMSG_DONE or
// the ack (NLMSG_ERROR), handing every other message's payload to each.
func exchange(fd int, typ, flags uint16, payload []byte, each func([]byte) error) error {
	const seq = 1
	msg := make([]byte, unix.SizeofNlMsghdr+len(payload))
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], flags)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	copy(msg[unix.SizeofNlMsghdr:], payload)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag send: %w", err)
	}
	buf := make([]byte, 1<<16)
	var firstErr error
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("sock_diag receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("sock_diag answer: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return firstErr
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return errors.New("sock_diag: short error message")
				}
				if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
					return unix.Errno(-code)
				}
				return firstErr
			default:
				if err := each(m.Data); err != nil && firstErr == nil {
					firstErr = err
				}
			}
		}
	}
}
