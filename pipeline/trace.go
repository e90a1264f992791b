// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// TraceOptions configure what `trace` does with events.
type TraceOptions struct {
	Filter   tracer.Filter
	JSON     bool
	Wide     bool // text
	NoHeader bool // text
	// Conns prints one record per finished connection instead of each
	// transition.
	Conns    bool
	Linger   time.Duration // 0: no linger events
	MaxConns int
	Clock    tracer.Clock
	Kernel   tracer.KernelInfo
	Out      io.Writer
	Diag     io.Writer // text: messages about the output (stderr)
	// Rescan, live: after a loss the timeline is made to agree with a
	// fresh walk (nil on replay: the kernel then is gone).
	Rescan Rescan
	// Attribute, live: where each owner runs (JSON, --wide); nil on replay.
	Attribute output.Attribute
	// NetNSName, live: names a namespace by inode (text --wide); nil on
	// replay (names are this host's, now).
	NetNSName func(inode uint32) string
}

// Trace is trace's pipeline, live or replayed: timeline -> filter ->
// renderer.
type Trace struct {
	tl     *timeline.Timeline
	Filter *Filter
	conns  bool
	async  *Async // nil: rendering on the caller's goroutine
	r      interface {
		output.Renderer
		output.ConnRenderer
	}
}

// NewTrace assembles the stages after the source.
func NewTrace(o TraceOptions) *Trace { return newTrace(o, false) }

// newTrace is NewTrace; with async the renderer runs on a goroutine of its
// own (Async), beside the timeline: for a replay, whose reading nothing else
// paces. Not with Conns, whose connections the timeline reuses once
// rendered.
func newTrace(o TraceOptions, async bool) *Trace {
	p := &Trace{conns: o.Conns}
	if o.JSON {
		p.r = output.NewJSON(o.Out, output.JSONOptions{Clock: o.Clock, Kernel: o.Kernel, Attribute: o.Attribute})
	} else {
		p.r = output.NewText(o.Out, output.TextOptions{Wide: o.Wide, NoHeader: o.NoHeader, Clock: o.Clock, Kernel: o.Kernel, Diag: o.Diag, Attribute: o.Attribute,
			NetNSName: o.NetNSName})
	}
	var render tracer.Sink = Render{p.r}
	if async && !o.Conns {
		p.async = NewAsync(render)
		render = p.async
	}
	p.Filter = &Filter{Filter: &o.Filter, Next: render, LostOnly: o.Conns}
	opts := timeline.Options{MaxConns: o.MaxConns, Linger: o.Linger, Spans: o.Conns}
	if o.Conns {
		p.Filter.Conns = p.r
		opts.OnFinish = p.Filter.Finished
	}
	rs := &resync{rescan: o.Rescan, next: p.Filter, stderr: o.Diag}
	p.tl = timeline.New(rs, opts)
	rs.tl = p.tl
	return p
}

// Begin writes what the output shows before any event (text: its header),
// for a live trace, which may wait long for its first.
func (p *Trace) Begin() error {
	if b, ok := p.r.(interface{ Begin(conns bool) error }); ok {
		return b.Begin(p.conns)
	}
	return nil
}

// Seed puts the sockets of the start-up walk in the timeline.
func (p *Trace) Seed(socks []tracer.Socket) { p.tl.Seed(socks) }

// SeedSocket is Seed for one socket of a streamed walk (ScanEach); a
// timewait socket is left to the kernel side (see CaptureWalk).
func (p *Trace) SeedSocket(s *tracer.Socket) {
	if !s.Timewait {
		p.tl.SeedSocket(s)
	}
}

// Sink is where the source feeds events.
func (p *Trace) Sink() tracer.Sink { return p.tl }

// TimelineStats are the connection table's counters.
func (p *Trace) TimelineStats() timeline.Stats { return p.tl.Stats() }

// ShownWhat names what Filter.Shown counts.
func (p *Trace) ShownWhat() string {
	if p.conns {
		return "connections shown"
	}
	return "shown"
}

// Finish releases what the timeline holds and flushes the output.
func (p *Trace) Finish() error {
	err := p.tl.Flush()
	if p.async != nil {
		if cerr := p.async.Close(); err == nil {
			err = cerr
		}
		// Counted as shown, never rendered: after an error.
		p.Filter.Shown -= min(p.async.Dropped, p.Filter.Shown)
	}
	if err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	if err := p.r.Flush(); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}

// ReplayTrace feeds the capture at path through a trace pipeline, and says on
// stderr what it read. It renders beside the reading (newTrace).
func ReplayTrace(ctx context.Context, path string, o TraceOptions) error {
	return replayTrace(ctx, path, o, true)
}

