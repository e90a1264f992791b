// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

const traceUsage = `Usage: tcpstate trace [flags]

Prints every TCP state transition on this host as it happens, with the process
that owns the socket (not whichever task was on the CPU) and the time the socket
spent in the state it left. After close(), the kernel keeps FIN_WAIT2 and
TIME_WAIT in a timewait socket: tcpstate follows it to its end. Sockets older
than tcpstate are found at start and named from /proc. Needs root (CAP_BPF and
CAP_PERFMON) and kernel BTF. Stops at Ctrl-C, SIGTERM or after --duration, with
a summary on stderr.

Flags:
%s
Text columns: TIME (local time of day), PID and COMM of the owner ("-" when
unknown), LPORT (local port), REMOTE (peer address:port), DUR (time spent in the
old state; ">" began before tcpstate, "-" not seen to begin), TRANSITION, and in
parentheses why it closed (fin, rst_sent REASON, rst_received, refused, timeout,
timewait_expired, fin_timeout, timewait_killed, closed) or that the new state
lives in the timewait socket. The keepalive timer's events show in TRANSITION as
"keepalive armed|fired|probe N/M|answered|timeout|fin_wait2" with the effective
idle, interval and count and where each comes from (socket option or sysctl).
--wide adds the local address, thread, how the owner was learnt, the task on the
CPU, cookie and netns. JSON lines: one object per event; the fields are listed
in README.md.
`

type traceFlags struct {
	filterFlags
	tracerFlags
	output   *enumValue
	wide     bool
	noHeader bool
	duration durationValue
	timeline bool
	linger   durationValue
	read     string
	write    string
}

func newTraceFlags() (*pflag.FlagSet, *traceFlags) {
	f := &traceFlags{output: newEnum("text", "text", "json")}
	fs := pflag.NewFlagSet("trace", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.VarP(f.output, "output", "o", "output format: text or json (JSON lines)")
	fs.BoolVarP(&f.wide, "wide", "W", false, "text: more columns (local address, owner source, task on CPU, cookie, netns)")
	fs.BoolVar(&f.noHeader, "no-header", false, "text: no header line")
	fs.BoolVar(&f.timeline, "timeline", false, "print one record per finished connection, with every state and its duration, instead of each transition")
	fs.Var(&f.linger, "linger", "also report a socket the moment it has sat this `long` in CLOSE_WAIT or FIN_WAIT2 (e.g. 30s)")
	fs.StringVarP(&f.read, "read", "r", "", "replay a capture `file` (from record or -w) instead of tracing live")
	fs.StringVarP(&f.write, "write", "w", "", "also record what is traced to a capture `file` (see record)")
	f.filterFlags.register(fs)
	fs.VarP(&f.duration, "duration", "d", "stop after this long (e.g. 30s, 5m, or seconds); default: until interrupted")
	f.tracerFlags.register(fs)
	return fs, f
}

func traceHelp(fs *pflag.FlagSet) string {
	return fmt.Sprintf(traceUsage, fs.FlagUsagesWrapped(80))
}

func runTrace(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newTraceFlags()
	if err := parseFlags(fs, args, traceHelp, stdout, false); err != nil {
		return err
	}
	filter, err := f.filter()
	if err != nil {
		return err
	}
	if err := f.tracerFlags.validate(); err != nil {
		return err
	}

	if f.read != "" {
		if f.write != "" {
			return usagef("-r/--read and -w/--write exclude each other")
		}
		return replayTrace(f, filter, stdout, stderr)
	}

	kernelFilter := filter
	if f.timeline || f.linger > 0 {
		kernelFilter.States = 0 // a connection's history needs all its transitions
	}
	t, err := f.tracerFlags.start(kernelFilter, stderr)
	if err != nil {
		return err
	}
	defer t.Close()

	clock, info := tracer.NewClock(), t.Info()
	p := newTracePipeline(f, filter, clock, info, stdout, stderr)
	socks, nss := scanAll(t, tracer.ScanOptions{}, stderr)
	socks = fullSockets(socks)
	p.tl.Seed(socks)
	var src tracer.Sink = p.tl
	var w *capture.Writer
	if f.write != "" {
		if w, err = capture.Create(f.write, newHeader(clock, info, nss, t.Warnings()), capture.Options{}); err != nil {
			return err
		}
		if err := w.Sockets(socks); err != nil {
			w.Close()
			return err
		}
		src = tee{w, p.tl}
	}

	if f.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(f.duration))
		defer cancel()
	}
	ready(ctx)
	runErr := t.Run(ctx, src)
	if w != nil {
		if err := w.Close(); err != nil && runErr == nil {
			runErr = err
		}
	}
	if err := p.finish(); err != nil && runErr == nil {
		runErr = err
	}
	stats, err := t.Stats()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "tcpstate: %s\n", summary(stats, p.sink.Shown, p.shownWhat(), p.tl.Stats()))
	return runErr
}

