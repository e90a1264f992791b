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
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

const watchUsage = `Usage: tcpstate watch [flags]

A live table, like top, of the sockets sitting in CLOSE_WAIT, FIN_WAIT1,
FIN_WAIT2 (full or timewait socket), CLOSING, LAST_ACK and TIME_WAIT: age in
state, owner, endpoints, oldest first; then the same grouped per process and
per remote endpoint, so that a leaking process stands out. Sockets older than
tcpstate are found at start; their age comes from the kernel's timestamps:
exact for timewait sockets (their timer), a range where the kernel bounds it
("300ms..13.2s": CLOSE_WAIT began between the last data and the last ACK
received, FIN_WAIT2 between the last data sent and the last ACK received),
else an estimate ("~": the last send for FIN_WAIT1, LAST_ACK, CLOSING) or the
time since start. Rows rank by the oldest they can be. A timewait socket
belongs to no process: its PID, when known, is the one that closed it, in
parentheses. A NETNS column appears when the sockets span namespaces. Needs
root.

Flags:
%s`

type watchFlags struct {
	filterFlags
	tracerFlags
	output   *enumValue
	once     bool
	linger   durationValue
	interval durationValue
	top      int
	duration durationValue
}

func newWatchFlags() (*pflag.FlagSet, *watchFlags) {
	f := &watchFlags{output: newEnum("text", "text", "json"), interval: durationValue(2 * time.Second)}
	fs := pflag.NewFlagSet("watch", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.VarP(f.output, "output", "o", "output format: text or json (one object per socket, then per group)")
	fs.BoolVar(&f.once, "once", false, "print one snapshot and exit")
	fs.Var(&f.linger, "linger", "only sockets in their state at least this `long` (e.g. 30s)")
	fs.VarP(&f.interval, "interval", "i", "refresh every `interval`")
	fs.IntVar(&f.top, "top", 30, "text: rows of the socket table (0: all)")
	f.filterFlags.register(fs)
	fs.VarP(&f.duration, "duration", "d", "stop after this long; default: until interrupted")
	f.tracerFlags.register(fs)
	return fs, f
}

func watchHelp(fs *pflag.FlagSet) string {
	return fmt.Sprintf(watchUsage, fs.FlagUsagesWrapped(80))
}

func runWatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newWatchFlags()
	if err := parseFlags(fs, args, watchHelp, stdout, false); err != nil {
		return err
	}
	if f.interval <= 0 {
		return usagef("--interval must be positive")
	}
	filter, err := f.filter()
	if err != nil {
		return err
	}
	states := output.LingerStates
	if filter.States != 0 {
		states = filter.States
	}
	filter.States = 0

	t, err := f.tracerFlags.start(filter, stderr)
	if err != nil {
		return err
	}
	defer t.Close()

	isTTY := false
	if out, ok := stdout.(*os.File); ok {
		_, err := unix.IoctlGetTermios(int(out.Fd()), unix.TCGETS)
		isTTY = err == nil
	}
	w := output.NewWatch(stdout, output.WatchOptions{
		Clock: tracer.NewClock(), Top: f.top, Clear: isTTY && !f.once, JSON: f.output.value == "json",
		NetNSName: netnsNames(),
	})
	ws := &watchSink{w: w, filter: filter, states: states, linger: time.Duration(f.linger), interval: time.Duration(f.interval)}
	ws.tl = timeline.New(ws, timeline.Options{MaxConns: f.maxConns})
	seed(t, ws.tl, stderr)
	if f.once {
		return ws.render(tracer.BootNow())
	}
	if err := ws.render(tracer.BootNow()); err != nil {
		return err
	}
	if f.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(f.duration))
		defer cancel()
	}
	ready(ctx)
	return t.Run(ctx, ws.tl)
}

// watchSink follows the timeline and renders a snapshot every interval, from
// the tracer's own goroutine (the timeline is not shared).
type watchSink struct {
	w        *output.Watch
	tl       *timeline.Timeline
	filter   tracer.Filter
	states   tracer.StateSet
	linger   time.Duration
	interval time.Duration
	last     uint64
	lost     uint64
}

func (s *watchSink) Event(e *tracer.Event) error {
	if e.Type == tracer.EventLost {
		s.lost += e.Lost
	}
	return nil
}

func (s *watchSink) Idle() error {
	now := tracer.BootNow()
	if now-s.last < uint64(s.interval) {
		return nil
	}
	return s.render(now)
}

func (s *watchSink) render(now uint64) error {
	s.last = now
	return s.w.Render(now, output.Snapshot(s.tl, now, &s.filter, s.states, s.linger), s.lost)
}
