package hbone

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// ErrConnClosed is returned by stream operations after the connection ended.
var ErrConnClosed = errors.New("hbone: connection closed")

// errGoingAway is returned when opening a stream on a connection that has
// sent or received GOAWAY.
var errGoingAway = errors.New("hbone: connection is going away")

// conn is one HTTP/2 connection, client or server side. Its read loop is the
// only reader of the socket and never blocks on anything but the socket: it
// must keep reading while writers are stuck on a full send buffer, or two
// peers writing to each other deadlock. Control frames it needs to send are
// therefore queued and written by whoever holds the write lock next.
type conn struct {
	nc     net.Conn
	fr     *http2.Framer
	br     *bufio.Reader
	guard  headerGuard // between br and fr
	bw     *bufio.Writer
	client bool
	// batch, when the TLS connection runs on one, gathers the records of
	// a flush into one socket write (see batchConn).
	batch *batchConn

	// wmu serialises frame writes. A holder flushes before unlocking
	// unless another writer waits for it (wwait, counted by lockWrite):
	// then the frames go out with that writer's, in one TLS record and
	// one socket write, and the last writer of a burst flushes for all.
	wmu   sync.Mutex
	wwait atomic.Int32
	henc  *hpack.Encoder
	hbuf  bytes.Buffer
	dhdr  [9]byte // writeDataLocked's frame header

	// ctrl holds control frames waiting for the write lock, at most
	// maxQueuedCtrl: a peer that makes us answer faster than it reads
	// (PINGs, SETTINGS) is cut off rather than buffered for. ctrlStop
	// ends queueing once the connection is being aborted.
	ctrlMu   sync.Mutex
	ctrl     []ctrlFrame
	ctrlWake chan struct{}
	ctrlStop bool

	// abortReq, once set, makes the read loop abort the connection with
	// GOAWAY (see abort): set by whoever finds the peer abusing it, or by
	// the idle timer.
	abortReq atomic.Pointer[abortRequest]
	abortMu  sync.Mutex // orders requestAbort's deadline before abort's
	// onLimit, if set, learns the name of a limit the peer ran into.
	onLimit func(limit string)

	// mu guards everything below and is the lock of every stream's cond.
	mu      sync.Mutex
	streams map[uint32]*Stream
	nextID  uint32 // client: next stream id to open
	lastID  uint32 // server: highest stream id seen
	// sendWindow is the peer's connection-level window for our DATA.
	sendWindow int64
	// peer settings that shape what we send.
	peerInitialWindow int32
	peerMaxFrame      uint32
	peerMaxStreams    uint32
	// recvUnacked counts consumed bytes not yet returned by WINDOW_UPDATE.
	recvUnacked int32
	goingAway   bool // GOAWAY sent or received: no new streams
	// takeUpTo is, once this server sent GOAWAY, the highest stream id it
	// still takes: the one it advertised.
	takeUpTo uint32
	// pings are our PINGs awaiting their ACK, by payload.
	pings   map[[8]byte]chan struct{}
	pingSeq uint64
	err     error
	done    chan struct{} // closed when the read loop exits
	// onStreamClosed is called once for every stream leaving the
	// connection, and onGoAway once when the connection stops taking new
	// streams (GOAWAY either way, or failure). Both run without locks held.
	onStreamClosed func()
	onGoAway       func()
	goAwayNotified bool

	streamWindow int32
	connWindow   int32

	// Server side: the advertised SETTINGS_MAX_CONCURRENT_STREAMS, the
	// handlers running (a handler outlives its stream when the peer
	// resets it, and keeps its slot until it returns), and the streams
	// refused in a row for want of a slot.
	maxStreams    uint32
	handlers      int
	refusedStreak int
	// idle closes a server connection that has had no handler for a
	// while (first for FirstStreamTimeout, then for IdleTimeout).
	idle        *time.Timer
	idleTimeout time.Duration
}

// maxQueuedCtrl bounds the control frames waiting for the writer. Our own
// (WINDOW_UPDATE, RST_STREAM) number a few per open stream; the rest
// answer the peer's PINGs and SETTINGS, and a peer that does not read the
// answers has no business sending more.
const maxQueuedCtrl = 10000

