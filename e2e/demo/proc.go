package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one of the mesh's processes and its JSON log.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{}
}

// startProc starts bin and waits until GET ready answers 200.
func startProc(ctx context.Context, name, bin, logPath, ready string, args ...string) (*proc, error) {
	p := &proc{name: name, cmd: exec.Command(bin, args...), log: &lockedBuffer{}, done: make(chan struct{})}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p.cmd.Stdout = io.MultiWriter(p.log, logFile)
	p.cmd.Stderr = p.cmd.Stdout
	// Its own process group: a Ctrl-C reaches the demo alone, which tears
	// down in order (pods first, while the agents still answer CNI DEL);
	// and the kernel kills it if the demo dies without doing so.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.cmd.Wait(); logFile.Close(); close(p.done) }()
	err = waitFor(ctx, func() bool {
		select {
		case <-p.done:
			return true
		default:
		}
		_, err := httpGet(ctx, ready)
		return err == nil
	})
	select {
	case <-p.done:
		return nil, fmt.Errorf("%s exited while starting:\n%s", name, tail(p.log.String(), 20))
	default:
	}
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("%s not ready at %s:\n%s", name, ready, tail(p.log.String(), 20))
	}
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop is SIGTERM, then SIGKILL after 10 s. A nil proc is fine.
func (p *proc) stop() {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// logRecords returns the JSON log records whose msg is msg and whose
// attributes include every key/value of match.
func (p *proc) logRecords(msg string, match ...string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.log.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec["msg"] != msg {
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

func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
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

var errNoReply = errors.New("closed without a reply")
