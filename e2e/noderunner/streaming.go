package noderunner

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// Streaming serves the part of the kubelet's API that `kubectl exec`,
// `kubectl port-forward` and `kubectl logs` reach through the API server,
// for the pods a runner runs:
//
//	POST /exec/{namespace}/{pod}/{container}?command=…&input=1&output=1&error=1
//	POST /portForward/{namespace}/{pod}
//	GET  /containerLogs/{namespace}/{pod}/{container}?tailLines=N&follow=true
//
// (and the same with the pod's uid before the container). The streams are
// the kubelet's own protocols (SPDY and WebSocket, served by the package the
// kubelet uses). A command runs in the pod's namespaces: network, and mount
// when the pod has a process of its own (a zmesh image, whose volumes are
// mounted in its mount namespace); a port is dialled on the pod's loopback,
// as a container runtime does. TTYs are not offered.
//
// Every caller must present a client certificate the cluster CA signed (the
// API server's kubelet client certificate) and be allowed nodes/proxy on
// this node by the API server (a SubjectAccessReview), as a kubelet with
// webhook authorization checks it.
type Streaming struct {
	// Node is the node's name (the SubjectAccessReview's resource name).
	Node string
	// Client asks the API server for the SubjectAccessReviews.
	Client kubernetes.Interface
	// ClientCAs verifies callers' certificates.
	ClientCAs *x509.CertPool
	// Pod finds a running pod by namespace and name, and its log file.
	Pod func(namespace, name string) (*RunningPod, string)
	// AppPath, when set, is the PATH of commands run in pods that run the
	// App (not a zmesh image): where the image's own commands would be,
	// such as the echo images' client.
	AppPath string
	// AppDNS, when valid, is the cluster DNS that commands run in pods
	// that run the App resolve names with: their /etc/resolv.conf (bound
	// in a mount namespace of the command's own) names it with the pod's
	// search domains, as a container's does.
	AppDNS netip.Addr
	Log    *slog.Logger
}

// streamIdle and streamCreation are the kubelet's defaults.
const (
	streamIdle     = 4 * time.Hour
	streamCreation = remotecommand.DefaultStreamCreationTimeout
)

// TLSConfig returns the server side TLS configuration: cert serves, callers
// must present a certificate ClientCAs verifies.
func (s *Streaming) TLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    s.ClientCAs,
		MinVersion:   tls.VersionTLS12,
	}
}

// Serve serves the API on ln (a TLS listener made with TLSConfig) until ctx
// ends.
func (s *Streaming) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		<-ctx.Done()
		hs.Close()
	}()
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (s *Streaming) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

// ServeHTTP authenticates and authorizes the caller, then serves the call.
func (s *Streaming) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		http.Error(w, "a client certificate is required", http.StatusUnauthorized)
		return
	}
	leaf := r.TLS.VerifiedChains[0][0]
	if err := s.authorize(r.Context(), leaf, r.Method); err != nil {
		s.log().Warn("streaming call refused", "user", leaf.Subject.CommonName, "path", r.URL.Path, "reason", err.Error())
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) < 3 {
		http.NotFound(w, r)
		return
	}
	op, ns, name := parts[0], parts[1], parts[2]
	rp, logFile := s.Pod(ns, name)
	if rp == nil {
		http.Error(w, fmt.Sprintf("pod %s/%s is not running on node %s", ns, name, s.Node), http.StatusNotFound)
		return
	}
	// An optional uid comes before the container: /{op}/{ns}/{pod}[/{uid}]/{container}.
	if op != "portForward" && len(parts) == 5 {
		if parts[3] != string(rp.UID) {
			http.Error(w, fmt.Sprintf("pod %s/%s has uid %s, not %s", ns, name, rp.UID, parts[3]), http.StatusNotFound)
			return
		}
		parts = append(parts[:3], parts[4])
	}
	switch {
	case op == "exec" && len(parts) == 4:
		opts, err := remotecommand.NewOptions(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		cmd := r.URL.Query()["command"]
		if len(cmd) == 0 {
			http.Error(w, "exec: no command", http.StatusBadRequest)
			return
		}
		if opts.TTY {
			http.Error(w, "exec: this node offers no TTY", http.StatusBadRequest)
			return
		}
		remotecommand.ServeExec(w, r, podExecutor{rp, s.AppPath, s.AppDNS}, ns+"/"+name, string(rp.UID), parts[3], cmd, opts,
			streamIdle, streamCreation, remotecommand.SupportedStreamingProtocols)
	case op == "portForward" && (len(parts) == 3 || len(parts) == 4):
		opts, err := portforward.NewV4Options(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		portforward.ServePortForward(w, r, podForwarder{rp}, ns+"/"+name, string(rp.UID), opts,
			streamIdle, streamCreation, portforward.SupportedProtocols)
	case op == "containerLogs" && len(parts) == 4:
		s.serveLogs(w, r, logFile)
	default:
		http.NotFound(w, r)
	}
}

// authorize asks the API server whether the certificate's user may use
// this node's API (nodes/proxy), as a kubelet with webhook authorization.
func (s *Streaming) authorize(ctx context.Context, user *x509.Certificate, method string) error {
	verb := "get"
	if method == http.MethodPost {
		verb = "create"
	}
	sar, err := s.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   user.Subject.CommonName,
			Groups: user.Subject.Organization,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Resource: "nodes", Subresource: "proxy", Name: s.Node,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("authorization: %w", err)
	}
	if !sar.Status.Allowed {
		return fmt.Errorf("user %q may not %s nodes/proxy on %s", user.Subject.CommonName, verb, s.Node)
	}
	return nil
}