// abortLinger is how long an aborted connection is kept for its GOAWAY to
// reach the peer: the peer's input is read and dropped meanwhile, so that
// closing does not reset the connection and destroy the GOAWAY with it.
const abortLinger = 5 * time.Second

// abortRequest is why a connection must end, and with what GOAWAY.
type abortRequest struct {
	code http2.ErrCode
	last uint32 // 0: the highest stream id seen
	err  error
	// refused: a connection refused as it opened. It is counted nowhere
	// any more, so it is not kept for the peer to read: its GOAWAY gets
	// refusedLinger to go out, and the peer's input is not drained.
	refused bool
}

// refusedLinger bounds the GOAWAY write of a refused connection.
const refusedLinger = time.Second

func (r *abortRequest) linger() time.Duration {
	if r.refused {
		return refusedLinger
	}
	return abortLinger
}

// errCalm is returned by frame handlers for a peer that abuses the
// connection: the read loop aborts it with GOAWAY(ENHANCE_YOUR_CALM).
type errCalm struct {
	limit  string
	reason string
}

func (e *errCalm) Error() string { return "hbone: peer exceeded " + e.limit + ": " + e.reason }

// limitOf names the limit behind an abort's error, "" if none.
func limitOf(err error) string {
	var calm *errCalm
	var hb *errHeaderBlock
	switch {
	case errors.As(err, &calm):
		return calm.limit
	case errors.As(err, &hb):
		return LimitHeaderBlock
	}
	return ""
}

// idleExpired aborts a server connection that still has no handler: it
// takes no new stream from here on, and says so with GOAWAY(NO_ERROR).
func (c *conn) idleExpired() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.handlers > 0 || c.err != nil {
		return
	}
	if !c.goingAway {
		c.goingAway = true
		c.takeUpTo = c.lastID
	}
	c.requestAbort(&abortRequest{code: http2.ErrCodeNo, err: errIdle})
}

// errIdle ends a connection that had no stream for its idle timeout.
var errIdle = errors.New("hbone: connection idle")

type ctrlKind uint8

const (
	ctrlWindowUpdate ctrlKind = iota
	ctrlSettingsAck
	ctrlPingAck
	ctrlPing
	ctrlRST
	ctrlGoAway
)

type ctrlFrame struct {
	kind   ctrlKind
	stream uint32
	val    uint32
	data   [8]byte
}

func newConn(nc net.Conn, client bool, streamWindow, connWindow int32) *conn {
	c := &conn{
		nc:                nc,
		client:            client,
		streams:           make(map[uint32]*Stream),
		sendWindow:        initialWindow,
		peerInitialWindow: initialWindow,
		peerMaxFrame:      16384,
		peerMaxStreams:    serverMaxConcurrentStreams,
		maxStreams:        serverMaxConcurrentStreams,
		done:              make(chan struct{}),
		ctrlWake:          make(chan struct{}, 1),
		streamWindow:      streamWindow,
		connWindow:        connWindow,
	}
	if client {
		c.nextID = 1
	}
	// The TLS handshake is over: batching can start.
	if c.batch = batcherOf(nc); c.batch != nil {
		c.batch.arm()
	}
	c.bw = bufio.NewWriterSize(nc, writeBufferSize)
	c.br = bufio.NewReaderSize(nc, 64<<10)
	c.guard.r = c.br
	c.fr = http2.NewFramer(c.bw, &c.guard)
	c.fr.SetMaxReadFrameSize(maxReadFrameSize)
	// A DATA frame is done with before the next is read (its payload is
	// delivered or copied at once): one frame object for all of them.
	c.fr.SetReuseFrames()
	c.fr.MaxHeaderListSize = maxHeaderListSize
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.ReadMetaHeaders.SetMaxStringLength(maxHeaderListSize)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// writePreface sends our half of the connection setup: the client preface
// (client only), SETTINGS, and a WINDOW_UPDATE growing the connection window
// from the RFC's 64 KiB to ours.
func (c *conn) writePreface() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.client {
		if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
	}
	settings := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: uint32(c.streamWindow)},
		{ID: http2.SettingMaxFrameSize, Val: maxReadFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
	}
	if c.client {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.maxStreams})
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		return err
	}
	if d := c.connWindow - initialWindow; d > 0 {
		if err := c.fr.WriteWindowUpdate(0, uint32(d)); err != nil {
			return err
		}
	}
	return c.flushLocked()
}

