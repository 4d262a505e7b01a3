package zds

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

func TestSendRecvWithDescriptors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "zds.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server := <-accepted
	defer server.Close()

	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	sent := &WorkloadRequest{Payload: &WorkloadRequest_Add{Add: &AddWorkload{Uid: "u", Ips: []string{"10.0.0.1"}}}}
	if err := server.Send(sent, p[1]); err != nil {
		t.Fatal(err)
	}
	var got WorkloadRequest
	fds, err := client.Recv(&got)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, sent) || len(fds) != 1 {
		t.Fatalf("got %v with %d fds", &got, len(fds))
	}
	// The received descriptor is the pipe's write end: bytes written to it
	// come out of the original read end.
	unix.Write(fds[0], []byte("x"))
	unix.Close(fds[0])
	buf := make([]byte, 1)
	if n, _ := unix.Read(p[0], buf); n != 1 || buf[0] != 'x' {
		t.Fatal("received descriptor is not the one sent")
	}
	if flags, _ := unix.FcntlInt(uintptr(p[1]), unix.F_GETFD, 0); flags < 0 {
		t.Fatal("sender's descriptor closed by Send")
	}
	if err := server.Send(sent, 1, 2, 3, 4); err == nil {
		t.Fatal("sent four descriptors")
	}
}

// FuzzDecode: any packet decodes to a request or to an error, never a panic.
func FuzzDecode(f *testing.F) {
	b, _ := proto.Marshal(&WorkloadRequest{Payload: &WorkloadRequest_Add{Add: &AddWorkload{Uid: "u", WorkloadInfo: &WorkloadInfo{Name: "n"}, Ips: []string{"fd00::1"}}}})
	f.Add(b)
	f.Add([]byte{0x1a, 0x00})
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var req WorkloadRequest
		decode(b, len(b), 0, &req)
		var resp WorkloadResponse
		decode(b, len(b), 0, &resp)
		decode(b, MaxMessageSize+1, unix.MSG_TRUNC, &req)
	})
}

// The socket hands out pods' network namespaces: it is 0600 even under a
// permissive umask, and a stale socket at the path is replaced.
func TestListenSocketIsPrivate(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	path := filepath.Join(t.TempDir(), "zds.sock")
	for range 2 { // the second replaces the first's file
		ln, err := Listen(path)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o777 != 0o600 {
			t.Fatalf("socket %s mode %o, want a socket with 0600", path, st.Mode)
		}
		c, err := Dial(path)
		if err != nil {
			t.Fatal(err)
		}
		cred, err := c.PeerCred()
		c.Close()
		if err != nil || cred.Pid == 0 {
			t.Fatalf("PeerCred of the agent's side = %+v, %v", cred, err)
		}
		if err := ln.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Access(path, unix.F_OK); err == nil {
		t.Fatal("socket file left after Close")
	}
}
