// Package podapp is the process the e2e node runner starts inside each pod's
// network namespace, in place of the pod's containers: an HTTP server on
// :8080 and a TCP echo server on :9000, both telling the caller which pod
// answered and which address it saw the caller come from. A real process
// (not a goroutine of the test) because the CNI agent finds a running pod's
// namespace the way it does on a node, by walking /proc for a process in it.
//
// A test binary becomes the app when started with Env set: its TestMain
// calls Main first.
package podapp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Env names the pod ("namespace/name") the process plays; set only in the
// app's environment.
const Env = "ZMESH_PODAPP"

// Ports the app listens on, on every address of its namespace.
const (
	HTTPPort = 8080
	EchoPort = 9000
)

// IsApp reports whether this process was started as a pod's app.
func IsApp() bool { return os.Getenv(Env) != "" }

// Main serves until SIGTERM and exits the process.
func Main() {
	pod := os.Getenv(Env)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, pod); err != nil {
		fmt.Fprintln(os.Stderr, "podapp:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Greeting is the line both servers answer with: "pod=<ns/name> from=<ip:port>".
func Greeting(pod string, remote net.Addr) string {
	return fmt.Sprintf("pod=%s from=%s", pod, remote)
}

// ParseGreeting splits a greeting into the pod and the caller's address.
func ParseGreeting(s string) (pod, from string, ok bool) {
	s = strings.TrimSpace(s)
	p, rest, ok1 := strings.Cut(s, " ")
	pod, ok2 := strings.CutPrefix(p, "pod=")
	from, ok3 := strings.CutPrefix(rest, "from=")
	return pod, from, ok1 && ok2 && ok3
}

func serve(ctx context.Context, pod string) error {
	var lc net.ListenConfig
	hl, err := lc.Listen(ctx, "tcp", fmt.Sprintf(":%d", HTTPPort))
	if err != nil {
		return err
	}
	el, err := lc.Listen(ctx, "tcp", fmt.Sprintf(":%d", EchoPort))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, Greeting(pod, stringAddr(r.RemoteAddr)))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(hl)
	go func() {
		for {
			c, err := el.Accept()
			if err != nil {
				return
			}
			go echo(c, pod)
		}
	}()
	<-ctx.Done()
	el.Close()
	srv.Close()
	return nil
}

// echo greets, then sends back every line it reads.
func echo(c net.Conn, pod string) {
	defer c.Close()
	if _, err := fmt.Fprintln(c, Greeting(pod, c.RemoteAddr())); err != nil {
		return
	}
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			if _, werr := io.WriteString(c, line); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

type stringAddr string

func (a stringAddr) Network() string { return "tcp" }
func (a stringAddr) String() string  { return string(a) }
