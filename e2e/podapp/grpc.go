package podapp

import (
	"context"
	"slices"

	"google.golang.org/grpc/metadata"

	grpcecho "sigs.k8s.io/gateway-api/conformance/echo-basic/grpcechoserver"
)

// grpcEcho is the conformance GrpcEcho service: Echo and EchoTwo answer
// with what the server saw of the call; EchoThree stays unimplemented, as
// in echo-basic.
type grpcEcho struct {
	grpcecho.UnimplementedGrpcEchoServer
	pod Pod
}

func (s *grpcEcho) Echo(ctx context.Context, _ *grpcecho.EchoRequest) (*grpcecho.EchoResponse, error) {
	return s.echo(ctx, grpcecho.GrpcEcho_Echo_FullMethodName), nil
}

func (s *grpcEcho) EchoTwo(ctx context.Context, _ *grpcecho.EchoRequest) (*grpcecho.EchoResponse, error) {
	return s.echo(ctx, grpcecho.GrpcEcho_EchoTwo_FullMethodName), nil
}

func (s *grpcEcho) echo(ctx context.Context, method string) *grpcecho.EchoResponse {
	md, _ := metadata.FromIncomingContext(ctx)
	a := &grpcecho.Assertions{
		FullyQualifiedMethod: method,
		Context: &grpcecho.Context{
			Namespace:   s.pod.Namespace,
			ServiceName: s.pod.Service,
			Pod:         s.pod.Name,
		},
	}
	// Sorted, so that replies compare byte for byte.
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range md[k] {
			if k == ":authority" {
				a.Authority = v
			}
			a.Headers = append(a.Headers, &grpcecho.Header{Key: k, Value: v})
		}
	}
	return &grpcecho.EchoResponse{Assertions: a, Request: &grpcecho.EchoRequest{}}
}
