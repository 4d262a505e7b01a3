package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"time"

	"github.com/zmesh/zmesh/e2e/bench/report"
	"github.com/zmesh/zmesh/e2e/proc"
)

// measureIdle opens n connections from the mesh client pod to the mesh
// server's HTTP port, has each answer one request (so both ztunnels and
// the server pod hold the whole tunnel), then leaves them open and quiet,
// and reads each ztunnel's live heap, RSS and goroutines before and
// after. The connections are closed before it returns.
func (e *env) measureIdle(ctx context.Context, n int) (*report.Idle, error) {
	client := e.pods[meshClient.name]
	target := netip.AddrPortFrom(meshServer.addr, httpPort).String()
	idle := &report.Idle{Conns: n}
	before := make([]ztMemory, len(e.zts))
	for i, z := range e.zts {
		var err error
		if before[i], err = z.snapshot(ctx); err != nil {
			return nil, err
		}
	}

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := client.Dial(ctx, "tcp", target)
		if err != nil {
			return nil, fmt.Errorf("connection %d of %d: %w", len(conns)+1, n, err)
		}
		conns = append(conns, c)
		if err := oneRequest(c, target); err != nil {
			return nil, fmt.Errorf("connection %d of %d: %w", len(conns), n, err)
		}
	}
	time.Sleep(2 * time.Second) // let the handshakes' garbage go
	for i, z := range e.zts {
		after, err := z.snapshot(ctx)
		if err != nil {
			return nil, err
		}
		idle.Ztunnels = append(idle.Ztunnels, report.IdleZtunnel{
			Node:              z.node,
			HeapPerConn:       (after.heap - before[i].heap) / float64(n),
			RSSPerConn:        (after.rss - before[i].rss) / float64(n),
			GoroutinesPerConn: float64(after.goroutines-before[i].goroutines) / float64(n),
		})
	}
	return idle, nil
}

// oneRequest sends a GET on c and reads the whole answer, leaving c open.
func oneRequest(c net.Conn, host string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /: %s", resp.Status)
	}
	return nil
}

// ztMemory is one reading of a ztunnel's memory.
type ztMemory struct {
	heap, rss  float64
	goroutines int
}

var goroutineTotal = regexp.MustCompile(`goroutine profile: total (\d+)`)

func (z *ztunnel) snapshot(ctx context.Context) (ztMemory, error) {
	var m ztMemory
	var err error
	if m.heap, m.rss, err = z.memory(ctx); err != nil {
		return m, err
	}
	body, err := proc.HTTPGet(ctx, "http://"+z.admin+"/debug/pprof/goroutine?debug=1")
	if err != nil {
		return m, err
	}
	g := goroutineTotal.FindStringSubmatch(body)
	if g == nil {
		return m, errors.New("goroutine profile without a total")
	}
	m.goroutines, err = strconv.Atoi(g[1])
	return m, err
}
