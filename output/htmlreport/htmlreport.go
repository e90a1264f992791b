// SPDX-License-Identifier: Apache-2.0

// Package htmlreport writes a report as one self-contained HTML page: the
// capture's header and sysctls, then charts drawn as inline SVG by gonum's
// plot library (sockets per state over time, time-in-state distributions,
// the CLOSE_WAIT holders over time, the longest-lingering connections, close
// reasons and keepalive over time). No script, no font or file to fetch:
// the page opens offline and prints.
package htmlreport

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"fmt"
	"html/template"
	"image/color"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/tracer"
)

// Options say what the page shows besides the report.
type Options struct {
	Clock    tracer.Clock
	Location *time.Location // nil: local time
	Header   *capture.Header
	Files    []string
	Version  string // tcpstate's, in the footer
}

// stateColors: one hue per state, and a label on every band, so that no
// chart relies on colour alone.
var stateColors = map[tracer.State]color.RGBA{
	tracer.Established: {0x9e, 0xc5, 0xe8, 0xff},
	tracer.SynSent:     {0xc7, 0xc7, 0xc7, 0xff},
	tracer.SynRecv:     {0xa0, 0xa0, 0xa0, 0xff},
	tracer.FinWait1:    {0xfd, 0xd0, 0xa2, 0xff},
	tracer.FinWait2:    {0xf1, 0x8d, 0x3a, 0xff},
	tracer.Closing:     {0xbc, 0xa0, 0xdc, 0xff},
	tracer.LastAck:     {0x8c, 0x6b, 0xb1, 0xff},
	tracer.CloseWait:   {0xd6, 0x27, 0x28, 0xff},
	tracer.TimeWait:    {0x7f, 0xbf, 0x7b, 0xff},
	tracer.Listen:      {0xe0, 0xe0, 0xe0, 0xff},
}

// stackOrder: bottom to top; the states that pile up first, ESTABLISHED on top.
var stackOrder = []tracer.State{tracer.CloseWait, tracer.FinWait2, tracer.FinWait1, tracer.LastAck, tracer.Closing,
	tracer.TimeWait, tracer.SynSent, tracer.SynRecv, tracer.Established}

var (
	red  = color.RGBA{0xc0, 0x10, 0x10, 0xff}
	blue = color.RGBA{0x1f, 0x4e, 0x9a, 0xff}
	ink  = color.RGBA{0x20, 0x20, 0x20, 0xff}
)

func init() {
	plot.DefaultFont = font.Font{Typeface: "Liberation", Variant: "Sans"}
	plotter.DefaultFont = plot.DefaultFont // (copied from plot's before this ran)
}

// page is what the template shows.
type page struct {
	FontCSS  template.CSS
	Title    string
	Facts    [][2]string
	Sysctls  []nsSysctls
	Changes  []string
	Warnings []string
	Notes    []string // the captures' own problems (truncated, damaged)
	Charts   []chart
	Tables   []table
	Footer   string
}

type nsSysctls struct {
	NetNS  uint32
	Values [][2]string
}

type chart struct {
	ID, Title, Caption string
	SVG                template.HTML
}

type table struct {
	Title string
	Head  []string
	Rows  [][]string
}

