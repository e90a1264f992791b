// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/pipeline"
	"github.com/tcpstate/tcpstate/tracer"
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
idle, interval and count and where each comes from (socket option or sysctl);
armed in FIN_WAIT2 it is the FIN_WAIT2 timeout, "fin_wait2 timer armed" (not
shown when the peer's FIN came with the ACK that armed it: TIME_WAIT follows).
--wide adds the local address, thread, how the owner was learnt, the task on the
CPU, cookie, container and netns (live: named as 'ip netns' names it, "host"
for tcpstate's own, else its inode; -r: the inode). JSON lines: one object per
event; the fields are listed in README.md.
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
	fs.BoolVarP(&f.wide, "wide", "W", false, "text: more columns (local address, owner source, task on CPU, cookie, container, netns)")
	fs.BoolVar(&f.noHeader, "no-header", false, "text: no header line")
	fs.BoolVar(&f.timeline, "timeline", false, "print one record per finished connection, with every state and its duration, instead of each transition")
	fs.Var(&f.linger, "linger", "also report a socket the moment it has sat this `long` in CLOSE_WAIT or FIN_WAIT2 (e.g. 30s)")
	fs.StringVarP(&f.read, "read", "r", "", "replay a capture `file` (from record or -w) instead of tracing live")
	fs.StringVarP(&f.write, "write", "w", "", "also record what is traced to a capture `file` (see record)")
	f.filterFlags.register(fs)
	f.filterFlags.registerPlace(fs)
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
	for _, name := range []string{"read", "write"} {
		if fs.Changed(name) && fs.Lookup(name).Value.String() == "" {
			return usagef("--%s: empty file name", name)
		}
	}
	opts := pipeline.TraceOptions{Filter: filter, JSON: f.output.value == "json", Wide: f.wide, NoHeader: f.noHeader,
		Conns: f.timeline, Linger: time.Duration(f.linger), MaxConns: f.maxConns, Out: stdout, Diag: stderr}

	if f.read != "" {
		if f.write != "" {
			return usagef("-r/--read and -w/--write exclude each other")
		}
		if f.cgroup != "" || f.container != "" {
			return usagef("--cgroup and --container look processes up on this host, live: not with -r/--read")
		}
		return pipeline.ReplayTrace(ctx, f.read, opts)
	}

	if f.write != "" {
		if err := capture.CheckPath(f.write); err != nil {
			return err
		}
	}
	kernelFilter := filter
	if f.timeline || f.linger > 0 {
		kernelFilter.States = 0 // a connection's history needs all its transitions
	}
	f.warn(stderr, &filter)
	t, err := f.tracerFlags.start(kernelFilter, stderr)
	if err != nil {
		return err
	}
	defer t.Close()

	opts.Clock, opts.Kernel, opts.Rescan, opts.Attribute = tracer.NewClock(), t.Info(), rescan(t, filter), resolver.Lookup
	opts.NetNSName = netnsNames()
	p := pipeline.NewTrace(opts)
	src := p.Sink()
	var tee *pipeline.Tee
	found := 0
	if f.write == "" {
		found = seedWalk(t, filter, tracer.ScanOptions{}, stderr, p.SeedSocket)
	} else {
		// The capture keeps the walk's sockets too, streamed into it as
		// the table gets them (see record).
		h := pipeline.Header(version, os.Args[1:], opts.Clock, opts.Kernel, tracer.NetNamespaces(), t.Warnings())
		if tee, err = pipeline.NewTee(f.write, h, pipeline.CaptureWalk(t, filter, stderr, func(s *tracer.Socket) {
			found++
			lookUpOwner(s)
			p.SeedSocket(s)
		}), p.Sink()); err != nil {
			return err
		}
		src = tee
	}
	warnTableFull(stderr, p.TimelineStats().Evicted, found, opts.MaxConns, ": their next transitions may lack owner and time in state; raise it")
	if err := p.Begin(); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}

	runErr := pipeline.Live(ctx, t, src, time.Duration(f.duration), ready)
	if tee != nil {
		if err := tee.Close(); err != nil && runErr == nil {
			runErr = err
		}
	}
	if err := p.Finish(); err != nil && runErr == nil {
		runErr = err
	}
	stats, err := t.Stats()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "tcpstate: %s\n", pipeline.Summary(stats, p.Filter.Shown, p.ShownWhat(), p.TimelineStats()))
	return runErr
}