// serveLogs writes the pod's log file: its last tailLines lines when
// given, and with follow=true what is appended until the caller goes.
func (s *Streaming) serveLogs(w http.ResponseWriter, r *http.Request, file string) {
	f, err := os.Open(file)
	if err != nil {
		http.Error(w, fmt.Sprintf("logs: %v", err), http.StatusNotFound)
		return
	}
	defer f.Close()
	q := r.URL.Query()
	if t := q.Get("tailLines"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			http.Error(w, fmt.Sprintf("tailLines %q: want a number of lines", t), http.StatusBadRequest)
			return
		}
		if err := seekTail(f, n); err != nil {
			http.Error(w, fmt.Sprintf("logs: %v", err), http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	if _, err := io.Copy(w, f); err != nil || q.Get("follow") != "true" {
		return
	}
	fl, _ := w.(http.Flusher)
	for {
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := io.Copy(w, f); err != nil {
			return
		}
	}
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	var starts []int64 // offsets of line starts, the last n+1 kept
	var off int64
	br := bufio.NewReader(f)
	starts = append(starts, 0)
	for {
		line, err := br.ReadSlice('\n')
		off += int64(len(line))
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			break
		}
		starts = append(starts, off)
		if len(starts) > n+1 {
			starts = starts[1:]
		}
	}
	// A last line without its newline counts as a line.
	if off > starts[len(starts)-1] {
		starts = append(starts, off)
		if len(starts) > n+1 {
			starts = starts[1:]
		}
	}
	_, err := f.Seek(starts[0], io.SeekStart)
	return err
}

// podExecutor runs commands in a pod's namespaces: network, mount and UTS
// (its hostname).
type podExecutor struct {
	p       *RunningPod
	appPath string
	appDNS  netip.Addr
}

func (e podExecutor) ExecInContainer(ctx context.Context, _, _, _ string, cmd []string, in io.Reader, out, errw io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	var c *exec.Cmd
	if pid := e.p.Pid(); pid > 0 {
		args := []string{"--target", strconv.Itoa(pid), "--net", "--mount", "--uts", "--"}
		if e.p.Container == nil && e.appDNS.IsValid() {
			conf, err := e.resolvConf()
			if err != nil {
				return err
			}
			defer os.Remove(conf)
			args = append(args, "unshare", "--mount", "--propagation", "private", "--",
				"sh", "-c", `mount --bind "$0" /etc/resolv.conf && exec "$@"`, conf)
		}
		c = exec.CommandContext(ctx, "nsenter", append(args, cmd...)...)
		if e.p.Container == nil && e.appPath != "" {
			c.Env = append(os.Environ(), "PATH="+e.appPath)
		}
	} else {
		c = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.p.NS.Name}, cmd...)...)
	}
	c.Stdin, c.Stdout, c.Stderr = in, out, errw
	if in == nil {
		c.Stdin = nil
	}
	err := c.Run()
	if out != nil {
		out.Close()
	}
	if errw != nil {
		errw.Close()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return utilexec.CodeExitError{Err: err, Code: ee.ExitCode()}
	}
	return err
}

// resolvConf writes the resolv.conf of a command run in an App pod: the
// cluster DNS with the pod namespace's search domains.
func (e podExecutor) resolvConf() (string, error) {
	f, err := os.CreateTemp("", "resolv-"+e.p.Namespace+"-"+e.p.Name+"-*.conf")
	if err != nil {
		return "", err
	}
	defer f.Close()
	const suffix = "cluster.local"
	_, err = fmt.Fprintf(f, "nameserver %s\nsearch %s.svc.%s svc.%s %s\noptions ndots:5\n", e.appDNS, e.p.Namespace, suffix, suffix, suffix)
	return f.Name(), err
}

// podForwarder connects a port-forward stream to a port on the pod's
// loopback.
type podForwarder struct{ p *RunningPod }

func (f podForwarder) PortForward(ctx context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := f.p.NS.Dial(dctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	cancel()
	if err != nil {
		return fmt.Errorf("port %d of pod %s/%s: %w", port, f.p.Namespace, f.p.Name, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	// The caller's bytes go to the app (its end closes the app's
	// writing half); the app's come back until it closes.
	callerDone := make(chan struct{})
	go func() {
		defer close(callerDone)
		io.Copy(c, stream)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	io.Copy(stream, c)
	// Half-close towards the caller, then wait for it to close its side:
	// returning at once would let the stream be torn down before the
	// caller read what the app sent last.
	stream.Close()
	select {
	case <-callerDone:
	case <-ctx.Done():
	}
	return nil
}