// Write renders r as a page to w.
func Write(w io.Writer, r *output.Report, o Options) error {
	if o.Location == nil {
		o.Location = time.Local
	}
	wall := func(t uint64) time.Time { return o.Clock.Wall(t).In(o.Location) }
	p := page{Title: "tcpstate report", FontCSS: fontCSS()}
	if h := o.Header; h != nil {
		p.Title = "tcpstate report: " + h.Hostname
		p.Facts = append(p.Facts, [2]string{"host", h.Hostname}, [2]string{"kernel", h.Kernel + " " + h.Arch},
			[2]string{"recorded by", "tcpstate " + h.Tcpstate + " " + strings.Join(h.Options, " ")})
		for _, ns := range h.Namespaces {
			var vals [][2]string
			for _, k := range sortedKeys(ns.Sysctls) {
				vals = append(vals, [2]string{k, ns.Sysctls[k]})
			}
			p.Sysctls = append(p.Sysctls, nsSysctls{ns.Inode, vals})
		}
		p.Warnings = h.KernelWarnings
	}
	p.Notes = r.Notes
	p.Facts = append(p.Facts,
		[2]string{"files", strings.Join(o.Files, ", ")},
		[2]string{"capture", fmt.Sprintf("%s to %s (%s)", wall(r.Start).Format("2006-01-02 15:04:05"), wall(r.End).Format("15:04:05 MST"),
			time.Duration(r.End-r.Start).Round(time.Second))},
		[2]string{"events", eventsFact(r)})
	for _, c := range r.Time.Sysctls {
		p.Changes = append(p.Changes, fmt.Sprintf("%s  netns %d  %s: %s → %s", wall(c.Time).Format("15:04:05"), c.NetNS, c.Name, c.Old, c.New))
	}

	charts := []func(*output.Report, Options) (chart, error){statesChart, durationsChart, closeWaitChart, ganttChart, closesChart, keepaliveChart}
	for _, f := range charts {
		c, err := f(r, o)
		if err != nil {
			return err
		}
		if c.SVG != "" {
			p.Charts = append(p.Charts, c)
		}
	}
	p.Tables = tables(r, o)
	p.Footer = fmt.Sprintf("made by tcpstate %s report --html", o.Version)
	return pageTemplate.Execute(w, p)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// fontCSS embeds the font the charts were laid out with (Liberation Sans,
// which gonum/plot carries), once for the page: a laptop without it would
// draw their text in another font, wider than the room left for it.
func fontCSS() template.CSS {
	face := font.DefaultCache.Lookup(plot.DefaultFont, 10)
	var raw bytes.Buffer
	if face.Face == nil {
		return ""
	}
	if _, err := face.Face.WriteSourceTo(nil, &raw); err != nil {
		return ""
	}
	return template.CSS(`@font-face { font-family: "Liberation Sans"; font-weight: normal; font-style: normal; src: url(data:font/ttf;base64,` +
		base64.StdEncoding.EncodeToString(raw.Bytes()) + `) format("truetype"); }`)
}

// svg draws p as inline SVG of width x height points.
func svg(p *plot.Plot, width, height vg.Length) (template.HTML, error) {
	wt, err := p.WriterTo(width, height, "svg")
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if _, err := wt.WriteTo(&b); err != nil {
		return "", err
	}
	s := b.String()
	if i := strings.Index(s, "<svg"); i >= 0 {
		s = s[i:] // without the XML declaration and comment
	}
	// Scale with the page: the viewBox keeps the drawing's proportions.
	s = strings.Replace(s, `<svg width="`, `<svg role="img" style="width:100%;height:auto" data-width="`, 1)
	return template.HTML(s), nil
}

// timeAxis makes p's X axis wall-clock time of the capture.
func timeAxis(p *plot.Plot, o Options) {
	p.X.Tick.Marker = timeTicks{o.Location}
	p.X.Label.Text = "time (" + time.Now().In(o.Location).Format("MST") + ")"
}

// timeTicks label wall-clock seconds as times of day, with milliseconds
// when the axis spans less than five seconds and the date past a day.
type timeTicks struct{ loc *time.Location }

func (tt timeTicks) Ticks(min, max float64) []plot.Tick {
	layout := "15:04:05"
	switch span := max - min; {
	case span < 5:
		layout = "15:04:05.000"
	case span > 86400:
		layout = "Jan 2 15:04"
	}
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = time.Unix(0, int64(ticks[i].Value*1e9)).In(tt.loc).Format(layout)
		}
	}
	return ticks
}

// unix is the X value of CLOCK_BOOTTIME t: wall-clock seconds.
func unix(o Options, t uint64) float64 {
	return float64(o.Clock.Wall(t).UnixNano()) / 1e9
}

// countTicks label a count axis without decimals.
type countTicks struct{}

func (countTicks) Ticks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'f', -1, 64)
		}
	}
	return ticks
}

func newPlot(title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Y.Tick.Marker = countTicks{}
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.Y.Label.Text = ylabel
	p.Add(plotter.NewGrid())
	return p
}

