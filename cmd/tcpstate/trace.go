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
)

const traceUsage = `Usage: tcpstate trace [flags]

Prints every TCP state transition on this host as it happens, with the process
that owns the socket (not whichever task was on the CPU) and the time the socket
spent in the state it left. Needs root (CAP_BPF and CAP_PERFMON) and kernel BTF.
Stops at Ctrl-C, SIGTERM or after --duration, with a summary on stderr.

Flags:
%s
Text columns: TIME (local time of day), PID and COMM of the owner ("-" when
never observed), LPORT (local port), REMOTE (peer address:port), DUR (time spent
in the old state, "-" when the tracer did not see it begin), TRANSITION (old ->
new state, with the socket error on the way to CLOSE). --wide adds the local
address, thread, how the owner was learnt, the task on the CPU, cookie and netns.
JSON lines: one object per event; the fields are listed in README.md.
`

type traceFlags struct {
	filterFlags
	output   *enumValue
	wide     bool
	noHeader bool
	duration durationValue
	ringbuf  sizeValue
	btf      string
}

func newTraceFlags() (*pflag.FlagSet, *traceFlags) {
	f := &traceFlags{output: newEnum("text", "text", "json"), ringbuf: tracer.DefaultRingBufferSize}
	fs := pflag.NewFlagSet("trace", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.VarP(f.output, "output", "o", "output format: text or json (JSON lines)")
	fs.BoolVarP(&f.wide, "wide", "w", false, "text: more columns (local address, owner source, task on CPU, cookie, netns)")
	fs.BoolVar(&f.noHeader, "no-header", false, "text: no header line")
	f.filterFlags.register(fs)
	fs.VarP(&f.duration, "duration", "d", "stop after this long (e.g. 30s, 5m, or seconds); default: until interrupted")
	fs.Var(&f.ringbuf, "ringbuf-size", "kernel ring buffer `size` (power of two, e.g. 256K, 8M); more absorbs bursts")
	fs.StringVar(&f.btf, "btf", "", "kernel BTF `file`, for kernels that do not publish /sys/kernel/btf/vmlinux")
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

	t, err := tracer.New(tracer.Config{Filter: filter, RingBufferSize: int(f.ringbuf), KernelBTF: f.btf})
	if err != nil {
		return err
	}
	defer t.Close()
	for _, w := range t.Warnings() {
		fmt.Fprintf(stderr, "tcpstate: warning: %s\n", w)
	}

	clock := tracer.NewClock()
	var r output.Renderer
	if f.output.value == "json" {
		r = output.NewJSON(stdout, output.JSONOptions{Clock: clock})
	} else {
		r = output.NewText(stdout, output.TextOptions{Wide: f.wide, NoHeader: f.noHeader, Clock: clock, Diag: stderr})
	}
	sink := &output.Sink{Filter: &filter, Renderer: r}

	if f.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(f.duration))
		defer cancel()
	}
	runErr := t.Run(ctx, sink)
	if err := r.Flush(); err != nil && runErr == nil {
		runErr = fmt.Errorf("writing output: %w", err)
	}
	stats, err := t.Stats()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "tcpstate: %d events seen, %d shown, %d lost (%d filtered in kernel)\n",
		stats.Seen, sink.Shown, stats.Lost, stats.Filtered)
	return runErr
}