func replayTrace(ctx context.Context, path string, o TraceOptions, async bool) error {
	stderr := o.Diag
	if stderr == nil {
		stderr = io.Discard
	}
	rd, file, err := capture.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	o.Clock, o.Kernel = rd.Header.Clock(), rd.Header.KernelInfo()
	p := newTrace(o, async)
	n, err := Replay(ctx, rd, p.tl)
	interrupted := ctx.Err() != nil && errors.Is(err, ctx.Err())
	if interrupted {
		err = nil // what was read is shown, and said
	}
	// (Finish first: the renderer may still be writing to stderr, its loss
	// reports, on its own goroutine.)
	if ferr := p.Finish(); err == nil {
		err = ferr
	}
	if interrupted {
		fmt.Fprintf(stderr, "tcpstate: interrupted: %s read in part\n", path)
	}
	ReadNotes(stderr, path, rd)
	fmt.Fprintf(stderr, "tcpstate: %d events read, %d %s, %d lost when recorded\n", n, p.Filter.Shown, p.ShownWhat(), p.Filter.Lost)
	return err
}

// Report reads captures through the timeline and the filter into a report.
// The clock is the first capture's.
func Report(ctx context.Context, paths []string, filter *tracer.Filter, stderr io.Writer) (*output.Report, tracer.Clock, error) {
	rep, clock, _, err := ReportWithHeader(ctx, paths, filter, stderr)
	return rep, clock, err
}

// captureStart is when a capture begins, CLOCK_BOOTTIME ns (0: unknown): a
// flight recorder's dump at its oldest event kept, if it dropped older ones,
// else when the recorder (or, rotated, this file) started.
func captureStart(h *capture.Header) uint64 {
	if h.FlightStart != 0 {
		return h.FlightStart
	}
	if h.Started.IsZero() || h.BootWall == 0 {
		return 0
	}
	return uint64(max(h.Started.UnixNano()-h.BootWall, 0))
}

// captureOrder orders captures by when they began, whatever order the
// shell listed them in (a rotated set expands newest first), and drops a
// file given twice.
func captureOrder(paths []string, stderr io.Writer) ([]string, error) {
	type in struct {
		path    string
		started time.Time
		fi      os.FileInfo
	}
	var ins []in
	for _, path := range paths {
		rd, file, err := capture.Open(path)
		if err != nil {
			return nil, err
		}
		fi, _ := file.Stat()
		started := rd.Header.Started
		file.Close()
		if fi != nil && slices.ContainsFunc(ins, func(x in) bool { return x.fi != nil && os.SameFile(x.fi, fi) }) {
			fmt.Fprintf(stderr, "tcpstate: warning: %s given twice: read once\n", path)
			continue
		}
		ins = append(ins, in{path, started, fi})
	}
	slices.SortStableFunc(ins, func(a, b in) int { return a.started.Compare(b.started) })
	out := make([]string, len(ins))
	for i, x := range ins {
		out[i] = x.path
	}
	return out, nil
}

// ReportWithHeader is Report that also returns the first capture's header
// (report --html shows it).
func ReportWithHeader(ctx context.Context, paths []string, filter *tracer.Filter, stderr io.Writer) (*output.Report, tracer.Clock, *capture.Header, error) {
	rep := output.NewReport()
	var clock tracer.Clock
	var header *capture.Header
	paths, err := captureOrder(paths, stderr)
	if err != nil {
		return nil, clock, header, err
	}
	for i, path := range paths {
		rd, file, err := capture.Open(path)
		if err != nil {
			return nil, clock, header, err
		}
		if i == 0 {
			clock = rd.Header.Clock()
			h := rd.Header
			header = &h
		}
		nss := map[uint32]map[string]string{}
		for _, ns := range rd.Header.Namespaces {
			nss[ns.Inode] = ns.Sysctls
		}
		rep.SysctlBaseline(nss)
		rep.Covers(captureStart(&rd.Header))
		f := &Filter{Filter: filter, Next: rep}
		tl := timeline.New(f, timeline.Options{Spans: true, OnFinish: func(c *timeline.Conn) error {
			if timeline.Match(filter, c, true) {
				return rep.FinishedConn(c)
			}
			return nil
		}})
		_, err = replay(ctx, rd, tl, ReplayHooks{
			Sockets: func(socks []tracer.Socket) {
				rep.Seed(socks, func(s *tracer.Socket) bool { return filter.MatchConn(&s.Endpoints, &s.Owner, s.State, s.State) })
			},
			Sysctls: func(s *capture.SysctlSnapshot) {
				rep.Covers(s.Time)
				nss := map[uint32]map[string]string{}
				for _, ns := range s.Namespaces {
					nss[ns.Inode] = ns.Sysctls
				}
				rep.SysctlSnapshot(s.Time, nss)
			},
		})
		if err == nil {
			err = tl.Flush()
		}
		file.Close()
		ReadNotes(stderr, path, rd)
		for _, w := range rd.Warnings() {
			rep.Notes = append(rep.Notes, path+": "+w)
		}
		if err != nil {
			return nil, clock, header, fmt.Errorf("%s: %w", path, err)
		}
		rep.Finish(tl, func(c *timeline.Conn) bool { return timeline.Match(filter, c, false) })
	}
	return rep, clock, header, nil
}