// flushLocked sends what the HTTP/2 writer holds: through TLS into the
// batch, then the batch to the socket. wmu must be held.
func (c *conn) flushLocked() error {
	err := c.bw.Flush()
	if c.batch != nil {
		// Even after a failed flush: records TLS already made belong on
		// the wire in order, and a failed socket fails the batch too.
		if berr := c.batch.flush(); err == nil {
			err = berr
		}
	}
	return err
}

// readPreface consumes the client preface (server side) and the peer's first
// SETTINGS frame, which RFC 9113 §3.4 requires to come first.
func (c *conn) readPreface() error {
	if !c.client {
		buf := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c.br, buf); err != nil {
			return fmt.Errorf("read client preface: %w", err)
		}
		if string(buf) != http2.ClientPreface {
			return errors.New("bad client preface: not HTTP/2")
		}
	}
	f, err := c.fr.ReadFrame()
	if err != nil {
		return fmt.Errorf("read peer settings: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return fmt.Errorf("first frame from peer is %v, want SETTINGS", f.Header().Type)
	}
	return c.handleSettings(sf)
}

// maxSettingsPerFrame bounds the settings of one SETTINGS frame: there are
// six, and a frame repeating INITIAL_WINDOW_SIZE by the ten thousand would
// walk every stream each time.
const maxSettingsPerFrame = 100

// handleSettings applies the peer's SETTINGS and queues the ACK.
func (c *conn) handleSettings(sf *http2.SettingsFrame) error {
	if sf.NumSettings() > maxSettingsPerFrame {
		return &errCalm{limit: LimitSettingsFrameSize, reason: fmt.Sprintf("%d settings in one frame", sf.NumSettings())}
	}
	c.mu.Lock()
	err := sf.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			// RFC 9113 §6.9.2: the change applies to every open stream.
			delta := int64(s.Val) - int64(c.peerInitialWindow)
			c.peerInitialWindow = int32(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if delta > 0 {
					st.cond.Broadcast()
				}
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		}
		return nil
	})
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.queueCtrl(ctrlFrame{kind: ctrlSettingsAck})
	return nil
}

// queueCtrl queues a control frame for the control writer, or for whoever
// holds the write lock first.
func (c *conn) queueCtrl(f ctrlFrame) {
	c.pushCtrl(f)
	c.tryFlushCtrl()
}

// pushCtrl queues f unless maxQueuedCtrl frames wait already: then the
// connection is aborted (a dropped WINDOW_UPDATE or RST_STREAM would
// leave it wrong, and an overflow is the peer's doing).
func (c *conn) pushCtrl(f ctrlFrame) {
	c.ctrlMu.Lock()
	if c.ctrlStop {
		c.ctrlMu.Unlock()
		return
	}
	if len(c.ctrl) >= maxQueuedCtrl {
		c.ctrlStop = true
		c.ctrlMu.Unlock()
		c.requestAbort(&abortRequest{
			code: http2.ErrCodeEnhanceYourCalm,
			err:  &errCalm{limit: LimitControlFrames, reason: fmt.Sprintf("%d control frames queued unread", maxQueuedCtrl)},
		})
		return
	}
	c.ctrl = append(c.ctrl, f)
	c.ctrlMu.Unlock()
}

