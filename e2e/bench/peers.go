package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/zmesh/zmesh/e2e/bench/report"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/proc"
)

// path is one way from a client pod to the servers.
type path struct {
	name      string
	client    *netenv.NS
	http      netip.AddrPort // where fortio sends requests
	iperf     netip.AddrPort // where iperf3 connects
	proxies   []*proc.Proc   // processes whose CPU carries this path
	ztunnels  []*ztunnel     // mesh only
	clientPod string
	// The L7 workloads' targets: where fortio -h2 and fortio -grpc go
	// (invalid: the path does not carry them).
	h2, grpc netip.AddrPort
	// tls: the client speaks TLS with a client certificate (nginx-mtls).
	tls bool
	// l7: the path parses HTTP; byte-pipe workloads (iperf, new
	// connections) do not run on it.
	l7 bool
	wp *waypoint // the waypoint path's waypoint
}

// runs reports whether workload w runs on the path.
func (p *path) runs(w string) bool {
	switch {
	case slices.Contains(report.L4Workloads, w):
		return !p.l7
	case slices.Contains(report.L7Workloads, w):
		if w == report.H2Max {
			return p.h2.IsValid()
		}
		return p.grpc.IsValid()
	}
	return true
}

// Ports the node-level proxies listen on.
const (
	stunnelHTTP, stunnelIperf       = 18080, 15201 // stunnel client, node-1
	stunnelTLSHTTP, stunnelTLSIperf = 18443, 15443 // stunnel server, node-2
	stunnelTLSGRPC                  = 18445        // stunnel server, node-2: nginx-mtls's upstream for gRPC
	haproxyHTTP, haproxyIperf       = 28080, 25201 // haproxy, node-2
)

// startPeers starts the servers in both server pods (fortio and iperf3),
// the stunnel pair and haproxy, and returns the four paths.
func (e *env) startPeers(ctx context.Context, fortio string) ([]*path, error) {
	logs := filepath.Join(e.tmp, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return nil, err
	}
	start := func(n *netenv.NS, name, bin string, args ...string) (*proc.Proc, error) {
		p, err := startIn(ctx, n, filepath.Join(logs, name+".log"), bin, args...)
		if err != nil {
			return nil, err
		}
		e.defer_(p.Stop)
		return p, nil
	}
	for _, s := range []podSpec{meshServer, plainServer, wpServer} {
		n := e.pods[s.name]
		if _, err := start(n, s.name+"-fortio", fortio, "server", "-quiet",
			"-http-port", netip.AddrPortFrom(s.addr, httpPort).String(),
			"-grpc-port", netip.AddrPortFrom(s.addr, grpcPort).String(), "-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled"); err != nil {
			return nil, err
		}
		if _, err := start(n, s.name+"-iperf3", "iperf3", "-s", "-B", s.addr.String(), "-p", fmt.Sprint(iperfPort)); err != nil {
			return nil, err
		}
	}

	// stunnel: the two-hop TLS tunnel a user would build by hand. Mutual
	// TLS 1.3 with a private CA, like the mesh's HBONE hop.
	pki := filepath.Join(e.tmp, "pki")
	e.pkiDir = pki
	if err := writePKI(pki); err != nil {
		return nil, err
	}
	n1, n2 := nodeAddrs[0], nodeAddrs[1]
	srv := plainServer.addr
	common := fmt.Sprintf("foreground = yes\npid =\nsyslog = no\ndebug = 3\nCAfile = %s\ncert = %s\nkey = %s\nverifyChain = yes\nsslVersionMin = TLSv1.3\n",
		filepath.Join(pki, "ca.pem"), filepath.Join(pki, "cert.pem"), filepath.Join(pki, "key.pem"))
	clientConf := common + fmt.Sprintf("client = yes\n[http]\naccept = %s:%d\nconnect = %s:%d\n[iperf]\naccept = %s:%d\nconnect = %s:%d\n",
		n1, stunnelHTTP, n2, stunnelTLSHTTP, n1, stunnelIperf, n2, stunnelTLSIperf)
	serverConf := common + fmt.Sprintf("[http]\naccept = %s:%d\nconnect = %s:%d\n[iperf]\naccept = %s:%d\nconnect = %s:%d\n[grpc]\naccept = %s:%d\nconnect = %s:%d\n",
		n2, stunnelTLSHTTP, srv, httpPort, n2, stunnelTLSIperf, srv, iperfPort, n2, stunnelTLSGRPC, srv, grpcPort)
	var stunnels []*proc.Proc
	for i, conf := range []string{clientConf, serverConf} {
		f := filepath.Join(e.tmp, fmt.Sprintf("stunnel-%s.conf", nodeNames[i]))
		if err := os.WriteFile(f, []byte(conf), 0o600); err != nil {
			return nil, err
		}
		p, err := start(e.node(nodeNames[i]).Host, "stunnel-"+nodeNames[i], "stunnel4", f)
		if err != nil {
			return nil, err
		}
		stunnels = append(stunnels, p)
	}

	// haproxy: one plain TCP hop on the server's node.
	hcfg := filepath.Join(e.tmp, "haproxy.cfg")
	if err := os.WriteFile(hcfg, []byte(fmt.Sprintf(`global
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
listen http
  bind %s:%d
  server s %s:%d
listen iperf
  bind %s:%d
  server s %s:%d
`, n2, haproxyHTTP, srv, httpPort, n2, haproxyIperf, srv, iperfPort)), 0o644); err != nil {
		return nil, err
	}
	hap, err := start(e.node(nodeNames[1]).Host, "haproxy", "haproxy", "-db", "-f", hcfg)
	if err != nil {
		return nil, err
	}

	l7, err := e.startL7Peers(start, pki, stunnels[1])
	if err != nil {
		return nil, err
	}

	pc, mc := e.pods[plainClient.name], e.pods[meshClient.name]
	paths := []*path{
		{name: report.Direct, client: pc, clientPod: plainClient.name, http: netip.AddrPortFrom(srv, httpPort), iperf: netip.AddrPortFrom(srv, iperfPort),
			h2: netip.AddrPortFrom(srv, httpPort), grpc: netip.AddrPortFrom(srv, grpcPort)},
		{name: report.Mesh, client: mc, clientPod: meshClient.name, http: netip.AddrPortFrom(meshServer.addr, httpPort), iperf: netip.AddrPortFrom(meshServer.addr, iperfPort),
			h2: netip.AddrPortFrom(meshServer.addr, httpPort), grpc: netip.AddrPortFrom(meshServer.addr, grpcPort),
			ztunnels: e.zts, proxies: []*proc.Proc{e.zts[0].Proc, e.zts[1].Proc}},
		{name: report.Stunnel, client: pc, clientPod: plainClient.name, http: netip.AddrPortFrom(n1, stunnelHTTP), iperf: netip.AddrPortFrom(n1, stunnelIperf), proxies: stunnels},
		{name: report.HAProxy, client: pc, clientPod: plainClient.name, http: netip.AddrPortFrom(n2, haproxyHTTP), iperf: netip.AddrPortFrom(n2, haproxyIperf), proxies: []*proc.Proc{hap}},
		// The waypoint path's proxies: both ztunnels and the waypoint
		// (the waypoint's own figures are kept apart too).
		{name: report.Waypoint, client: mc, clientPod: meshClient.name, l7: true, wp: e.wp,
			http: netip.AddrPortFrom(echoVIP, httpPort), h2: netip.AddrPortFrom(echoVIP, httpPort), grpc: netip.AddrPortFrom(echoVIP, grpcPort),
			ztunnels: e.zts, proxies: []*proc.Proc{e.zts[0].Proc, e.wp.Proc, e.zts[1].Proc}},
	}
	for _, x := range l7 {
		x.client, x.clientPod = pc, plainClient.name
		paths = append(paths, x)
	}
	// Every listener up and every path answering before anything is timed.
	for _, p := range paths {
		for _, q := range p.proxies {
			if !q.Running() {
				return nil, fmt.Errorf("%s exited:\n%s", q.Name, proc.Tail(q.Log(), 20))
			}
		}
		if err := proc.WaitFor(ctx, 20*time.Second, func() bool { return probe(ctx, p, e.pkiDir) == nil }); err != nil {
			return nil, fmt.Errorf("path %s does not answer: %v", p.name, probe(ctx, p, e.pkiDir))
		}
	}
	// The waypoint path must cross the waypoint: its request counter
	// moves with a probe (ztunnel would otherwise carry the VIP's traffic
	// straight to the pod, and the figures would be the L4 path's).
	before, err := e.wp.requests(ctx)
	if err != nil {
		return nil, fmt.Errorf("waypoint metrics: %w", err)
	}
	const probes = 5
	for range probes {
		if err := probe(ctx, paths[slices.IndexFunc(paths, func(x *path) bool { return x.wp != nil })], e.pkiDir); err != nil {
			return nil, err
		}
	}
	if err := proc.WaitFor(ctx, 5*time.Second, func() bool {
		after, err := e.wp.requests(ctx)
		return err == nil && after-before >= probes
	}); err != nil {
		after, _ := e.wp.requests(ctx)
		return nil, fmt.Errorf("the waypoint counted %.0f of %d probe requests through service %s: the waypoint path does not cross it", after-before, probes, echoService)
	}
	return paths, nil
}

