package meshclient

import (
	"bytes"
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestDialReceivesLargeMessages: a data plane takes a message from zmeshd
// well past gRPC's 4 MiB default (a large mesh's first workload-discovery
// response), and a message past MaxRecvMsgSize is still refused.
func TestDialReceivesLargeMessages(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var size atomic.Int64
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
			return err
		}
		return stream.SendMsg(wrapperspb.Bytes(bytes.Repeat([]byte{'x'}, int(size.Load()))))
	}))
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	conn, err := Dial(ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fetch := func(n int) (int, error) {
		size.Store(int64(n))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/test.Big/Get")
		if err != nil {
			return 0, err
		}
		if err := stream.SendMsg(&emptypb.Empty{}); err != nil {
			return 0, err
		}
		if err := stream.CloseSend(); err != nil {
			return 0, err
		}
		var got wrapperspb.BytesValue
		if err := stream.RecvMsg(&got); err != nil {
			return 0, err
		}
		return len(got.Value), nil
	}
	if n, err := fetch(16 << 20); err != nil || n != 16<<20 {
		t.Fatalf("16 MiB message: got %d bytes, %v", n, err)
	}
	if _, err := fetch(MaxRecvMsgSize + 1); err == nil {
		t.Fatalf("a message past MaxRecvMsgSize (%d) was received", MaxRecvMsgSize)
	}
}