// tracePipeline is what trace does with events, live or replayed: timeline,
// filter, renderer.
type tracePipeline struct {
	f    *traceFlags
	tl   *timeline.Timeline
	sink *output.Sink
	r    interface {
		output.Renderer
		output.ConnRenderer
	}
}

func newTracePipeline(f *traceFlags, filter tracer.Filter, clock tracer.Clock, info tracer.KernelInfo, stdout, stderr io.Writer) *tracePipeline {
	p := &tracePipeline{f: f}
	if f.output.value == "json" {
		p.r = output.NewJSON(stdout, output.JSONOptions{Clock: clock, Kernel: info})
	} else {
		p.r = output.NewText(stdout, output.TextOptions{Wide: f.wide, NoHeader: f.noHeader, Clock: clock, Kernel: info, Diag: stderr})
	}
	p.sink = &output.Sink{Filter: &filter, Renderer: p.r, LostOnly: f.timeline}
	opts := timeline.Options{MaxConns: f.maxConns, Linger: time.Duration(f.linger), Spans: f.timeline}
	if f.timeline {
		opts.OnFinish = func(c *timeline.Conn) error {
			if !timeline.Match(&filter, c, true) {
				return nil
			}
			p.sink.Shown++
			return p.r.RenderConn(c)
		}
	}
	p.tl = timeline.New(p.sink, opts)
	return p
}

func (p *tracePipeline) shownWhat() string {
	if p.f.timeline {
		return "connections shown"
	}
	return "shown"
}

// finish releases what the timeline holds and flushes the output.
func (p *tracePipeline) finish() error {
	if err := p.tl.Flush(); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	if err := p.r.Flush(); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}

// replayTrace feeds a capture through the same pipeline as live tracing.
func replayTrace(f *traceFlags, filter tracer.Filter, stdout, stderr io.Writer) error {
	rd, file, err := capture.Open(f.read)
	if err != nil {
		return err
	}
	defer file.Close()
	p := newTracePipeline(f, filter, rd.Header.Clock(), rd.Header.KernelInfo(), stdout, stderr)
	n, err := replay(rd, p.tl)
	if ferr := p.finish(); err == nil {
		err = ferr
	}
	for _, w := range rd.Warnings() {
		fmt.Fprintf(stderr, "tcpstate: warning: %s: %s\n", f.read, w)
	}
	kernelNotes(stderr, f.read, &rd.Header)
	fmt.Fprintf(stderr, "tcpstate: %d events read, %d %s, %d lost when recorded\n", n, p.sink.Shown, p.shownWhat(), p.sink.Lost)
	return err
}

// replay feeds every record of rd to tl, ticking it on the capture's own
// clock (linger events fire as they did live); it returns the events read.
func replay(rd *capture.Reader, tl *timeline.Timeline) (uint64, error) {
	var n, lastTick uint64
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		switch {
		case rec.Sockets != nil:
			tl.Seed(rec.Sockets)
		case rec.Event != nil:
			n++
			t := rec.Event.Time
			if err := tl.Event(rec.Event); err != nil {
				return n, err
			}
			if t > lastTick+uint64(200*time.Millisecond) {
				lastTick = t
				if err := tl.Tick(t); err != nil {
					return n, err
				}
			}
		}
	}
}

