// Command benchratio reads `go test -bench` output on stdin and prints, for
// every benchmark with sub-benchmarks named after paths (tcp, tls, hbone, …),
// each path's figures as ratios against a baseline path from the same run.
//
//	go test -bench . ./internal/hbone | benchratio -baseline tcp,tls
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// line: BenchmarkBulk/hbone-2   10819   109891 ns/op   1192.75 MB/s   742 B/op   9 allocs/op
var benchLine = regexp.MustCompile(`^(Benchmark[^/\s]+)/(\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

type figures map[string]float64 // unit -> value (averaged over -count runs)

func main() {
	baselines := flag.String("baseline", "tcp,tls", "comma-separated baseline paths to compare against")
	flag.Parse()
	if err := run(os.Stdin, os.Stdout, strings.Split(*baselines, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "benchratio:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer, baselines []string) error {
	sums := map[string]map[string]figures{} // bench -> path -> unit -> sum
	counts := map[string]map[string]float64{}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(out, line) // pass the raw output through
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		bench, path := m[1], m[2]
		f := strings.Fields(m[3])
		if sums[bench] == nil {
			sums[bench], counts[bench] = map[string]figures{}, map[string]float64{}
		}
		if sums[bench][path] == nil {
			sums[bench][path] = figures{}
		}
		counts[bench][path]++
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return fmt.Errorf("bad figure %q in %q", f[i], line)
			}
			sums[bench][path][f[i+1]] += v
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(sums) == 0 {
		return fmt.Errorf("no benchmark lines in the input")
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "ratios (same run; time: lower is better, MB/s: higher is better)")
	benches := make([]string, 0, len(sums))
	for b := range sums {
		benches = append(benches, b)
	}
	sort.Strings(benches)
	for _, b := range benches {
		paths := sums[b]
		for p, fs := range paths {
			for u := range fs {
				fs[u] /= counts[b][p]
			}
		}
		names := make([]string, 0, len(paths))
		for p := range paths {
			names = append(names, p)
		}
		sort.Strings(names)
		for _, p := range names {
			for _, base := range baselines {
				if p == base || paths[base] == nil || isBaseline(p, base, baselines) {
					continue
				}
				var parts []string
				for _, unit := range []string{"ns/op", "MB/s"} {
					if v, ok := paths[p][unit]; ok && paths[base][unit] > 0 {
						parts = append(parts, fmt.Sprintf("%s %.2fx", unit, v/paths[base][unit]))
					}
				}
				if a, ok := paths[p]["allocs/op"]; ok {
					parts = append(parts, fmt.Sprintf("allocs/op %.0f vs %.0f", a, paths[base]["allocs/op"]))
				}
				fmt.Fprintf(out, "  %-28s %-6s vs %-4s %s\n", b, p, base, strings.Join(parts, ", "))
			}
		}
	}
	return nil
}

// isBaseline reports whether p is itself a baseline listed after base: the
// baselines are compared with each other once, later against earlier.
func isBaseline(p, base string, baselines []string) bool {
	pi, bi := -1, -1
	for i, b := range baselines {
		if b == p {
			pi = i
		}
		if b == base {
			bi = i
		}
	}
	return pi >= 0 && pi < bi
}