// marks draws the lost-event gaps and sysctl changes as vertical lines with
// their text, over a chart of height ymax.
func marks(p *plot.Plot, r *output.Report, o Options, ymax float64) error {
	tl := &r.Time
	var xys plotter.XYs
	var labels []string
	add := func(x float64, text string, c color.Color, dashes []vg.Length) error {
		l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: ymax}})
		if err != nil {
			return err
		}
		l.Color, l.Dashes, l.Width = c, dashes, vg.Points(1.2)
		p.Add(l)
		xys = append(xys, plotter.XY{X: x, Y: ymax * (0.95 - 0.07*float64(len(labels)%4))})
		labels = append(labels, text)
		return nil
	}
	n := 0
	for i := 0; i < len(tl.Buckets); i++ {
		if tl.Buckets[i].Lost == 0 {
			continue
		}
		// one mark per run of buckets with losses
		var lost uint64
		j := i
		for ; j < len(tl.Buckets) && tl.Buckets[j].Lost > 0; j++ {
			lost += tl.Buckets[j].Lost
		}
		if n++; n <= 12 {
			x := unix(o, tl.Start+uint64(i)*uint64(tl.Step))
			if err := add(x, fmt.Sprintf("✖ %d lost", lost), red, []vg.Length{vg.Points(4), vg.Points(2)}); err != nil {
				return err
			}
		}
		i = j
	}
	for k, c := range tl.Sysctls {
		if c.Time == 0 || k >= 12 {
			continue
		}
		short := strings.TrimPrefix(c.Name, "net.ipv4.")
		if err := add(unix(o, c.Time), fmt.Sprintf("⚙ %s %s→%s", short, c.Old, c.New), blue, []vg.Length{vg.Points(1), vg.Points(2)}); err != nil {
			return err
		}
	}
	if len(labels) == 0 {
		return nil
	}
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
	if err != nil {
		return err
	}
	for i := range l.TextStyle {
		l.TextStyle[i].Color = ink
		l.TextStyle[i].Font.Size = vg.Points(8)
	}
	l.Offset = vg.Point{X: vg.Points(3)}
	p.Add(l)
	return nil
}

// statesChart: sockets per state over time, stacked, each band labelled
// where it is thickest.
func statesChart(r *output.Report, o Options) (chart, error) {
	tl := &r.Time
	c := chart{ID: "states", Title: "Sockets per state over time",
		Caption: fmt.Sprintf("The sockets in each state at the busiest moment of each %s, stacked (LISTEN left out); the legend gives each state's peak at any moment. ✖ marks lost events, ⚙ sysctl changes.", tl.Step)}
	if len(tl.Buckets) == 0 {
		return c, nil
	}
	p := newPlot(c.Title, "sockets")
	timeAxis(p, o)
	x := func(i int) float64 { return unix(o, tl.Start+uint64(i)*uint64(tl.Step)) }
	base := make([]float64, len(tl.Buckets))
	type band struct {
		st    tracer.State
		at    plotter.XY
		thick float64
	}
	var bands []band
	var top float64
	for _, st := range stackOrder {
		var peak, shown int32
		for _, b := range tl.Buckets {
			peak, shown = max(peak, b.Peak[st]), max(shown, b.States[st])
		}
		if shown == 0 {
			if peak > 0 {
				p.Legend.Add(fmt.Sprintf("%s (peak %d, never at a busiest moment)", st, peak))
			}
			continue
		}
		var upper, lower plotter.XYs
		best, bestAt := -1.0, 0
		for i, b := range tl.Buckets {
			v := float64(b.States[st])
			upper = append(upper, plotter.XY{X: x(i), Y: base[i] + v}, plotter.XY{X: x(i + 1), Y: base[i] + v})
			lower = append(lower, plotter.XY{X: x(i), Y: base[i]}, plotter.XY{X: x(i + 1), Y: base[i]})
			if v > best {
				best, bestAt = v, i
			}
		}
		slices.Reverse(lower)
		poly, err := plotter.NewPolygon(append(upper, lower...))
		if err != nil {
			return c, err
		}
		poly.Color = stateColors[st]
		poly.LineStyle.Color = color.White
		poly.LineStyle.Width = vg.Points(0.5)
		p.Add(poly)
		p.Legend.Add(fmt.Sprintf("%s (peak %d)", st, peak), poly)
		bands = append(bands, band{st, plotter.XY{X: (x(bestAt) + x(bestAt+1)) / 2, Y: base[bestAt] + best/2}, best})
		for i, b := range tl.Buckets {
			base[i] += float64(b.States[st])
			top = max(top, base[i])
		}
	}
	if len(bands) == 0 {
		return c, nil
	}
	// Each band named inside it where it is thickest, unless too thin to
	// hold the name (the legend names it, with its peak).
	var lx plotter.XYs
	var labels []string
	for _, b := range bands {
		if b.thick >= top*0.06 {
			lx = append(lx, b.at)
			labels = append(labels, b.st.String())
		}
	}
	if len(labels) > 0 {
		l, err := plotter.NewLabels(plotter.XYLabels{XYs: lx, Labels: labels})
		if err != nil {
			return c, err
		}
		for i := range l.TextStyle {
			l.TextStyle[i].Color = ink
			l.TextStyle[i].Font.Size = vg.Points(8)
			l.TextStyle[i].XAlign = draw.XCenter
		}
		p.Add(l)
	}
	if err := marks(p, r, o, top*1.05+1); err != nil {
		return c, err
	}
	// The legend above the data: a line of headroom per entry.
	p.Legend.Top, p.Legend.Left = true, true
	p.Y.Min, p.Y.Max = 0, top*(1.1+0.09*float64(len(bands)))+1
	var err2 error
	c.SVG, err2 = svg(p, 10*vg.Inch, 4.5*vg.Inch)
	return c, err2
}