// requestAbort makes the read loop abort the connection: at once if it is
// handling a frame, else by waking it from its read with a deadline in
// the past. It never blocks, and may be called with c.mu held.
func (c *conn) requestAbort(r *abortRequest) {
	c.abortMu.Lock()
	defer c.abortMu.Unlock()
	if c.abortReq.CompareAndSwap(nil, r) {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
}

var aLongTimeAgo = time.Unix(1, 0)

// tryFlushCtrl wakes the control writer if frames are waiting. It never
// blocks: the read loop calls it.
func (c *conn) tryFlushCtrl() {
	c.ctrlMu.Lock()
	pending := len(c.ctrl) > 0
	c.ctrlMu.Unlock()
	if pending {
		select {
		case c.ctrlWake <- struct{}{}:
		default:
		}
	}
}

// ctrlLoop writes queued control frames. It is the only place besides data
// writers that blocks on the socket, so the read loop never does: if both
// peers' read loops could block on writes while both send buffers are full,
// neither would read again.
func (c *conn) ctrlLoop() {
	for {
		select {
		case <-c.ctrlWake:
		case <-c.done:
			return
		}
		c.lockWrite()
		err := c.writeCtrlLocked()
		if err == nil {
			err = c.flushLocked()
		}
		c.wmu.Unlock()
		if err != nil {
			c.fail(err)
			return
		}
	}
}

// lockWrite takes wmu, counted as a waiter meanwhile so that the holder
// leaves its flush to us.
func (c *conn) lockWrite() {
	c.wwait.Add(1)
	c.wmu.Lock()
	c.wwait.Add(-1)
}

// unlockWrite writes any queued control frames, flushes unless a writer
// waiting in lockWrite will, and releases wmu.
func (c *conn) unlockWrite() error {
	err := c.writeCtrlLocked()
	if c.wwait.Load() == 0 {
		if ferr := c.flushLocked(); err == nil {
			err = ferr
		}
	}
	c.wmu.Unlock()
	if err != nil {
		c.fail(err)
		return err
	}
	c.tryFlushCtrl()
	return nil
}

func (c *conn) writeCtrlLocked() error {
	c.ctrlMu.Lock()
	frames := c.ctrl
	c.ctrl = nil
	c.ctrlMu.Unlock()
	for _, f := range frames {
		var err error
		switch f.kind {
		case ctrlWindowUpdate:
			err = c.fr.WriteWindowUpdate(f.stream, f.val)
		case ctrlSettingsAck:
			err = c.fr.WriteSettingsAck()
		case ctrlPingAck:
			err = c.fr.WritePing(true, f.data)
		case ctrlPing:
			err = c.fr.WritePing(false, f.data)
		case ctrlRST:
			err = c.fr.WriteRSTStream(f.stream, http2.ErrCode(f.val))
		case ctrlGoAway:
			err = c.fr.WriteGoAway(f.stream, http2.ErrCode(f.val), nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// writeHeaders encodes and writes a HEADERS frame and flushes.
func (c *conn) writeHeaders(streamID uint32, endStream bool, fields []hpack.HeaderField) error {
	c.lockWrite()
	if err := c.writeHeadersLocked(streamID, endStream, fields); err != nil {
		c.wmu.Unlock()
		c.fail(err)
		return err
	}
	return c.unlockWrite()
}

// writeHeadersLocked writes a HEADERS frame, with CONTINUATIONs when the
// block exceeds the peer's frame size. wmu must be held.
func (c *conn) writeHeadersLocked(streamID uint32, endStream bool, fields []hpack.HeaderField) error {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	c.mu.Lock()
	max := int(c.peerMaxFrame)
	c.mu.Unlock()
	first := block
	if len(first) > max {
		first = block[:max]
	}
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID:      streamID,
		BlockFragment: first,
		EndStream:     endStream,
		EndHeaders:    len(first) == len(block),
	})
	for rest := block[len(first):]; err == nil && len(rest) > 0; {
		n := min(len(rest), max)
		err = c.fr.WriteContinuation(streamID, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	return err
}

// writeDataLocked writes a DATA frame carrying p, which the caller sized
// to the peer's frame size and its credit. The framer's WriteData would
// copy p into a buffer of its own, kept as large as the largest frame
// for the connection's life; here the header goes into the write buffer
// and p after it, of which the write buffer copies what fits (64 KiB at
// most, filling whole TLS records) and hands the rest to TLS as it is.
// wmu must be held.
func (c *conn) writeDataLocked(id uint32, p []byte) error {
	h := &c.dhdr
	h[0], h[1], h[2] = byte(len(p)>>16), byte(len(p)>>8), byte(len(p))
	h[3], h[4] = byte(http2.FrameData), 0
	binary.BigEndian.PutUint32(h[5:], id)
	if _, err := c.bw.Write(h[:]); err != nil {
		return err
	}
	_, err := c.bw.Write(p)
	return err
}

// fail ends the connection with err: every stream sees the error, and the
// socket is closed so the read loop exits.
func (c *conn) fail(err error) { c.end(err, true) }

// end fails the connection with err and, if closeSocket, closes it; abort
// keeps the socket for its GOAWAY.
func (c *conn) end(err error, closeSocket bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	c.goingAway = true
	closed := 0
	for _, st := range c.streams {
		st.failLocked(err)
		if st.removeLocked() {
			closed++
		}
	}
	if c.idle != nil {
		c.idle.Stop()
	}
	c.mu.Unlock()
	if closeSocket {
		c.nc.Close()
	}
	for range closed {
		c.streamClosed()
	}
	c.notifyGoAway()
}

// Close closes the connection at once, failing its streams. One being
// aborted keeps its socket until its GOAWAY went out, abortLinger at most.
func (c *conn) Close() error {
	c.fail(ErrConnClosed)
	return nil
}

// goAway sends GOAWAY(NO_ERROR): the peer opens no more streams here, live
// ones finish.
func (c *conn) goAway() {
	c.mu.Lock()
	if c.goingAway {
		c.mu.Unlock()
		return
	}
	c.goingAway = true
	last := c.lastID
	c.takeUpTo = last
	c.mu.Unlock()
	c.queueCtrl(ctrlFrame{kind: ctrlGoAway, stream: last, val: uint32(http2.ErrCodeNo)})
	c.notifyGoAway()
}

// goAwayGraceful is a server's first GOAWAY of RFC 9113 §6.8: it advertises
// the highest possible stream id, so a CONNECT the client sent before it
// saw the GOAWAY is still served, and it sends a PING behind it. The
// returned channel closes with the PING's ACK: by then every stream the
// client opened before reading the GOAWAY has arrived (one ordered byte
// stream), so a connection with no streams left is safe to close.
func (c *conn) goAwayGraceful() <-chan struct{} {
	const maxStreamID = 1<<31 - 1
	c.mu.Lock()
	c.goingAway = true
	c.takeUpTo = maxStreamID
	c.mu.Unlock()
	c.queueCtrl(ctrlFrame{kind: ctrlGoAway, stream: maxStreamID, val: uint32(http2.ErrCodeNo)})
	c.notifyGoAway()
	return c.ping()
}

// ping sends a PING; the channel closes when its ACK arrives.
func (c *conn) ping() <-chan struct{} {
	ack := make(chan struct{})
	var data [8]byte
	c.mu.Lock()
	c.pingSeq++
	binary.BigEndian.PutUint64(data[:], c.pingSeq)
	if c.pings == nil {
		c.pings = map[[8]byte]chan struct{}{}
	}
	c.pings[data] = ack
	c.mu.Unlock()
	c.queueCtrl(ctrlFrame{kind: ctrlPing, data: data})
	return ack
}

// numStreams returns the count of live streams.
func (c *conn) numStreams() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}

// readLoop reads frames until the connection fails. newStream is called for
// a client's HEADERS opening a stream (server side only).
func (c *conn) readLoop(newStream func(*http2.MetaHeadersFrame) error) {
	defer close(c.done)
	go c.ctrlLoop()
	for {
		f, err := c.fr.ReadFrame()
		// An abort requested meanwhile comes first: the read may have
		// been cut short by it, or the frame be one the guard refused.
		if r := c.pendingAbort(); r != nil {
			c.abort(r)
			return
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				// A malformed header block kills one stream, not the
				// connection (RFC 9113 §8.1.1).
				c.resetStream(se.StreamID, se.Code, fmt.Errorf("malformed frame: %w", err))
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.mu.Lock()
				last := c.lastID
				c.mu.Unlock()
				c.queueCtrl(ctrlFrame{kind: ctrlGoAway, stream: last, val: uint32(ce)})
			}
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = ErrConnClosed
			}
			c.fail(err)
			return
		}
		err = c.handleFrame(f, newStream)
		// Handlers queue control frames (WINDOW_UPDATE, RST_STREAM) under
		// locks; hand them to the control writer.
		c.tryFlushCtrl()
		if err != nil && limitOf(err) != "" {
			c.requestAbort(&abortRequest{code: http2.ErrCodeEnhanceYourCalm, err: err})
		}
		if r := c.pendingAbort(); r != nil {
			c.abort(r)
			return
		}
		if err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.mu.Lock()
				last := c.lastID
				c.mu.Unlock()
				c.queueCtrl(ctrlFrame{kind: ctrlGoAway, stream: last, val: uint32(ce)})
			}
			c.fail(err)
			return
		}
	}
}

