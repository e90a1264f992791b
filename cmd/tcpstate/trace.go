// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpstate/tcpstate/output"
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
lives in the timewait socket. --wide adds the local address, thread, how the
owner was learnt, the task on the CPU, cookie and netns. JSON lines: one object
per event; the fields are listed in README.md.
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
}

func newTraceFlags() (*pflag.FlagSet, *traceFlags) {
	f := &traceFlags{output: newEnum("text", "text", "json")}
	fs := pflag.NewFlagSet("trace", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.VarP(f.output, "output", "o", "output format: text or json (JSON lines)")
	fs.BoolVarP(&f.wide, "wide", "w", false, "text: more columns (local address, owner source, task on CPU, cookie, netns)")
	fs.BoolVar(&f.noHeader, "no-header", false, "text: no header line")
	fs.BoolVar(&f.timeline, "timeline", false, "print one record per finished connection, with every state and its duration, instead of each transition")
	fs.Var(&f.linger, "linger", "also report a socket the moment it has sat this `long` in CLOSE_WAIT or FIN_WAIT2 (e.g. 30s)")
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
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			fmt.Fprint(stdout, traceHelp(fs))
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("trace takes no arguments (got %q)", fs.Args())
	}
	filter, err := f.filter()
	if err != nil {
		return err
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
	var r interface {
		output.Renderer
		output.ConnRenderer
	}
	if f.output.value == "json" {
		r = output.NewJSON(stdout, output.JSONOptions{Clock: clock, Kernel: info})
	} else {
		r = output.NewText(stdout, output.TextOptions{Wide: f.wide, NoHeader: f.noHeader, Clock: clock, Kernel: info, Diag: stderr})
	}
	sink := &output.Sink{Filter: &filter, Renderer: r, LostOnly: f.timeline}
	opts := timeline.Options{MaxConns: f.maxConns, Linger: time.Duration(f.linger), Start: tracer.BootNow()}
	if f.timeline {
		opts.OnFinish = func(c *timeline.Conn) error {
			if !timeline.Match(&filter, c, true) {
				return nil
			}
			sink.Shown++
			return r.RenderConn(c)
		}
	}
	tl := timeline.New(sink, opts)
	seed(t, tl, stderr)

	if f.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(f.duration))
		defer cancel()
	}
	runErr := t.Run(ctx, tl)
	if err := tl.Flush(); err != nil && runErr == nil {
		runErr = fmt.Errorf("writing output: %w", err)
	}
	if err := r.Flush(); err != nil && runErr == nil {
		runErr = fmt.Errorf("writing output: %w", err)
	}
	stats, err := t.Stats()
	if err != nil {
		return err
	}
	shown := "shown"
	if f.timeline {
		shown = "connections shown"
	}
	fmt.Fprintf(stderr, "tcpstate: %s\n", summary(stats, sink.Shown, shown, tl.Stats()))
	return runErr
}

// summary is the end-of-run line.
func summary(s tracer.Stats, shown uint64, what string, tl timeline.Stats) string {
	line := fmt.Sprintf("%d events seen, %d %s, %d lost (%d filtered in kernel)", s.Seen, shown, what, s.Lost, s.Filtered)
	if tl.Evicted > 0 {
		line += fmt.Sprintf("; %d connections evicted from a full table (raise --max-connections)", tl.Evicted)
	}
	if s.TimewaitUntracked > 0 {
		line += fmt.Sprintf("; %d timewait sockets ended unfollowed", s.TimewaitUntracked)
	}
	return line
}

// seed walks the existing sockets into the timeline; a failure costs only
// what the walk would have told, so it is a warning.
func seed(t *tracer.Tracer, tl *timeline.Timeline, stderr io.Writer) {
	socks, err := t.Scan()
	if err != nil {
		fmt.Fprintf(stderr, "tcpstate: warning: %v: sockets older than the tracer start unnamed\n", err)
		return
	}
	tl.Seed(socks)
}
