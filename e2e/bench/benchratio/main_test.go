package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestRatios(t *testing.T) {
	in := `goos: linux
BenchmarkBulk/tcp-2     100   1000 ns/op   2000.00 MB/s   0 B/op   0 allocs/op
BenchmarkBulk/tcp-2     100   3000 ns/op   1000.00 MB/s   0 B/op   0 allocs/op
BenchmarkBulk/hbone-2   100   4000 ns/op    500.00 MB/s   9 B/op   9 allocs/op
PASS
`
	var out bytes.Buffer
	if err := run(strings.NewReader(in), &out, []string{"tcp"}); err != nil {
		t.Fatal(err)
	}
	// tcp averages 2000 ns/op and 1500 MB/s over its two runs.
	if !strings.Contains(out.String(), "hbone  vs tcp  ns/op 2.00x, MB/s 0.33x, allocs/op 9 vs 0") {
		t.Fatalf("ratio line missing:\n%s", out.String())
	}
	if err := run(strings.NewReader("no benchmarks here\n"), &out, []string{"tcp"}); err == nil {
		t.Fatal("empty input accepted")
	}
}