// pendingAbort returns the abort requested, if any, the header guard's
// included. Read loop only.
func (c *conn) pendingAbort() *abortRequest {
	if c.guard.err != nil {
		c.requestAbort(&abortRequest{code: http2.ErrCodeEnhanceYourCalm, err: c.guard.err})
	}
	return c.abortReq.Load()
}

// abort ends the connection with GOAWAY(r.code). Read loop only: while the
// GOAWAY waits for the peer to read, the read loop reads and drops the
// peer's input (a flooding peer is often blocked writing, and would never
// read otherwise); then it half-closes, reads to the peer's end, and
// closes, so the peer gets the GOAWAY rather than a reset. All of it within
// abortLinger, whatever the peer does.
func (c *conn) abort(r *abortRequest) {
	c.mu.Lock()
	last := r.last
	if last == 0 {
		last = c.lastID
	}
	c.mu.Unlock()
	if name := limitOf(r.err); name != "" && c.onLimit != nil {
		c.onLimit(name)
	}
	c.end(r.err, false)
	c.ctrlMu.Lock()
	c.ctrlStop = true
	c.ctrl = nil
	c.ctrlMu.Unlock()
	deadline := time.Now().Add(r.linger())
	c.abortMu.Lock()
	c.nc.SetDeadline(deadline)
	c.abortMu.Unlock()
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		// A writer stuck on the socket holds wmu until the peer reads or
		// the deadline fails it.
		c.wmu.Lock()
		defer c.wmu.Unlock()
		if c.fr.WriteGoAway(last, r.code, nil) != nil || c.flushLocked() != nil {
			return
		}
		if cw, ok := c.nc.(closeWriter); ok && cw.CloseWrite() == nil {
			// TLS's close_notify, held by the batch; tls.Conn leaves the
			// write deadline in the past after it.
			c.nc.SetWriteDeadline(deadline)
			c.flushLocked()
		}
	}()
	if !r.refused {
		io.Copy(io.Discard, c.br)
	}
	<-sent
	c.nc.Close()
}

