package telemetry

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// DefaultLogBuffer is how many records the access log holds while its
// writer is slow; beyond that records are dropped and counted.
const DefaultLogBuffer = 4096

// appendEntry appends r's access-log line to b: the keys and order of
// Istio's JSON access log (Envoy's command operators), plus the deciding
// policy, the peer's identity and the grpc-status (Envoy's
// %GRPC_STATUS(NUMBER)%); absent values are null, as in Envoy's
// JSON format. The line is what encoding/json writes for it (HTML
// characters unescaped), without its reflection and allocations.
func appendEntry(b []byte, r *Record) []byte {
	b = append(b, `{"start_time":"`...)
	b = r.Start.UTC().AppendFormat(b, envoyTime)
	b = append(b, `","route_name":`...)
	b = appendOpt(b, r.RouteName)
	b = append(b, `,"method":`...)
	b = appendOpt(b, r.Method)
	b = append(b, `,"path":`...)
	b = appendOpt(b, r.Path)
	b = append(b, `,"protocol":`...)
	b = appendString(b, r.Protocol)
	b = append(b, `,"response_code":`...)
	b = strconv.AppendInt(b, int64(r.ResponseCode), 10)
	b = append(b, `,"response_flags":`...)
	if r.ResponseFlags == "" {
		b = append(b, `"-"`...)
	} else {
		b = appendString(b, r.ResponseFlags)
	}
	b = append(b, `,"grpc_status":`...)
	if n, ok := grpcStatusNumber(r.GRPCStatus); ok {
		b = strconv.AppendUint(b, n, 10)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"bytes_received":`...)
	b = strconv.AppendInt(b, r.BytesReceived, 10)
	b = append(b, `,"bytes_sent":`...)
	b = strconv.AppendInt(b, r.BytesSent, 10)
	b = append(b, `,"duration":`...)
	b = strconv.AppendInt(b, r.Duration.Milliseconds(), 10)
	b = append(b, `,"user_agent":`...)
	b = appendOpt(b, r.UserAgent)
	b = append(b, `,"request_id":`...)
	b = appendOpt(b, r.RequestID)
	b = append(b, `,"authority":`...)
	b = appendOpt(b, r.Authority)
	b = append(b, `,"upstream_host":`...)
	b = appendAddr(b, r.UpstreamHost)
	b = append(b, `,"upstream_cluster":`...)
	b = appendOpt(b, r.UpstreamCluster)
	b = append(b, `,"downstream_remote_address":`...)
	b = appendAddr(b, r.Source.Addr)
	b = append(b, `,"downstream_peer_uri_san":`...)
	b = appendOpt(b, r.Source.Principal)
	b = append(b, `,"upstream_peer_uri_san":`...)
	b = appendOpt(b, r.Destination.Principal)
	b = append(b, `,"authorization_policy":`...)
	b = appendOpt(b, r.PolicyName)
	b = append(b, `,"destination_service":`...)
	b = appendOpt(b, r.DestinationService)
	return append(b, "}\n"...)
}

// grpcStatusNumber is a grpc-status as a number; false when there is none
// or it is not a number (the upstream may send anything).
func grpcStatusNumber(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 31)
	return n, err == nil
}

// envoyTime is %START_TIME%'s default format.
const envoyTime = "2006-01-02T15:04:05.000Z"

// appendOpt appends s as a JSON string, null when empty.
func appendOpt(b []byte, s string) []byte {
	if s == "" {
		return append(b, "null"...)
	}
	return appendString(b, s)
}

// appendAddr appends a as a JSON string, null when not valid.
func appendAddr(b []byte, a netip.AddrPort) []byte {
	if !a.IsValid() {
		return append(b, "null"...)
	}
	var scratch [64]byte
	return appendString(b, a.AppendTo(scratch[:0]))
}

// appendString appends s as a JSON string. Printable ASCII other than
// the quote and the backslash is written as it is; a string with
// anything else (control characters, non-ASCII, invalid UTF-8) is left
// to encoding/json, whose escaping the line keeps.
func appendString[S string | []byte](b []byte, s S) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			var out bytes.Buffer
			enc := json.NewEncoder(&out)
			enc.SetEscapeHTML(false)
			_ = enc.Encode(string(s))
			return append(b, bytes.TrimSuffix(out.Bytes(), []byte("\n"))...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// AccessLog is an Observer that writes one JSON line per record to a
// writer, off the request path: Observe only queues a copy of the record,
// and when the queue is full (the writer is slower than the traffic) the
// record is dropped and counted rather than slowing requests down.
//
// Lines are written in batches: the first record after a quiet spell
// wakes the writer, which then lets more records gather for flushDelay
// (or until half the queue is taken) and writes them together, as
// Envoy's access log flushes its buffer on an interval. A line per write
// would cost a system call and a wake-up of the writer per request.
type AccessLog struct {
	queue chan Record
	// nudge ends the writer's gathering early: the queue is half full,
	// or the log is closing.
	nudge   chan struct{}
	dropped prometheus.Counter
	done    chan struct{}
	once    sync.Once
	// closed guards queue against Observe after Close.
	mu     sync.RWMutex
	closed bool
}

// flushDelay is the longest a line waits in the writer's buffer.
const flushDelay = 100 * time.Millisecond

// NewAccessLog starts writing to w; buffer bounds the queue (default
// DefaultLogBuffer). The drop counter is registered with reg.
func NewAccessLog(w io.Writer, buffer int, reg prometheus.Registerer) (*AccessLog, error) {
	if buffer <= 0 {
		buffer = DefaultLogBuffer
	}
	l := &AccessLog{
		queue: make(chan Record, buffer),
		nudge: make(chan struct{}, 1),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "zmesh_waypoint_access_log_dropped_total",
			Help: "Access-log records dropped because the log's writer was slower than the traffic."}),
		done: make(chan struct{}),
	}
	if err := reg.Register(l.dropped); err != nil {
		return nil, err
	}
	go l.write(w)
	return l, nil
}

// Observe implements Observer.
func (l *AccessLog) Observe(r *Record) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return
	}
	select {
	case l.queue <- *r:
		if len(l.queue) >= cap(l.queue)/2 {
			l.poke()
		}
	default:
		l.dropped.Inc()
	}
}

// poke ends the writer's gathering, if it is gathering.
func (l *AccessLog) poke() {
	select {
	case l.nudge <- struct{}{}:
	default:
	}
}

// Dropped is the number of records dropped so far.
func (l *AccessLog) Dropped() float64 {
	var m dto.Metric
	_ = l.dropped.Write(&m)
	return m.GetCounter().GetValue()
}

// Close writes what is queued and stops.
func (l *AccessLog) Close() {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		close(l.queue)
		l.mu.Unlock()
		l.poke()
	})
	<-l.done
}

func (l *AccessLog) write(w io.Writer) {
	defer close(l.done)
	// Room for the lines of a busy flushDelay (some 50 at 1 000 req/s),
	// or a write would go out every few lines.
	bw := bufio.NewWriterSize(w, 32<<10)
	var line []byte
	encode := func(r *Record) {
		line = appendEntry(line[:0], r)
		// A failing writer loses lines; the requests go on.
		_, _ = bw.Write(line)
	}
	gather := time.NewTimer(flushDelay)
	gather.Stop()
	for {
		r, ok := <-l.queue
		if !ok {
			break
		}
		encode(&r)
		gather.Reset(flushDelay)
		select {
		case <-gather.C:
		case <-l.nudge:
			gather.Stop()
		}
	drain:
		for {
			select {
			case r, ok := <-l.queue:
				if !ok {
					break drain
				}
				encode(&r)
			default:
				break drain
			}
		}
		_ = bw.Flush()
	}
	_ = bw.Flush()
}

// Multi is an Observer that hands each record to every observer in turn.
type Multi []Observer

func (m Multi) Observe(r *Record) {
	for _, o := range m {
		o.Observe(r)
	}
}