// probe sends one HTTP request over the path and checks the answer.
func probe(ctx context.Context, p *path, pki string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var c net.Conn
	var err error
	if c, err = p.client.Dial(ctx, "tcp", p.http.String()); err != nil {
		return err
	}
	if p.tls {
		cfg, err := clientTLS(pki)
		if err != nil {
			c.Close()
			return err
		}
		cfg.ServerName = p.http.Addr().String() // an IP SAN of the certificate
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return fmt.Errorf("path %s: TLS: %w", p.name, err)
		}
		c = tc
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "GET /echo HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if n < 12 || string(buf[:12]) != "HTTP/1.1 200" {
		return fmt.Errorf("path %s: answer %q: %v", p.name, buf[:n], err)
	}
	return nil
}

// pkiName is the certificate's DNS name: nginx checks an upstream's
// certificate against a name, not an address.
const pkiName = "bench-node"

// clientTLS is the client side of the PKI: the certificate presented,
// the CA trusted.
func clientTLS(dir string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("pki: no CA certificate in ca.pem")
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

// writePKI writes a CA and one certificate (client and server use) signed
// by it, for stunnel: ECDSA P-256, like the mesh's SVIDs.
func writePKI(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench ca"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "bench node"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{nodeAddrs[0].AsSlice(), nodeAddrs[1].AsSlice(), proxyNodeAddr.AsSlice()}, DNSNames: []string{pkiName}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	for name, blk := range map[string]*pem.Block{
		"ca.pem": {Type: "CERTIFICATE", Bytes: caDER}, "cert.pem": {Type: "CERTIFICATE", Bytes: der}, "key.pem": {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(blk), 0o600); err != nil {
			return err
		}
	}
	return nil
}