func (c *conn) handleFrame(f http2.Frame, newStream func(*http2.MetaHeadersFrame) error) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.handleData(f)
	case *http2.MetaHeadersFrame:
		c.mu.Lock()
		st := c.streams[f.StreamID]
		c.mu.Unlock()
		if st != nil {
			return st.handleHeaders(f)
		}
		if c.client || newStream == nil {
			// Headers for a stream we reset already: ignore.
			return nil
		}
		return newStream(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return c.handleSettings(f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.queueCtrl(ctrlFrame{kind: ctrlPingAck, data: f.Data})
			return nil
		}
		c.mu.Lock()
		if ack, ok := c.pings[f.Data]; ok {
			delete(c.pings, f.Data)
			close(ack)
		}
		c.mu.Unlock()
		return nil
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		removed := false
		if st := c.streams[f.StreamID]; st != nil {
			st.failLocked(&ResetError{Code: f.ErrCode})
			removed = st.removeLocked()
		}
		c.mu.Unlock()
		if removed {
			c.streamClosed()
		}
		return nil
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.goingAway = true
		// Streams above LastStreamID were not processed by the peer.
		closed := 0
		for id, st := range c.streams {
			if id > f.LastStreamID {
				st.failLocked(errGoingAway)
				if st.removeLocked() {
					closed++
				}
			}
		}
		c.mu.Unlock()
		for range closed {
			c.streamClosed()
		}
		c.notifyGoAway()
		return nil
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	default:
		// PRIORITY, unknown extension frames: ignored (RFC 9113 §5.5).
		return nil
	}
}

