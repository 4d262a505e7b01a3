package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/zmesh/zmesh/e2e/proc"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture the project runs on.
const clockTicks = 100

// cpuOfPids returns each process's CPU seconds (user + system) so far;
// NaN for one that cannot be read.
func cpuOfPids(pids []int) []float64 {
	out := make([]float64, len(pids))
	for i, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			out[i] = math.NaN()
			continue
		}
		out[i], err = parseStatCPU(b)
		if err != nil {
			out[i] = math.NaN()
		}
	}
	return out
}

// withChildren returns the processes' pids, each followed by its
// children's (nginx's workers are the master's children; the other
// proxies have none). Children come from /proc/<pid>/task/<tid>/children.
func withChildren(ps []*proc.Proc) []int {
	var out []int
	for _, p := range ps {
		pid := p.Pid()
		out = append(out, pid)
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
			if err != nil {
				continue
			}
			out = append(out, parseChildren(b)...)
		}
	}
	return out
}

// parseChildren reads a /proc/<pid>/task/<tid>/children file: pids
// separated by spaces.
func parseChildren(b []byte) []int {
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			out = append(out, pid)
		}
	}
	return out
}

// parseStatCPU reads utime + stime (fields 14 and 15) of /proc/<pid>/stat
// in seconds. The command name (field 2) may hold spaces and parentheses:
// fields are counted after its last ')'.
func parseStatCPU(b []byte) (float64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14 -> f[11], stime f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("stat: %d fields", len(f)+2)
	}
	ut, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat utime: %w", err)
	}
	st, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat stime: %w", err)
	}
	return float64(ut+st) / clockTicks, nil
}

// statusBytes returns a "kB" field of /proc/<pid>/status (VmRSS, VmHWM) in
// bytes, NaN when it cannot be read.
func statusBytes(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return math.NaN()
	}
	v, err := parseStatusField(b, field)
	if err != nil {
		return math.NaN()
	}
	return v
}

func parseStatusField(b []byte, field string) (float64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("status %s: %q", field, rest)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("status %s: %w", field, err)
		}
		return float64(kb) * 1024, nil
	}
	return 0, fmt.Errorf("status: no %s", field)
}

// peakRSS is VmHWM: the resident set's peak since the process started or
// since resetPeakRSS.
func peakRSS(pid int) float64 { return statusBytes(pid, "VmHWM") }

// resetPeakRSS sets VmHWM back to the current RSS (clear_refs 5), so the
// next peakRSS covers one run alone.
func resetPeakRSS(pid int) {
	os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// parseMemStatsLine reads one "# Name = value" line of a debug=1 heap
// profile (runtime.MemStats as net/http/pprof prints it).
func parseMemStatsLine(b []byte, name string) (float64, error) {
	prefix := "# " + name + " = "
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("heap profile: no %s", name)
}

// syscallsOfPids returns each process's read and write syscalls so far
// (syscr + syscw of /proc/<pid>/io: the read, write and vectored
// families); NaN for one that cannot be read.
func syscallsOfPids(pids []int) []float64 {
	out := make([]float64, len(pids))
	for i, pid := range pids {
		out[i] = math.NaN()
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
		if err != nil {
			continue
		}
		r, err1 := parseIOField(b, "syscr")
		w, err2 := parseIOField(b, "syscw")
		if err1 == nil && err2 == nil {
			out[i] = r + w
		}
	}
	return out
}

func parseIOField(b []byte, field string) (float64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+": "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("io: no %s", field)
}

// sampleAnonPeak reads each pid's RssAnon every 100 ms until stop is
// called, and stop returns the highest seen per pid. The kernel keeps a
// peak of the whole resident set (VmHWM), which is mostly the mapped pages
// of the binary, but none of the private memory alone.
func sampleAnonPeak(pids []int) (stop func() []float64) {
	peaks := make([]float64, len(pids))
	read := func() {
		for i, pid := range pids {
			if v := statusBytes(pid, "RssAnon"); v > peaks[i] {
				peaks[i] = v
			}
		}
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			read()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() []float64 {
		close(done)
		<-exited
		read()
		return peaks
	}
}
