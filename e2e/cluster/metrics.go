package cluster

import (
	"fmt"
	"strings"
)

// MetricLine finds the sample of name in a Prometheus text exposition
// whose labels include every one of want ("" when there is none).
func MetricLine(metrics, name string, want map[string]string) string {
	for _, line := range strings.Split(metrics, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for k, v := range want {
			l := fmt.Sprintf("%s=%q", k, v)
			ok = ok && (strings.Contains(line, "{"+l) || strings.Contains(line, ","+l))
		}
		if ok {
			return line
		}
	}
	return ""
}

// MetricValue is a sample line's value.
func MetricValue(line string) float64 {
	var v float64
	fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
	return v
}
