package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/zmesh/zmesh/e2e/bench/report"
	"github.com/zmesh/zmesh/e2e/netenv"
	"github.com/zmesh/zmesh/e2e/proc"
)

// Ports of the L7 proxies on node-3: HTTP/1.1, HTTP/2 and gRPC each on a
// listener of its own (nginx's http2 is a property of the listener).
const (
	nginxTLSHTTP, nginxTLSH2, nginxTLSGRPC = 38443, 38444, 38445
	nginxHTTP, nginxH2, nginxGRPC          = 38080, 38081, 38082
	hapHTTP, hapH2, hapGRPC                = 48080, 48081, 48082
)

// startL7Peers starts the waypoint's baselines on node-3: nginx with
// mutual TLS on both sides (its upstream is the stunnel server on node-2,
// which verifies nginx's client certificate and hands plain bytes to the
// server pod: two mutual-TLS hops, as through the waypoint), nginx in
// plain HTTP, and haproxy in HTTP mode. Each is a process of its own, so
// its CPU and memory are its path's alone.
func (e *env) startL7Peers(start func(n *netenv.NS, name, bin string, args ...string) (*proc.Proc, error), pki string, stunnelServer *proc.Proc) ([]*path, error) {
	at := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(proxyNodeAddr, port) }
	var out []*path
	for _, tlsToo := range []bool{true, false} {
		name := "nginx"
		if tlsToo {
			name = "nginx-mtls"
		}
		conf := filepath.Join(e.tmp, name+".conf")
		if err := os.WriteFile(conf, []byte(nginxConf(filepath.Join(e.tmp, name), pki, tlsToo)), 0o644); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Join(e.tmp, name), 0o755); err != nil {
			return nil, err
		}
		p, err := start(e.proxyHost(), name, "nginx", "-c", conf, "-p", filepath.Join(e.tmp, name), "-e", "stderr")
		if err != nil {
			return nil, err
		}
		if tlsToo {
			out = append(out, &path{name: report.NginxMTLS, l7: true, tls: true, http: at(nginxTLSHTTP), h2: at(nginxTLSH2), grpc: at(nginxTLSGRPC),
				proxies: []*proc.Proc{p, stunnelServer}})
		} else {
			out = append(out, &path{name: report.Nginx, l7: true, http: at(nginxHTTP), h2: at(nginxH2), grpc: at(nginxGRPC), proxies: []*proc.Proc{p}})
		}
	}
	hcfg := filepath.Join(e.tmp, "haproxy-http.cfg")
	if err := os.WriteFile(hcfg, []byte(haproxyHTTPConf()), 0o644); err != nil {
		return nil, err
	}
	hap, err := start(e.proxyHost(), "haproxy-http", "haproxy", "-db", "-f", hcfg)
	if err != nil {
		return nil, err
	}
	out = append(out, &path{name: report.HAProxyHTTP, l7: true, http: at(hapHTTP), h2: at(hapH2), grpc: at(hapGRPC), proxies: []*proc.Proc{hap}})
	return out, nil
}

// nginxConf is an nginx reverse proxy to the plain server pod, as a user
// would write one: kept-alive upstream connections, no access log. With
// mtls, every listener is TLS 1.3 requiring a client certificate of the
// bench's CA, and the upstream is the stunnel server on node-2 over TLS
// 1.3 with nginx's client certificate, verified against the CA.
func nginxConf(prefix, pki string, mtls bool) string {
	srv, n2 := plainServer.addr, nodeAddrs[1]
	ca, cert, key := filepath.Join(pki, "ca.pem"), filepath.Join(pki, "cert.pem"), filepath.Join(pki, "key.pem")
	head := fmt.Sprintf(`daemon off;
master_process on;
worker_processes auto;
pid %s/nginx.pid;
error_log stderr warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  keepalive_requests 1000000;
`, prefix)
	if !mtls {
		return head + fmt.Sprintf(`  upstream app { server %s:%d; keepalive 128; }
  upstream grpcapp { server %s:%d; keepalive 128; }
  server {
    listen %s:%d;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen %s:%d http2;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen %s:%d http2;
    location / { grpc_pass grpc://grpcapp; }
  }
}
`, srv, httpPort, srv, grpcPort, proxyNodeAddr, nginxHTTP, proxyNodeAddr, nginxH2, proxyNodeAddr, nginxGRPC)
	}
	tlsDown := fmt.Sprintf(`    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_client_certificate %s;
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
`, cert, key, ca)
	proxyTLS := fmt.Sprintf(`proxy_pass https://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate %s; proxy_ssl_certificate_key %s;
      proxy_ssl_trusted_certificate %s; proxy_ssl_verify on; proxy_ssl_name %s;
      proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;`, cert, key, ca, pkiName)
	return head + fmt.Sprintf(`  upstream app { server %s:%d; keepalive 128; }
  upstream grpcapp { server %s:%d; keepalive 128; }
  server {
    listen %s:%d ssl;
%s    location / { %s }
  }
  server {
    listen %s:%d ssl http2;
%s    location / { %s }
  }
  server {
    listen %s:%d ssl http2;
%s    location / { grpc_pass grpcs://grpcapp;
      grpc_ssl_certificate %s; grpc_ssl_certificate_key %s;
      grpc_ssl_trusted_certificate %s; grpc_ssl_verify on; grpc_ssl_name %s;
      grpc_ssl_protocols TLSv1.3; grpc_ssl_session_reuse on; }
  }
}
`, n2, stunnelTLSHTTP, n2, stunnelTLSGRPC,
		proxyNodeAddr, nginxTLSHTTP, tlsDown, proxyTLS,
		proxyNodeAddr, nginxTLSH2, tlsDown, proxyTLS,
		proxyNodeAddr, nginxTLSGRPC, tlsDown, cert, key, ca, pkiName)
}

// haproxyHTTPConf is haproxy in HTTP mode in front of the plain server
// pod: HTTP/1.1, h2c (prior knowledge) and gRPC (h2c both sides)
// listeners, upstream connections reused.
func haproxyHTTPConf() string {
	srv := plainServer.addr
	return fmt.Sprintf(`global
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
frontend h1
  bind %s:%d
  default_backend app
frontend h2
  bind %s:%d proto h2
  default_backend app
frontend grpc
  bind %s:%d proto h2
  default_backend grpcapp
backend app
  server s %s:%d
backend grpcapp
  server s %s:%d proto h2
`, proxyNodeAddr, hapHTTP, proxyNodeAddr, hapH2, proxyNodeAddr, hapGRPC, srv, httpPort, srv, grpcPort)
}