// durationTicks label a log axis of seconds as durations.
type durationTicks struct{}

func (durationTicks) Ticks(min, max float64) []plot.Tick {
	var ticks []plot.Tick
	lo, hi := math.Floor(math.Log10(min)), math.Ceil(math.Log10(max))
	every := math.Ceil((hi - lo) / 5) // at most about five labels
	for e := lo; e <= hi; e++ {
		v := math.Pow(10, e)
		if v >= min && v <= max {
			t := plot.Tick{Value: v}
			if math.Mod(e-lo, every) == 0 {
				t.Label = durationLabel(v)
			}
			ticks = append(ticks, t)
		}
		for _, m := range []float64{2, 5} {
			if mv := m * v; mv >= min && mv <= max {
				ticks = append(ticks, plot.Tick{Value: mv})
			}
		}
	}
	return ticks
}

// durationLabel names a power of ten of seconds: as the tables write
// durations, but in nanoseconds below a microsecond (where they would say
// "0.0us").
func durationLabel(v float64) string {
	d := time.Duration(math.Round(v * 1e9))
	if d < time.Microsecond {
		return strconv.FormatInt(int64(d), 10) + "ns"
	}
	return string(output.AppendDuration(nil, d))
}

// durationsChart: time spent in each state, one panel per state, on a log
// time axis, with p50, p90 and p99 marked.
func durationsChart(r *output.Report, o Options) (chart, error) {
	c := chart{ID: "durations", Title: "Time spent in each state",
		Caption: "How long sockets stayed in each state, for the states tcpstate saw begin and end (log time axis); p50, p90 and p99 marked."}
	var states []tracer.State
	for _, st := range []tracer.State{tracer.CloseWait, tracer.FinWait2, tracer.TimeWait, tracer.FinWait1, tracer.LastAck,
		tracer.Established, tracer.SynSent, tracer.SynRecv, tracer.Closing} {
		if h := r.Durations[st]; h != nil && h.N() > 0 {
			states = append(states, st)
		}
	}
	if len(states) == 0 {
		return c, nil
	}
	states = states[:min(len(states), 6)]
	var svgs []string
	for _, st := range states {
		h := r.Durations[st]
		lower, counts := h.Bins()
		p := newPlot(fmt.Sprintf("%s: %d sockets", st, h.N()), "sockets")
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = durationTicks{}
		p.X.Label.Text = "time in " + st.String() + " (log scale)"
		var ymax float64
		xlo, xhi := math.Inf(1), math.Inf(-1)
		for i, lo := range lower {
			x0 := lo.Seconds()
			x1 := x0 * math.Pow(10, 0.1)
			xlo, xhi = min(xlo, x0), max(xhi, x1)
			y := float64(counts[i])
			ymax = max(ymax, y)
			poly, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: 0}, {X: x1, Y: 0}, {X: x1, Y: y}, {X: x0, Y: y}})
			if err != nil {
				return c, err
			}
			poly.Color = stateColors[st]
			poly.LineStyle.Color = ink
			poly.LineStyle.Width = vg.Points(0.4)
			p.Add(poly)
		}
		var qx plotter.XYs
		var ql []string
		for i, q := range []float64{0.5, 0.9, 0.99} {
			d := h.Quantile(q)
			if d <= 0 {
				continue
			}
			line, err := plotter.NewLine(plotter.XYs{{X: d.Seconds(), Y: 0}, {X: d.Seconds(), Y: ymax * 1.05}})
			if err != nil {
				return c, err
			}
			line.Color, line.Width = ink, vg.Points(1)
			line.Dashes = [][]vg.Length{{vg.Points(1), vg.Points(1)}, {vg.Points(3), vg.Points(2)}, {vg.Points(6), vg.Points(2)}}[i]
			p.Add(line)
			qx = append(qx, plotter.XY{X: d.Seconds(), Y: ymax * (1.18 - 0.08*float64(i))})
			ql = append(ql, fmt.Sprintf("p%g %s", q*100, output.AppendDuration(nil, d)))
		}
		if len(ql) > 0 {
			l, err := plotter.NewLabels(plotter.XYLabels{XYs: qx, Labels: ql})
			if err != nil {
				return c, err
			}
			for i := range l.TextStyle {
				l.TextStyle[i].Font.Size = vg.Points(8)
				l.TextStyle[i].Color = ink
			}
			l.Offset = vg.Point{X: vg.Points(2)}
			p.Add(l)
		}
		// At least two decades wide, with room for the quantiles' text.
		if xhi/xlo < 100 {
			mid := math.Sqrt(xlo * xhi)
			xlo, xhi = min(xlo, mid/10), max(xhi, mid*10)
		}
		p.X.Min, p.X.Max = xlo, xhi*2
		p.Y.Min, p.Y.Max = 0, ymax*1.25+1
		s, err := svg(p, 5*vg.Inch, 3*vg.Inch)
		if err != nil {
			return c, err
		}
		svgs = append(svgs, `<div class="panel">`+string(s)+`</div>`)
	}
	c.SVG = template.HTML(`<div class="panels">` + strings.Join(svgs, "") + `</div>`)
	return c, nil
}

