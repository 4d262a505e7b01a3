package hbone

import (
	"bytes"
	"context"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// A joined stream (ConnectRequest.Join) is handed to its caller before the
// server answered. Until the answer it keeps the request and its early
// data, so that a refusal the server made without processing the request
// (REFUSED_STREAM, or a GOAWAY below the stream's id) can be sent again on
// another connection of the pool, as Connect does for a stream it waits
// for. Bytes written after the early data and before the answer are not
// kept: once some have gone out, a refusal is final.

// joinState is a joined stream's memory of its request. The fields from
// held on are guarded by the stream's c.mu.
type joinState struct {
	// pool, key and req reopen the stream elsewhere (nil pool: no
	// retries, a ClientConn's stream); req has no EarlyData, held does.
	pool     *Pool
	key      Key
	req      ConnectRequest
	attempt  int
	deadline time.Time // of the Connect's context; zero: none

	held   []byte      // the early data, until the answer
	early  bool        // Connect is still writing the early data
	spent  bool        // bytes beyond the early data left before the answer
	timer  *time.Timer // fails the stream at deadline if no answer came
	closed bool        // the caller closed the stream
	// The retry runs once, for both directions of a Join: started by the
	// first to ask, done closed once next is known (nil: none).
	started bool
	done    chan struct{}
	next    *Stream
}

func newJoinState(r *ConnectRequest, p *Pool, k Key, attempt int) *joinState {
	j := &joinState{pool: p, key: k, req: *r, attempt: attempt}
	j.req.EarlyData = nil // the caller's buffer: it may reuse it
	if p != nil {
		j.held = holdEarly(r.EarlyData)
	}
	return j
}

// Early data held for a retry lives for one round trip: pooled buffers
// keep it from costing an allocation per tunnel.
const heldBufSize = 16 << 10

var heldPool = sync.Pool{New: func() any { return new([heldBufSize]byte) }}

func holdEarly(p []byte) []byte {
	if len(p) == 0 || len(p) > heldBufSize {
		return bytes.Clone(p)
	}
	return append(heldPool.Get().(*[heldBufSize]byte)[:0], p...)
}

func releaseHeld(p []byte) {
	if cap(p) == heldBufSize {
		heldPool.Put((*[heldBufSize]byte)(p[:heldBufSize]))
	}
}

// answeredLocked records that the answer came: nothing is held for a
// retry any more. c.mu held.
func (s *Stream) answeredLocked() {
	s.awaiting = false
	j := s.join
	releaseHeld(j.held)
	j.held = nil
	if j.timer != nil {
		j.timer.Stop()
	}
}

// statusError is the refusal the stream's answer carried.
func (s *Stream) statusError() *StatusError {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	e := &StatusError{Status: s.status}
	for _, h := range s.respHdr {
		if h.Name == ReasonHeader {
			e.Reason = h.Value
		}
	}
	return e
}

// answerExpired fails a joined stream still without an answer at its
// Connect's deadline, and resets it.
func (s *Stream) answerExpired() {
	c := s.c
	c.mu.Lock()
	if !s.awaiting || s.err != nil {
		c.mu.Unlock()
		return
	}
	s.failLocked(errAnswerTimeout)
	removed := s.removeLocked()
	c.mu.Unlock()
	c.queueCtrl(ctrlFrame{kind: ctrlRST, stream: s.id, val: uint32(http2.ErrCodeCancel)})
	if removed {
		c.streamClosed()
	}
}

// refused reports whether the stream is a joined one that ended without
// a 200: a socket joined to it is reset rather than ended.
func (s *Stream) refused() bool {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.join != nil && s.status != 200 && s.err != nil
}

// retried returns the stream that carries on this failed joined stream
// on another connection, opening it on the first call, or nil if there is
// none: the stream did not fail unprocessed before its answer, bytes
// beyond its early data were spent, it has no pool, or the retry failed.
// It may block for a dial; both directions of a Join call it and get the
// same answer.
func (s *Stream) retried() *Stream {
	j := s.join
	if j == nil {
		return nil
	}
	c := s.c
	c.mu.Lock()
	if s.err == nil {
		c.mu.Unlock()
		return nil
	}
	if j.started {
		done := j.done
		c.mu.Unlock()
		if done != nil {
			<-done
		}
		c.mu.Lock()
		next := j.next
		c.mu.Unlock()
		return next
	}
	j.started = true
	ok := j.pool != nil && s.status == 0 && !j.spent && retryable(s.err) && j.attempt < maxRetries
	held, ended := j.held, s.localEnded
	j.held = nil
	if !ok {
		c.mu.Unlock()
		releaseHeld(held)
		return nil
	}
	done := make(chan struct{})
	j.done = done
	c.mu.Unlock()

	next, _ := j.pool.rejoin(j, held, ended)
	releaseHeld(held) // the retry holds its own copy
	c.mu.Lock()
	j.next = next
	closed := j.closed
	c.mu.Unlock()
	close(done)
	if closed && next != nil {
		// The caller closed this stream while the retry was opening.
		next.Close()
	}
	return next
}

// rejoin opens the retry of a joined stream refused unprocessed: the same
// request with the held early data, and END_STREAM if the caller had
// ended its direction.
func (p *Pool) rejoin(j *joinState, held []byte, ended bool) (*Stream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultLimits().HandshakeTimeout)
	if !j.deadline.IsZero() {
		cancel()
		ctx, cancel = context.WithDeadline(context.Background(), j.deadline)
	}
	defer cancel()
	r := j.req
	r.EarlyData = held
	st, err := p.connect(ctx, j.key, &r, j.attempt+1)
	if err == nil && ended {
		if err = st.CloseWrite(); err != nil {
			st.Close()
			return nil, err
		}
	}
	return st, err
}

// Answered reports whether the server answered the tunnel 200 (following
// a joined stream's retry). A stream Connect waited for always was.
func (s *Stream) Answered() bool {
	for s != nil {
		c := s.c
		c.mu.Lock()
		status := s.status
		var next *Stream
		if s.join != nil {
			next = s.join.next
		}
		c.mu.Unlock()
		if status == 200 {
			return true
		}
		s = next
	}
	return false
}
