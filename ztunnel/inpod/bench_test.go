package inpod

import (
	"io"
	"net"
	"testing"
)

// BenchmarkCaptureConnectEcho is what capture alone costs a connection:
// connect, 1 kB echo, close, from a pod to an echo server on another host,
// directly vs. redirected to a trivial pass-through proxy on 15001 that
// dials the original destination with the in-pod socket factory (what
// ztunnel's outbound does before HBONE is involved).
func BenchmarkCaptureConnectEcho(b *testing.B) {
	lan := newLAN(b, "10.91.0.0/24")
	p := newCapturedPod(b, lan)
	plain, _, err := lan.Host("plain")
	if err != nil {
		b.Fatal(err)
	}
	target := serveOnHost(b, lan, func(c net.Conn) { io.Copy(c, c) })

	outboundPassThrough(b, p)

	msg, buf := make([]byte, 1024), make([]byte, 1024)
	for _, tc := range []struct {
		name string
		run  func(func() error) error
	}{{"direct", plain.Do}, {"captured", p.ns.Do}} {
		b.Run(tc.name, func(b *testing.B) {
			// The client runs on one thread inside its namespace for the
			// whole loop, so only the connection is measured.
			err := tc.run(func() error {
				for b.Loop() {
					conn, err := net.Dial("tcp", target.String())
					if err != nil {
						return err
					}
					if _, err := conn.Write(msg); err != nil {
						return err
					}
					if _, err := io.ReadFull(conn, buf); err != nil {
						return err
					}
					conn.Close()
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