// glyphs tell the lines of a chart apart without colour.
var glyphs = []draw.GlyphDrawer{draw.CircleGlyph{}, draw.SquareGlyph{}, draw.TriangleGlyph{}, draw.CrossGlyph{}, draw.PlusGlyph{}, draw.RingGlyph{}}

var lineColors = []color.RGBA{{0xd6, 0x27, 0x28, 0xff}, {0x1f, 0x77, 0xb4, 0xff}, {0x2c, 0xa0, 0x2c, 0xff}, {0x94, 0x67, 0xbd, 0xff},
	{0xff, 0x7f, 0x0e, 0xff}, {0x8c, 0x56, 0x4b, 0xff}}

// series is one line of a chart over the report's buckets.
type series struct {
	name string
	ys   []float64
}

// linesChart draws series over time, each with its own colour, glyph and
// dash, and its name written at its highest point.
func linesChart(r *output.Report, o Options, c chart, ylabel string, ss []series) (chart, error) {
	tl := &r.Time
	p := newPlot(c.Title, ylabel)
	timeAxis(p, o)
	var lx plotter.XYs
	var labels []string
	var ymax float64
	for k, s := range ss {
		var xys plotter.XYs
		best, bestAt := -1.0, 0
		for i, y := range s.ys {
			x := unix(o, tl.Start+uint64(i)*uint64(tl.Step)+uint64(tl.Step)/2)
			xys = append(xys, plotter.XY{X: x, Y: y})
			if y > best {
				best, bestAt = y, i
			}
			ymax = max(ymax, y)
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return c, err
		}
		// Glyphs tell the lines apart; a few dozen do (each is markup).
		every := max(1, len(xys)/40)
		var marked plotter.XYs
		for i := 0; i < len(xys); i += every {
			marked = append(marked, xys[i])
		}
		points, err := plotter.NewScatter(marked)
		if err != nil {
			return c, err
		}
		col := lineColors[k%len(lineColors)]
		line.Color, line.Width = col, vg.Points(1.5)
		line.Dashes = [][]vg.Length{nil, {vg.Points(5), vg.Points(2)}, {vg.Points(1), vg.Points(2)}, {vg.Points(6), vg.Points(2), vg.Points(1), vg.Points(2)}}[k%4]
		points.Shape, points.Color, points.Radius = glyphs[k%len(glyphs)], col, vg.Points(2.5)

		p.Add(line, points)
		p.Legend.Add(s.name, line, points)
		if best > 0 {
			lx = append(lx, xys[bestAt])
			labels = append(labels, s.name)
		}
	}
	if len(labels) > 0 {
		l, err := plotter.NewLabels(plotter.XYLabels{XYs: lx, Labels: labels})
		if err != nil {
			return c, err
		}
		for i := range l.TextStyle {
			l.TextStyle[i].Font.Size = vg.Points(8)
			l.TextStyle[i].Color = ink
		}
		l.Offset = vg.Point{X: vg.Points(4), Y: vg.Points(4)}
		p.Add(l)
	}
	if err := marks(p, r, o, ymax*1.05+1); err != nil {
		return c, err
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Y.Min, p.Y.Max = 0, ymax*(1.1+0.1*float64(len(ss)))+1
	var err error
	c.SVG, err = svg(p, 10*vg.Inch, 3.5*vg.Inch)
	return c, err
}

// closeWaitChart: the processes that held the most CLOSE_WAIT sockets, over time.
func closeWaitChart(r *output.Report, o Options) (chart, error) {
	tl := &r.Time
	c := chart{ID: "closewait", Title: "CLOSE_WAIT holders over time",
		Caption: fmt.Sprintf("The most CLOSE_WAIT sockets each process held within each %s: the five that held the most for longest (sockets × time).", tl.Step)}
	type holder struct {
		i    int
		area int64
	}
	var hs []holder
	for i := range tl.Procs {
		var area int64
		for _, b := range tl.Buckets {
			if i < len(b.CloseWait) {
				area += int64(b.CloseWait[i])
			}
		}
		if area > 0 {
			hs = append(hs, holder{i, area})
		}
	}
	if len(hs) == 0 {
		return c, nil
	}
	slices.SortFunc(hs, func(a, b holder) int { return cmp.Compare(b.area, a.area) })
	var ss []series
	for _, h := range hs[:min(len(hs), 5)] {
		pid, comm := tl.Proc(h.i)
		s := series{name: fmt.Sprintf("%d %s", pid, comm)}
		if pid == 0 {
			s.name = "other processes"
		}
		for _, b := range tl.Buckets {
			v := 0.0
			if h.i < len(b.CloseWait) {
				v = float64(b.CloseWait[h.i])
			}
			s.ys = append(s.ys, v)
		}
		ss = append(ss, s)
	}
	return linesChart(r, o, c, "sockets in CLOSE_WAIT", ss)
}

// closesChart: connections closed per step, by reason.
func closesChart(r *output.Report, o Options) (chart, error) {
	tl := &r.Time
	c := chart{ID: "closes", Title: "Closes by reason over time",
		Caption: fmt.Sprintf("Connections that reached CLOSE in each %s, by why (the five most frequent reasons).", tl.Step)}
	var totals [16]uint64
	for _, b := range tl.Buckets {
		for i, n := range b.Closes {
			totals[i] += uint64(n)
		}
	}
	var reasons []tracer.Reason
	for i, n := range totals {
		if n > 0 && tracer.Reason(i) != tracer.ReasonNone {
			reasons = append(reasons, tracer.Reason(i))
		}
	}
	if len(reasons) == 0 {
		return c, nil
	}
	slices.SortFunc(reasons, func(a, b tracer.Reason) int { return cmp.Compare(totals[b], totals[a]) })
	var ss []series
	for _, rs := range reasons[:min(len(reasons), 5)] {
		s := series{name: rs.String()}
		for _, b := range tl.Buckets {
			s.ys = append(s.ys, float64(b.Closes[rs]))
		}
		ss = append(ss, s)
	}
	return linesChart(r, o, c, "connections per "+tl.Step.String(), ss)
}

// keepaliveChart: keepalive probes and kills, and resets sent, over time.
func keepaliveChart(r *output.Report, o Options) (chart, error) {
	tl := &r.Time
	c := chart{ID: "keepalive", Title: "Keepalive probes, keepalive kills and resets sent over time",
		Caption: fmt.Sprintf("Per %s: keepalive probes sent, connections keepalive killed (every probe unanswered), resets sent by this host's connections (not those the kernel sends for no socket: a refused SYN).", tl.Step)}
	probes, kills, resets := series{name: "keepalive probes"}, series{name: "keepalive kills"}, series{name: "resets sent"}
	var any bool
	for _, b := range tl.Buckets {
		probes.ys = append(probes.ys, float64(b.Probes))
		kills.ys = append(kills.ys, float64(b.Kills))
		resets.ys = append(resets.ys, float64(b.ResetsSent))
		any = any || b.Probes > 0 || b.Kills > 0 || b.ResetsSent > 0
	}
	if !any {
		return c, nil
	}
	return linesChart(r, o, c, "per "+tl.Step.String(), []series{probes, kills, resets})
}

// stateAbbrev labels a span of the connection chart.
var stateAbbrev = map[tracer.State]string{
	tracer.Established: "ESTAB", tracer.SynSent: "SYN", tracer.SynRecv: "SYN_RECV", tracer.FinWait1: "FW1",
	tracer.FinWait2: "FIN_WAIT2", tracer.TimeWait: "TIME_WAIT", tracer.CloseWait: "CLOSE_WAIT", tracer.LastAck: "LAST_ACK",
	tracer.Closing: "CLOSING",
}

// ganttChart: the connections that sat longest in CLOSE_WAIT or
// FIN_WAIT2, one row each, one bar per state from SYN to CLOSE.
func ganttChart(r *output.Report, o Options) (chart, error) {
	tl := &r.Time
	c := chart{ID: "connections", Title: "Longest-lingering connections",
		Caption: "One row per connection, one bar per state, each named; /tw: the part in the kernel's timewait socket; ▸: still there at the end."}
	if len(tl.Gantt) == 0 {
		return c, nil
	}
	p := newPlot(c.Title, "")
	timeAxis(p, o)
	var ticks []plot.Tick
	var lx plotter.XYs
	var labels []string
	xmin, xmax := math.Inf(1), math.Inf(-1)
	for _, conn := range tl.Gantt {
		for _, s := range conn.Spans() {
			if s.Start > 0 {
				xmin = min(xmin, unix(o, s.Start))
			}
		}
	}
	xmax = unix(o, r.End)
	// A bar narrower than this carries no text (it would cover the next).
	minText := (xmax - xmin) * 0.08
	for row, conn := range tl.Gantt {
		y := float64(len(tl.Gantt) - row)
		ends := conn.Endpoints()
		name := fmt.Sprintf(":%d → %s", ends.Local.Port(), ends.Remote)
		if conn.Owner.Known() {
			name += fmt.Sprintf("  %d %s", conn.Owner.PID, conn.Owner.Comm)
		}
		ticks = append(ticks, plot.Tick{Value: y, Label: name})
		for i, s := range conn.Spans() {
			if s.Start == 0 || s.State == tracer.Close || s.State == tracer.Listen {
				continue
			}
			end := s.Start + uint64(s.Duration)
			open := false
			if !s.Known && !s.Min {
				if i < len(conn.Spans())-1 {
					continue
				}
				end, open = r.End, true // still in it
			}
			x0, x1 := unix(o, s.Start), unix(o, max(end, s.Start))
			xmin, xmax = min(xmin, x0), max(xmax, x1)
			poly, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: y - 0.35}, {X: x1, Y: y - 0.35}, {X: x1, Y: y + 0.35}, {X: x0, Y: y + 0.35}})
			if err != nil {
				return c, err
			}
			poly.Color = stateColors[s.State]
			poly.LineStyle.Color = ink
			poly.LineStyle.Width = vg.Points(0.4)
			p.Add(poly)
			label := stateAbbrev[s.State]
			if s.Timewait {
				label += "/tw"
			}
			if open {
				label += " ▸"
			}
			if x1-x0 < minText {
				continue
			}
			label += " " + string(output.AppendDuration(nil, time.Duration((x1-x0)*1e9)))
			lx = append(lx, plotter.XY{X: x0, Y: y})
			labels = append(labels, label)
		}
	}
	if len(labels) == 0 {
		return c, nil
	}
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: lx, Labels: labels})
	if err != nil {
		return c, err
	}
	for i := range l.TextStyle {
		l.TextStyle[i].Font.Size = vg.Points(7)
		l.TextStyle[i].Color = ink
		l.TextStyle[i].YAlign = draw.YCenter
	}
	l.Offset = vg.Point{X: vg.Points(2)}
	p.Add(l)
	p.Y.Tick.Marker = plot.ConstantTicks(ticks)
	p.Y.Min, p.Y.Max = 0.3, float64(len(tl.Gantt))+0.7
	p.X.Min, p.X.Max = xmin, xmax+(xmax-xmin)*0.08
	c.SVG, err = svg(p, 10*vg.Inch, vg.Length(1.2+0.32*float64(len(tl.Gantt)))*vg.Inch)
	return c, err
}

