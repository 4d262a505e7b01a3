// Package zds carries ZDS, the protocol by which the node agent hands pods
// to ztunnel: one protobuf message per SOCK_SEQPACKET packet, descriptors
// as SCM_RIGHTS, field numbers as Istio's istio.workload.zds.
//
// Istio's ZDS has one request in flight per connection, and its acks name
// nothing. zmesh's ztunnel says in its hello that its acks name the pod
// they answer (ZdsHello.acks_name_pod, Ack.uid); the agent then keeps one
// request per pod in flight at once and matches acks by uid, so a pod
// whose Add is slow (its certificate cannot be had) delays no other pod.
// The choice is made per connection from the hello, before any request:
// a peer that does not announce it (Istio's ztunnel) is served one request
// at a time, and zmesh's ztunnel, which handles requests concurrently but
// each pod's in order, answers an agent that sends one at a time (Istio's)
// just as well. An ack for no pending request is dropped.
package zds

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// MaxMessageSize bounds one ZDS packet.
const MaxMessageSize = 64 << 10

// MaxFDs is how many descriptors one message may carry (netns, SOCKMAP,
// bypass map).
const MaxFDs = 3

// Conn is one end of a ZDS connection: a SOCK_SEQPACKET unix socket, one
// protobuf message per packet, descriptors as SCM_RIGHTS.
type Conn struct {
	c *net.UnixConn
}

// Dial connects to the agent's socket at path (a filesystem path, never an
// abstract name: those belong to one network namespace).
func Dial(path string) (*Conn, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("zds: dial %s: %w", path, err)
	}
	return &Conn{c: c}, nil
}

// Listener accepts ZDS connections.
type Listener struct {
	ln   *net.UnixListener
	path string
	ino  uint64 // of the socket file at path, to remove only our own
}

// Listen creates the socket at path, mode 0600 whatever the umask,
// replacing a stale one. Whoever can connect is handed pods' network
// namespaces, so the socket is bound in a private directory, made 0600
// there, and only then renamed into place: it is never reachable with a
// wider mode, not even for the moment between bind and chmod.
func Listen(path string) (*Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".zds-")
	if err != nil {
		return nil, fmt.Errorf("zds: listen %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("zds: listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	var st unix.Stat_t
	err = os.Chmod(tmp, 0o600)
	if err == nil {
		err = unix.Stat(tmp, &st)
	}
	if err == nil {
		err = os.Rename(tmp, path) // replaces a stale socket
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("zds: listen %s: %w", path, err)
	}
	return &Listener{ln: ln, path: path, ino: st.Ino}, nil
}

// Accept waits for the next connection.
func (l *Listener) Accept() (*Conn, error) {
	c, err := l.ln.AcceptUnix()
	if err != nil {
		return nil, err
	}
	return &Conn{c: c}, nil
}

// Close stops listening and removes the socket file, unless another
// listener replaced it meanwhile.
func (l *Listener) Close() error {
	err := l.ln.Close()
	var st unix.Stat_t
	if unix.Stat(l.path, &st) == nil && st.Ino == l.ino {
		os.Remove(l.path)
	}
	return err
}

// PeerCred returns the credentials (pid, uid, gid) the peer connected
// with, as the kernel recorded them (SO_PEERCRED).
func (c *Conn) PeerCred() (*unix.Ucred, error) {
	rc, err := c.c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, fmt.Errorf("zds: peer credentials: %w", cerr)
	}
	return cred, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Send writes one message with the given descriptors (which stay open on
// the sender's side).
func (c *Conn) Send(m proto.Message, fds ...int) error {
	if len(fds) > MaxFDs {
		return fmt.Errorf("zds: %d descriptors, at most %d", len(fds), MaxFDs)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("zds: encode %T: %w", m, err)
	}
	if len(b) > MaxMessageSize {
		return fmt.Errorf("zds: %T is %d bytes, at most %d", m, len(b), MaxMessageSize)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("zds: send %T: %w", m, err)
	}
	return nil
}

// Recv reads one message into m and returns the descriptors that came with
// it, close-on-exec, owned by the caller. On a decoding error they are
// closed.
func (c *Conn) Recv(m proto.Message) ([]int, error) {
	buf := make([]byte, MaxMessageSize+1)
	oob := make([]byte, unix.CmsgSpace(4*MaxFDs))
	rc, err := c.c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var n, oobn, flags int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return nil, fmt.Errorf("zds: receive: %w", err)
	}
	fds, ferr := parseRights(oob[:oobn])
	if n == 0 && oobn == 0 {
		// A zero-length read on SOCK_SEQPACKET is the peer closing; no
		// ZDS message encodes to zero bytes.
		return nil, io.EOF
	}
	if err := errors.Join(ferr, decode(buf[:n], n, flags, m)); err != nil {
		closeAll(fds)
		return nil, err
	}
	return fds, nil
}

// decode checks a packet's framing and unmarshals it.
func decode(b []byte, n, flags int, m proto.Message) error {
	switch {
	case flags&unix.MSG_CTRUNC != 0:
		return fmt.Errorf("zds: more than %d descriptors in one message", MaxFDs)
	case n > MaxMessageSize || flags&unix.MSG_TRUNC != 0:
		return fmt.Errorf("zds: message larger than %d bytes", MaxMessageSize)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("zds: decode %T: %w", m, err)
	}
	return nil
}

func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("zds: control message: %w", err)
	}
	var fds []int
	for _, cm := range msgs {
		if cm.Header.Level != unix.SOL_SOCKET || cm.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&cm)
		if err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("zds: descriptors: %w", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
