package hbone

// Flow-control and framing defaults. The windows are ztunnel's (4 MiB per
// stream, 16 MiB per connection) so a single stream can fill a fast link
// without waiting for WINDOW_UPDATEs.
const (
	DefaultStreamWindow = 4 << 20
	DefaultConnWindow   = 16 << 20
	// DefaultMaxStreams is how many streams the pool puts on one connection
	// before it opens another.
	DefaultMaxStreams = 100

	// maxReadFrameSize is what we accept; peers usually send 16 KiB frames
	// anyway, but our own peers send larger ones to save per-frame work.
	maxReadFrameSize = 1 << 20
	// maxWriteFrameSize caps our DATA frames even if the peer accepts more:
	// larger frames only delay WINDOW_UPDATEs and fairness between streams.
	maxWriteFrameSize = 256 << 10

	// serverMaxConcurrentStreams is what a client assumes of a server
	// until its SETTINGS say otherwise (servers advertise
	// Limits.MaxStreamsPerConn). Pools usually stop at DefaultMaxStreams
	// first.
	serverMaxConcurrentStreams = 1000
	// maxHeaderListSize bounds the decoded request/response headers.
	maxHeaderListSize = 64 << 10

	writeBufferSize = 64 << 10
)

const initialWindow = 65535 // RFC 9113 §6.9.2: before SETTINGS are seen.