// tee records every event before the timeline sees it.
type tee struct {
	w    *capture.Writer
	next tracer.Sink
}

func (t tee) Event(e *tracer.Event) error {
	if err := t.w.Event(e); err != nil {
		return err
	}
	return t.next.Event(e)
}

func (t tee) Idle() error {
	if err := t.w.Idle(); err != nil {
		return err
	}
	return t.next.Idle()
}

// newHeader describes a capture made here, now.
func newHeader(clock tracer.Clock, info tracer.KernelInfo, nss []tracer.NetNS, warnings []string) capture.Header {
	release, arch := uname()
	host, _ := os.Hostname()
	h := capture.Header{
		Tcpstate: version, Hostname: host, Kernel: release,
		Arch: arch, Started: time.Now().UTC(), BootWall: clock.BootWall,
		HZ: info.HZ, RstReasons: info.RstReasons, Options: os.Args[1:], KernelWarnings: warnings,
	}
	for _, ns := range nss {
		h.Namespaces = append(h.Namespaces, capture.Namespace{Inode: ns.Inode, Sysctls: ns.Sysctls})
	}
	return h
}

// uname is this machine's kernel release and architecture.
func uname() (release, arch string) {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return unix.ByteSliceToString(uts.Release[:]), unix.ByteSliceToString(uts.Machine[:])
}

// kernelNotes says what the kernel that recorded a capture could not do.
func kernelNotes(stderr io.Writer, path string, h *capture.Header) {
	for _, w := range h.KernelWarnings {
		fmt.Fprintf(stderr, "tcpstate: note: %s was recorded on Linux %s: %s\n", path, h.Kernel, w)
	}
}

// scanAll walks the existing sockets; a failure costs only what the walk
// would have told, so it is a warning.
func scanAll(t *tracer.Tracer, opts tracer.ScanOptions, stderr io.Writer) ([]tracer.Socket, []tracer.NetNS) {
	socks, nss, err := t.ScanAll(opts)
	if err != nil {
		fmt.Fprintf(stderr, "tcpstate: warning: %v: sockets older than the tracer start unnamed\n", err)
	}
	return socks, nss
}

// fullSockets keeps the walk's full sockets: trace and record name owners
// from it, and a timewait socket has none (the kernel side follows those, so
// a host with many does not fill the table or the capture).
func fullSockets(socks []tracer.Socket) []tracer.Socket {
	out := socks[:0:0]
	for _, s := range socks {
		if !s.Timewait {
			out = append(out, s)
		}
	}
	return out
}

// skippedNote says how much of the loss the kernel's recursion guard made.
func skippedNote(s tracer.Stats) string {
	var n string
	if s.Skipped > 0 {
		n += fmt.Sprintf("; %d of the lost are state changes the kernel skipped (a softirq interrupting tcpstate on the same CPU)", s.Skipped)
	}
	if s.SkippedTimers > 0 {
		n += fmt.Sprintf("; the kernel skipped %d runs of the timer hooks (a TIME_WAIT or keepalive event lost if one was a TCP timer)", s.SkippedTimers)
	}
	return n
}

// summary is the end-of-run line.
func summary(s tracer.Stats, shown uint64, what string, tl timeline.Stats) string {
	line := fmt.Sprintf("%d events seen, %d %s, %d lost (%d filtered in kernel)", s.Seen, shown, what, s.AllLost(), s.Filtered)
	line += skippedNote(s)
	if tl.Evicted > 0 {
		line += fmt.Sprintf("; %d connections evicted from a full table (raise --max-connections)", tl.Evicted)
	}
	if s.TimewaitUntracked > 0 {
		line += fmt.Sprintf("; %d timewait sockets ended unfollowed", s.TimewaitUntracked)
	}
	return line
}

// seed walks the existing sockets, TIME_WAIT included, into the timeline.
func seed(t *tracer.Tracer, tl *timeline.Timeline, stderr io.Writer) {
	socks, _ := scanAll(t, tracer.ScanOptions{TimeWait: true}, stderr)
	tl.Seed(socks)
}