// tables: the totals behind the charts.
func tables(r *output.Report, o Options) []table {
	var out []table
	if len(r.Reasons) > 0 {
		t := table{Title: "Close reasons", Head: []string{"reason", "connections"}}
		for _, k := range sortedKeys(r.Reasons) {
			t.Rows = append(t.Rows, []string{k, fmt.Sprint(r.Reasons[k])})
		}
		slices.SortStableFunc(t.Rows, func(a, b []string) int { return cmp.Compare(len(b[1]), len(a[1])) })
		out = append(out, t)
	}
	if len(r.Time.ResetReasons) > 0 {
		t := table{Title: "Resets sent, by the kernel's reason", Head: []string{"reason", "resets"}}
		var names []string
		counts := map[string]uint64{}
		for code, n := range r.Time.ResetReasons {
			name := fmt.Sprintf("reason %d", code)
			if o.Header != nil {
				if s, ok := o.Header.RstReasons[code]; ok {
					name = s
				}
			}
			counts[name] += n
		}
		names = sortedKeys(counts)
		for _, k := range names {
			t.Rows = append(t.Rows, []string{k, fmt.Sprint(counts[k])})
		}
		out = append(out, t)
	}
	var ts table
	ts.Title, ts.Head = "Time in state", []string{"state", "count", "p50", "p90", "p99", "max"}
	for _, st := range stackOrder {
		if h := r.Durations[st]; h != nil && h.N() > 0 {
			d := func(v time.Duration) string { return string(output.AppendDuration(nil, v)) }
			ts.Rows = append(ts.Rows, []string{st.String(), fmt.Sprint(h.N()), d(h.Quantile(0.5)), d(h.Quantile(0.9)), d(h.Quantile(0.99)), d(h.Max())})
		}
	}
	if len(ts.Rows) > 0 {
		out = append(out, ts)
	}
	if len(r.Lost) > 0 {
		t := table{Title: "Lost events (the kernel's ring buffer was full, or the kernel skipped tcpstate)", Head: []string{"time", "lost"}}
		for i, l := range r.Lost {
			if i == 50 {
				t.Rows = append(t.Rows, []string{"…", fmt.Sprintf("%d more reports", len(r.Lost)-50)})
				break
			}
			t.Rows = append(t.Rows, []string{o.Clock.Wall(l.Time).In(o.Location).Format("15:04:05.000"), fmt.Sprint(l.Lost)})
		}
		out = append(out, t)
	}
	return out
}

