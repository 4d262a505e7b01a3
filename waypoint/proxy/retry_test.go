package proxy

import (
	"errors"
	"net/http"
	"testing"

	"github.com/zmesh/zmesh/waypoint/route"
)

func TestRetryable(t *testing.T) {
	res := func(code int, grpc string) *http.Response {
		r := &http.Response{StatusCode: code, Header: http.Header{}}
		if grpc != "" {
			r.Header.Set("Grpc-Status", grpc)
		}
		return r
	}
	connErr := &connectError{errors.New("refused")}
	reset := errors.New("stream reset")
	for _, tc := range []struct {
		on    []string
		codes []uint32
		res   *http.Response
		err   error
		want  bool
	}{
		{on: []string{"5xx"}, res: res(503, ""), want: true},
		{on: []string{"5xx"}, res: res(404, ""), want: false},
		{on: []string{"5xx"}, err: connErr, want: true},
		{on: []string{"gateway-error"}, res: res(500, ""), want: false},
		{on: []string{"gateway-error"}, res: res(502, ""), want: true},
		{on: []string{"connect-failure"}, err: connErr, want: true},
		{on: []string{"connect-failure"}, err: reset, want: false},
		{on: []string{"reset"}, err: reset, want: true},
		{on: []string{"retriable-4xx"}, res: res(409, ""), want: true},
		{on: []string{"retriable-status-codes"}, codes: []uint32{418}, res: res(418, ""), want: true},
		{on: []string{"retriable-status-codes"}, codes: []uint32{418}, res: res(419, ""), want: false},
		{on: []string{"unavailable"}, res: res(200, "14"), want: true},
		{on: []string{"unavailable"}, res: res(200, "4"), want: false},
		{on: []string{"deadline-exceeded", "cancelled"}, res: res(200, "1"), want: true},
		{on: []string{"deadline-exceeded"}, res: res(200, "4"), want: true},
		{on: []string{"deadline-exceeded"}, res: res(200, "1"), want: false},
		{on: []string{"internal"}, res: res(200, "13"), want: true},
		{on: []string{"resource-exhausted"}, res: res(200, "8"), want: true},
		{on: []string{"resource-exhausted"}, res: res(200, "14"), want: false},
		// The gRPC conditions read grpc-status only: OK is no failure,
		// and an HTTP error without one is left to the HTTP conditions.
		{on: []string{"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}, res: res(200, "0"), want: false},
		{on: []string{"unavailable"}, res: res(503, ""), want: false},
		{on: nil, res: res(503, ""), want: false},
	} {
		p := &route.RetryPolicy{RetryOn: tc.on, RetriableStatusCodes: tc.codes}
		if got := retryable(p, tc.res, tc.err); got != tc.want {
			code := 0
			if tc.res != nil {
				code = tc.res.StatusCode
			}
			t.Errorf("retry_on %v, code %d, err %v: retryable %v, want %v", tc.on, code, tc.err, got, tc.want)
		}
	}
}
