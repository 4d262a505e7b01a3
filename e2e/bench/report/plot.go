package report

import (
	"errors"
	"fmt"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// nines maps a percentile to its "number of nines" (50 -> 0.3, 90 -> 1,
// 99 -> 2, 99.9 -> 3), so that the tail gets as much room as the median.
func nines(p float64) float64 { return -math.Log10(1 - p/100) }

// Plot draws the latency percentile curve of every path at the fixed rate
// and writes it to file; the extension (.png, .svg, .pdf) picks the format.
func (r *Report) Plot(file string) error {
	paths := r.curvePaths()
	if len(paths) == 0 {
		return errors.New("plot: no latency curves")
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("1 kB HTTP/1.1 at %d req/s: latency by percentile (%s, %s)", r.Meta.Rate, r.Meta.Host, r.Meta.Date.Format("2006-01-02"))
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency (ms)"
	p.Y.Min = 0
	var ticks []plot.Tick
	for _, pc := range r.percentiles() {
		ticks = append(ticks, plot.Tick{Value: nines(pc), Label: fmt.Sprintf("p%g", pc)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = true, true
	for i, path := range paths {
		c := r.Curves[path]
		xys := make(plotter.XYs, len(c))
		for j, pt := range c {
			xys[j] = plotter.XY{X: nines(pt.Percentile), Y: pt.Ms}
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return fmt.Errorf("plot %s: %w", path, err)
		}
		line.Color = plotutil.Color(i)
		line.Width = vg.Points(1.5)
		points.Color = plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(path, line, points)
	}
	return p.Save(20*vg.Centimeter, 12*vg.Centimeter, file)
}
