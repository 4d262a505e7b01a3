// Package proc runs the mesh's processes (zmeshd, agents, ztunnels) for
// the e2e suite, the demo and the benchmark: started from the freshly built
// binaries with the flags their DaemonSet or Deployment would pass, logs
// kept searchable, stopped with SIGTERM.
package proc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one of the mesh's processes (zmeshd, an agent, a ztunnel), run
// from the freshly built binary with the flags its DaemonSet or Deployment
// would pass. Its stderr (JSON logs) goes to a file and stays searchable.
type Proc struct {
	Name    string
	Bin     string
	Args    []string
	LogPath string
	// Ready is polled after start: an http URL that must answer 200.
	Ready string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  lockedBuffer
	pids []int
}

// Start starts the process and waits until Ready answers.
func (p *Proc) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.Bin, p.Args...)
	cmd.Stdout = io.MultiWriter(&p.log, f)
	cmd.Stderr = cmd.Stdout
	// Own process group: a Ctrl-C reaches the test, which tears down in
	// order; and the kernel kills it if the test dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	p.cmd, p.done = cmd, done
	p.pids = append(p.pids, cmd.Process.Pid)
	if p.Ready == "" {
		return nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("%s exited while starting:\n%s", p.Name, Tail(p.log.String(), 30))
		default:
		}
		if code, _, err := httpGet(ctx, p.Ready); err == nil && code == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stopLocked()
			return fmt.Errorf("%s not ready at %s:\n%s", p.Name, p.Ready, Tail(p.log.String(), 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits (SIGKILL after 20 s). Stopping a stopped
// process, or a nil one, does nothing.
func (p *Proc) Stop() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLocked()
}

func (p *Proc) stopLocked() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
}

// Running reports whether the process is up.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Pid is the current process id (0 when stopped).
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Pids lists the process ids of every run, for leftover checks.
func (p *Proc) Pids() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.pids)
}

// Log returns everything the process (all its runs) wrote.
func (p *Proc) Log() string { return p.log.String() }

// LogRecords returns the JSON log records whose msg is msg (all when
// empty) and whose attributes include every key/value pair of match.
func (p *Proc) LogRecords(msg string, match ...string) []map[string]any {
	return LogRecordsOf(strings.NewReader(p.log.String()), msg, match...)
}

// LogRecordsOf reads JSON log lines from r and returns those with message
// msg (any if empty) whose keys have the given values (key, value, ...).
func LogRecordsOf(r io.Reader, msg string, match ...string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) != nil || msg != "" && rec["msg"] != msg {
			continue
		}
		for i := 0; i+1 < len(match); i += 2 {
			if fmt.Sprint(rec[match[i]]) != match[i+1] {
				continue next
			}
		}
		out = append(out, rec)
	}
	return out
}

func httpGet(ctx context.Context, url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// HTTPGet fetches a URL of one of the mesh's own endpoints (metrics,
// config_dump, syncz) and fails on a non-200 answer.
func HTTPGet(ctx context.Context, url string) (string, error) {
	code, body, err := httpGet(ctx, url)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET %s: %d %s", url, code, strings.TrimSpace(body))
	}
	return body, err
}

// WaitFor polls cond every 50 ms until it holds, for limit at most: the
// wait for a process to be ready or to have done something.
func WaitFor(ctx context.Context, limit time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// FreeAddr returns a loopback address with a port free right now.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