var pageTemplate = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>
{{.FontCSS}}
body { font-family: "Liberation Sans", Arial, Helvetica, sans-serif; color: #202020; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .3em; }
h2 { font-size: 1.15em; margin: 1.6em 0 .2em; border-bottom: 1px solid #ccc; }
p.caption { margin: .2em 0 .6em; color: #444; font-size: .9em; }
table { border-collapse: collapse; font-size: .9em; margin: .4em 0 1em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
td.num { text-align: right; }
.panels { display: flex; flex-wrap: wrap; gap: .5em; }
.panel { flex: 1 1 480px; }
.warn { color: #8a4b00; }
footer { margin-top: 2em; color: #777; font-size: .8em; }
@media print { body { max-width: none; margin: 0; } section { break-inside: avoid; } }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
<table class="facts">{{range .Facts}}<tr><th>{{index . 0}}</th><td>{{index . 1}}</td></tr>{{end}}</table>
{{range .Notes}}<p class="warn">⚠ {{.}}</p>{{end}}
{{range .Warnings}}<p class="warn">Kernel: {{.}}</p>{{end}}
{{if .Sysctls}}<h2>TCP sysctls at the start</h2>
{{range .Sysctls}}<table><tr><th colspan="2">network namespace {{.NetNS}}</th></tr>{{range .Values}}<tr><td>{{index . 0}}</td><td class="num">{{index . 1}}</td></tr>{{end}}</table>{{end}}{{end}}
{{if .Changes}}<h2>Sysctl changes during the capture</h2><ul>{{range .Changes}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{range .Charts}}<section class="chart" id="{{.ID}}">
<h2>{{.Title}}</h2>
<p class="caption">{{.Caption}}</p>
{{.SVG}}
</section>
{{end}}
{{range .Tables}}<section><h2>{{.Title}}</h2><table><tr>{{range .Head}}<th>{{.}}</th>{{end}}</tr>{{range .Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>{{end}}</table></section>
{{end}}
<footer>{{.Footer}}</footer>
</body>
</html>
`))

// eventsFact: how many events, how many lost, and how many transitions had
// steps between not seen.
func eventsFact(r *output.Report) string {
	s := fmt.Sprintf("%d, %d lost", r.Events, r.LostTotal)
	if r.Unseen > 0 {
		s += fmt.Sprintf(", %d transitions with steps between not seen", r.Unseen)
	}
	return s
}
