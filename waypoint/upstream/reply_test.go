package upstream

import "testing"

// TestLocalRepliesWordForWord pins the replies to Envoy's text: users and
// their alerts match on these strings.
func TestLocalRepliesWordForWord(t *testing.T) {
	for _, tc := range []struct {
		r           LocalReply
		status      int
		body, flag  string
		overloaded  bool
		retriedBody string
	}{
		{NoHealthyUpstream, 503, "no healthy upstream", "UH", false, "no healthy upstream"},
		{Overflow, 503, "upstream connect error or disconnect/reset before headers. reset reason: overflow", "UO", true,
			"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: overflow"},
		{ConnectFailure, 503, "upstream connect error or disconnect/reset before headers. reset reason: connection failure", "UF", false,
			"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection failure"},
		{ConnectionTermination, 503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination", "UC", false,
			"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection termination"},
		{UpstreamTimeout, 504, "upstream request timeout", "UT", false, "upstream request timeout"},
		{NoRoute, 404, "", "NR", false, ""},
		{NoCluster, 503, "", "NC", false, ""},
	} {
		if tc.r.Status != tc.status || tc.r.Body != tc.body || tc.r.Flag != tc.flag || tc.r.Overloaded != tc.overloaded {
			t.Errorf("reply %+v, want %d %q %s overloaded=%v", tc.r, tc.status, tc.body, tc.flag, tc.overloaded)
		}
		if got := tc.r.Retried().Body; got != tc.retriedBody {
			t.Errorf("retried %q, want %q", got, tc.retriedBody)
		}
	}
}
