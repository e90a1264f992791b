// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/output/tui"
	"github.com/tcpstate/tcpstate/pipeline"
	"github.com/tcpstate/tcpstate/tracer"
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

On a terminal, watch is a full-screen view that fits the window: the header
(counts per state, events, losses) stays on top, the table fills the rest
with "N more" below, and sockets in a closing state for 10 s or more are
marked "!" (and red, unless NO_COLOR is set). Keys: a/s/p/r sort by age,
state, process, remote; tab switches to the groups per process and per
remote; f shows one state at a time; / filters by process, pid, address or
port as you type (enter keeps, esc clears); space pauses; q or Ctrl-C quits.
To a pipe or a file, with --once, -o json or --no-fullscreen: snapshots as
text (or JSON lines), as below.

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
	noTUI    bool
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
	fs.BoolVar(&f.noTUI, "no-fullscreen", false, "on a terminal, print snapshots as text (as to a pipe) instead of the full-screen view")
	f.filterFlags.register(fs)
	f.filterFlags.registerPlace(fs)
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
	if f.top < 0 {
		return usagef("--top %d: want 0 (all) or more", f.top)
	}
	filter, err := f.filter()
	if err != nil {
		return err
	}
	states := output.LingerStates
	if filter.States != 0 {
		states = filter.States
	}
	kernelFilter := filter
	kernelFilter.States = 0 // a socket's age needs the transition into its state

	tableMemoryLimit(f.maxConns, 512)
	f.warn(stderr, &filter)
	t, err := f.tracerFlags.start(kernelFilter, stderr)
	if err != nil {
		return err
	}
	defer t.Close()

	isTTY := false
	if out, ok := stdout.(interface{ Fd() uintptr }); ok {
		_, err := unix.IoctlGetTermios(int(out.Fd()), unix.TCGETS)
		isTTY = err == nil
	}
	// On a terminal, live: the full-screen view. Otherwise (a pipe, a
	// file, --once, JSON) the snapshots as text or JSON lines.
	// (keys come from stdin: without a terminal there, kubectl exec -t
	// without -i, the view could not be driven)
	_, stdinErr := unix.IoctlGetTermios(int(os.Stdin.Fd()), unix.TCGETS)
	full := isTTY && stdinErr == nil && !f.once && f.output.value == "text" && !f.noTUI
	var w pipeline.WatchRenderer
	var screen *screenRenderer
	var reuse func() []output.Socket
	if full {
		screen = &screenRenderer{free: make(chan []output.Socket, 2)}
		w, reuse = screen, screen.reuse
	} else {
		w = output.NewWatch(stdout, output.WatchOptions{
			Clock: tracer.NewClock(), Top: f.top, Clear: isTTY && !f.once, JSON: f.output.value == "json",
			NetNSName: netnsNames(), Attribute: resolver.Lookup,
		})
	}
	ws := pipeline.NewWatch(w, pipeline.WatchOptions{Filter: filter, States: states, Linger: time.Duration(f.linger),
		Interval: time.Duration(f.interval), MaxConns: f.maxConns, Rescan: rescan(t, filter), Reuse: reuse,
		FindHolders: t.FindHolders})
	found := seedWalk(t, filter, tracer.ScanOptions{TimeWait: true}, stderr, ws.SeedSocket)
	warnTableFull(stderr, ws.Evicted(), found, f.maxConns, " and are not shown: raise it")
	if full {
		host, _ := os.Hostname()
		screen.events = ws.Events
		return runScreen(ctx, tui.New(tui.Options{Clock: tracer.NewClock(), Host: host, NetNSName: netnsNames(), Release: screen.release}), screen, func(ctx context.Context) error {
			if err := ws.Render(tracer.BootNow()); err != nil {
				return err
			}
			return pipeline.Live(ctx, t, ws.Sink(), time.Duration(f.duration), ready)
		})
	}
	if err := ws.Render(tracer.BootNow()); err != nil || f.once {
		return err
	}
	return pipeline.Live(ctx, t, ws.Sink(), time.Duration(f.duration), ready)
}

// screenRenderer hands each snapshot to the full-screen view, which hands
// the rows back (free) when it lets go of them.
type screenRenderer struct {
	p      *tea.Program
	events func() uint64
	free   chan []output.Socket
}

// release takes rows back from the view (its goroutine); beyond two, the
// collector has them. Rows with no room (an empty snapshot's) save nothing.
func (s *screenRenderer) release(rows []output.Socket) {
	if cap(rows) == 0 {
		return
	}
	select {
	case s.free <- rows[:0]:
	default:
	}
}

// reuse is rows the view let go of, or nil (the tracer's goroutine).
func (s *screenRenderer) reuse() []output.Socket {
	select {
	case rows := <-s.free:
		return rows
	default:
		return nil
	}
}

func (s *screenRenderer) Render(now uint64, rows []output.Socket, lost uint64) error {
	s.p.Send(tui.Snapshot{Now: now, Rows: rows, Events: s.events(), Lost: lost}) // (kept: WatchOptions.Reuse)
	return nil
}

// runScreen runs the view on the terminal while trace runs, until either
// ends: q or Ctrl-C in the view, or the tracer's end (--duration, a signal).
// The terminal is restored in every case.
func runScreen(ctx context.Context, m tui.Model, s *screenRenderer, trace func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Signals end ctx (main): Bubble Tea's own handler can deadlock on
	// SIGTERM (charmbracelet/bubbletea#1806), so it is left out.
	s.p = tea.NewProgram(m, tea.WithAltScreen(), tea.WithContext(ctx), tea.WithInput(os.Stdin), tea.WithOutput(os.Stdout),
		tea.WithoutSignalHandler())
	errc := make(chan error, 1)
	go func() {
		err := trace(ctx)
		s.p.Quit()
		errc <- err
	}()
	_, runErr := s.p.Run()
	cancel()
	err := <-errc
	if errors.Is(runErr, tea.ErrProgramKilled) || errors.Is(runErr, context.Canceled) {
		runErr = nil // stopped by the tracer's end or a signal
	}
	if err == nil {
		err = runErr
	}
	return err
}