func (c *conn) handleData(f *http2.DataFrame) error {
	n := int32(f.Length) // flow control counts padding too
	c.mu.Lock()
	st := c.streams[f.StreamID]
	if st == nil {
		if f.StreamID == 0 || (!c.client && f.StreamID > c.lastID) {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		// Data for a stream we already closed: return its credit to the
		// connection window so the peer is not starved, in the batches
		// of all credit (one WINDOW_UPDATE per DATA frame would let a
		// peer make us queue a frame for each of its own).
		if n > 0 {
			c.addRecvCreditLocked(nil, n)
		}
		c.mu.Unlock()
		return nil
	}
	if n > st.recvWindow {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	st.recvWindow -= n
	if c.client && st.status == 0 {
		// A response's DATA comes after its HEADERS (RFC 9113 §8.1); a
		// joined stream's sink must get nothing before the answer.
		c.addRecvCreditLocked(nil, n)
		c.mu.Unlock()
		c.resetStream(f.StreamID, http2.ErrCodeProtocol, errors.New("hbone: DATA before the response"))
		return nil
	}
	if st.remoteEnded {
		c.mu.Unlock()
		c.resetStream(f.StreamID, http2.ErrCodeStreamClosed, errors.New("data after END_STREAM"))
		return nil
	}
	data := f.Data()
	if pad := n - int32(len(data)); pad > 0 {
		// Padding is consumed at once.
		c.addRecvCreditLocked(st, pad)
	}
	wake := len(data) > 0 && st.deliverLocked(data)
	if f.StreamEnded() {
		st.remoteEnded = true
		wake = true
	}
	if wake {
		// Data delivered straight to a sink wakes no one.
		st.cond.Broadcast()
		st.kickSinkLocked()
	}
	ended := st.maybeFinishLocked()
	c.mu.Unlock()
	if ended {
		c.streamClosed()
	}
	return nil
}

// addRecvCreditLocked records n bytes consumed from st and queues
// WINDOW_UPDATEs once enough has accumulated, so the peer gets credit back
// in few large frames rather than many small ones.
func (c *conn) addRecvCreditLocked(st *Stream, n int32) {
	c.recvUnacked += n
	if c.recvUnacked >= c.connWindow/4 {
		c.queueCtrlLocked(ctrlFrame{kind: ctrlWindowUpdate, stream: 0, val: uint32(c.recvUnacked)})
		c.recvUnacked = 0
	}
	if st == nil || st.remoteEnded {
		return
	}
	st.recvUnacked += n
	if st.recvUnacked >= c.streamWindow/4 {
		st.recvWindow += st.recvUnacked
		c.queueCtrlLocked(ctrlFrame{kind: ctrlWindowUpdate, stream: st.id, val: uint32(st.recvUnacked)})
		st.recvUnacked = 0
	}
}

// queueCtrlLocked queues a control frame while c.mu is held; the caller
// calls tryFlushCtrl after unlocking (streams do it in Read).
func (c *conn) queueCtrlLocked(f ctrlFrame) {
	c.pushCtrl(f)
}

func (c *conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		for _, st := range c.streams {
			st.cond.Broadcast()
		}
		return nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		return nil
	}
	st.sendWindow += int64(f.Increment)
	if st.sendWindow > 1<<31-1 {
		st.failLocked(errors.New("stream flow-control window overflow"))
		c.queueCtrlLocked(ctrlFrame{kind: ctrlRST, stream: st.id, val: uint32(http2.ErrCodeFlowControl)})
		return nil
	}
	st.cond.Broadcast()
	return nil
}

// resetStream sends RST_STREAM and fails the stream locally.
func (c *conn) resetStream(id uint32, code http2.ErrCode, err error) {
	c.mu.Lock()
	removed := false
	if st := c.streams[id]; st != nil {
		st.failLocked(err)
		removed = st.removeLocked()
	}
	c.mu.Unlock()
	c.queueCtrl(ctrlFrame{kind: ctrlRST, stream: id, val: uint32(code)})
	if removed {
		c.streamClosed()
	}
}

func (c *conn) streamClosed() {
	if c.onStreamClosed != nil {
		c.onStreamClosed()
	}
}

func (c *conn) notifyGoAway() {
	c.mu.Lock()
	if c.goAwayNotified {
		c.mu.Unlock()
		return
	}
	c.goAwayNotified = true
	c.mu.Unlock()
	if c.onGoAway != nil {
		c.onGoAway()
	}
}
