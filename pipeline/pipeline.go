// SPDX-License-Identifier: Apache-2.0

// Package pipeline assembles tcpstate's stages, one way: a source of events
// (the tracer live, or a capture replayed), an optional tee to a capture, the
// timeline (connections, owners, durations), the filter that counts what it
// passes, and a renderer or an aggregate. The commands in cmd/tcpstate only
// parse flags and wire these.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// Filter is the stage after the timeline: it passes the events the filter
// accepts, and every loss report, to Next, counting both. It is a
// tracer.Sink.
type Filter struct {
	Filter *tracer.Filter // nil: everything
	Next   tracer.Sink
	// Conns receives the finished connections the filter accepts (trace
	// --timeline: the timeline's OnFinish is Finished).
	Conns output.ConnRenderer
	// LostOnly passes loss reports but no events (trace --timeline).
	LostOnly bool

	Shown uint64 // events (or, with Conn, connections) passed on
	Lost  uint64 // events the kernel reported lost
}

// Event passes e on if the filter accepts it.
func (f *Filter) Event(e *tracer.Event) error {
	if e.Type == tracer.EventLost {
		f.Lost += e.Lost
		return f.Next.Event(e)
	}
	if f.LostOnly || f.Filter != nil && !f.Filter.Match(e) {
		return nil
	}
	f.Shown++
	return f.Next.Event(e)
}

// Idle passes on the end of a burst.
func (f *Filter) Idle() error { return f.Next.Idle() }

// Finished passes a finished connection to Conns if, in any state of its
// life, the filter accepts it (timeline.Options.OnFinish).
func (f *Filter) Finished(c *timeline.Conn) error {
	if f.Conns == nil || !timeline.Match(f.Filter, c, true) {
		return nil
	}
	f.Shown++
	return f.Conns.RenderConn(c)
}

// Rescan walks the kernel's sockets again: with timeWait, those in
// TIME_WAIT too (a churning host has hundreds of thousands).
type Rescan func(timeWait bool) ([]tracer.Socket, error)

// resync is the stage after the timeline that, after events were lost,
// walks the kernel's sockets again and makes the timeline agree: no ghost of
// a connection whose end was lost lingers in a view or raises a linger event.
//
// The walk runs beside the reader, not in its way: a churning host's walk
// of 100,000 TIME_WAIT sockets takes a second, and a reader held up that
// long loses the next second's events (which then asked for the next walk).
// The timeline keeps what changed while it ran (Timeline.Resync). Walks are
// spaced by twenty times what the last one took, so that they take at most
// 5% of the time (a second to ten apart).
type resync struct {
	tl           *timeline.Timeline
	rescan       Rescan
	withTimewait bool
	next         tracer.Sink
	dirty        bool
	notBefore    time.Time
	stderr       io.Writer

	walk      chan walked // the walk under way; nil when none
	walkBegan uint64      // when it began, CLOCK_BOOTTIME ns
}

type walked struct {
	socks []tracer.Socket
	err   error
	took  time.Duration
}

func (r *resync) Event(e *tracer.Event) error {
	if e.Type == tracer.EventLost && r.rescan != nil {
		r.dirty = true
	}
	return r.next.Event(e)
}

func (r *resync) Idle() error {
	switch {
	case r.walk != nil:
		select {
		case w := <-r.walk:
			r.walk = nil
			r.notBefore = time.Now().Add(min(max(time.Second, 20*w.took), 10*time.Second))
			if w.err != nil {
				r.tl.CancelWalk()
				if r.stderr != nil {
					fmt.Fprintf(r.stderr, "tcpstate: warning: walking the sockets again after a loss: %v\n", w.err)
				}
			} else if err := r.tl.Resync(w.socks, r.withTimewait, r.walkBegan); err != nil {
				return err
			}
		default:
		}
	case r.dirty && !time.Now().Before(r.notBefore):
		r.dirty = false
		r.walkBegan = tracer.BootNow()
		r.tl.BeginWalk()
		done := make(chan walked, 1)
		r.walk = done
		rescan, withTimewait := r.rescan, r.withTimewait
		go func() {
			began := time.Now()
			socks, err := rescan(withTimewait)
			done <- walked{socks: socks, err: err, took: time.Since(began)}
		}()
	}
	return r.next.Idle()
}

// Render makes a renderer a tracer.Sink.
type Render struct{ R output.Renderer }

func (r Render) Event(e *tracer.Event) error { return r.R.Render(e) }
func (r Render) Idle() error                 { return r.R.Flush() }

// Tee records every event to a capture file before Next sees it.
type Tee struct {
	w    *capture.Writer
	next tracer.Sink
}

// NewTee creates the capture at path with its header, and streams the walk
// into it (walkInto).
func NewTee(path string, h capture.Header, walk Walk, next tracer.Sink) (*Tee, error) {
	w, err := capture.Create(path, h, capture.Options{})
	if err != nil {
		return nil, err
	}
	if _, _, err := walkInto(w, h.Namespaces, walk); err != nil {
		w.Close()
		return nil, err
	}
	return &Tee{w: w, next: next}, nil
}

func (t *Tee) Event(e *tracer.Event) error {
	if err := t.w.Event(e); err != nil {
		return err
	}
	return t.next.Event(e)
}

func (t *Tee) Idle() error {
	if err := t.w.Idle(); err != nil {
		return err
	}
	return t.next.Idle()
}

// Close writes the capture's last block.
func (t *Tee) Close() error { return t.w.Close() }

// Live is the live source: the tracer feeds sink until ctx ends or, with
// d > 0, for d. started is called as reading begins (a command announces
// itself there; its tests wait for it).
func Live(ctx context.Context, t *tracer.Tracer, sink tracer.Sink, d time.Duration, started func(context.Context)) error {
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	if started != nil {
		started(ctx)
	}
	return t.Run(ctx, sink)
}

// Replay feeds every record of rd to tl, ticking it on the capture's own
// clock (linger events fire as they did live); it returns the events read.
// It stops early, with ctx's error, when ctx ends (Ctrl-C).
func Replay(ctx context.Context, rd *capture.Reader, tl *timeline.Timeline) (uint64, error) {
	return replay(ctx, rd, tl, ReplayHooks{})
}

// ReplayHooks see what a replay reads besides events (nil: not wanted).
type ReplayHooks struct {
	Sockets func([]tracer.Socket)         // a walk, before the timeline gets it
	Sysctls func(*capture.SysctlSnapshot) // a sysctl snapshot
}

func replay(ctx context.Context, rd *capture.Reader, tl *timeline.Timeline, hooks ReplayHooks) (uint64, error) {
	var n, lastTick uint64
	for i := 0; ; i++ {
		if i%1024 == 0 && ctx.Err() != nil {
			return n, ctx.Err()
		}
		rec, err := rd.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		switch {
		case rec.Sockets != nil:
			if hooks.Sockets != nil {
				hooks.Sockets(rec.Sockets)
			}
			tl.Seed(rec.Sockets)
		case rec.Sysctls != nil:
			if hooks.Sysctls != nil {
				hooks.Sysctls(rec.Sysctls)
			}
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

// Header describes a capture made here, now, by version run with args.
func Header(version string, args []string, clock tracer.Clock, info tracer.KernelInfo, nss []tracer.NetNS, warnings []string) capture.Header {
	release, arch := Uname()
	host, _ := os.Hostname()
	h := capture.Header{
		Tcpstate: version, Hostname: host, Kernel: release,
		Arch: arch, Started: time.Now().UTC(), BootWall: clock.BootWall,
		HZ: info.HZ, RstReasons: info.RstReasons, Options: args, KernelWarnings: warnings,
	}
	for _, ns := range nss {
		h.Namespaces = append(h.Namespaces, capture.Namespace{Inode: ns.Inode, Sysctls: ns.Sysctls})
	}
	return h
}

// Uname is this machine's kernel release and architecture.
func Uname() (release, arch string) {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return unix.ByteSliceToString(uts.Release[:]), unix.ByteSliceToString(uts.Machine[:])
}

// ReadNotes writes what a capture's reader warned about, and what the kernel
// that recorded it could not do.
func ReadNotes(stderr io.Writer, path string, rd *capture.Reader) {
	for _, w := range rd.Warnings() {
		fmt.Fprintf(stderr, "tcpstate: warning: %s: %s\n", path, w)
	}
	for _, w := range rd.Header.KernelWarnings {
		fmt.Fprintf(stderr, "tcpstate: note: %s was recorded on Linux %s: %s\n", path, rd.Header.Kernel, w)
	}
}

// ScanEach walks the existing sockets, handing each to each as the walk
// reads it (tracer.Tracer.ScanEach); a failure costs only what the walk would
// have told, so it is a warning.
func ScanEach(t *tracer.Tracer, opts tracer.ScanOptions, stderr io.Writer, each func(*tracer.Socket)) []tracer.NetNS {
	nss, err := t.ScanEach(opts, each)
	scanWarning(stderr, err)
	return nss
}

func scanWarning(stderr io.Writer, err error) {
	var skipped *tracer.ScanError
	switch {
	case errors.As(err, &skipped):
		fmt.Fprintf(stderr, "tcpstate: warning: %v: their sockets older than the tracer are not known\n", err)
	case err != nil:
		fmt.Fprintf(stderr, "tcpstate: warning: %v: sockets older than the tracer start unnamed\n", err)
	}
}

// CaptureWalk is the walk a capture keeps: the full sockets a filter's
// connections can be (WalkWants), each handed to also, if set, before the
// capture. A timewait socket has no owner to tell, and the kernel side
// follows those, so a host with many does not fill the capture (nor, for
// trace -w, the table).
func CaptureWalk(t *tracer.Tracer, filter tracer.Filter, stderr io.Writer, also func(*tracer.Socket)) Walk {
	wants := WalkWants(filter)
	return func(each func(*tracer.Socket)) []tracer.NetNS {
		return ScanEach(t, tracer.ScanOptions{}, stderr, func(s *tracer.Socket) {
			if s.Timewait || !wants(s) {
				return
			}
			if also != nil {
				also(s)
			}
			each(s)
		})
	}
}

// WalkedFor keeps the walk's sockets a filter's connections can be (its
// states aside: a socket may yet reach them), in place: a capture made with
// --netns or --port holds no other namespace's or port's sockets.
func WalkedFor(socks []tracer.Socket, f tracer.Filter) []tracer.Socket {
	wants := WalkWants(f)
	// (not slices.DeleteFunc: its func takes each socket by value, and
	// handing that on as a pointer put a copy of every one on the heap)
	n := 0
	for i := range socks {
		if wants(&socks[i]) {
			socks[n] = socks[i]
			n++
		}
	}
	clear(socks[n:])
	return socks[:n]
}

// WalkWants tells whether a walked socket can be one of a filter's
// connections, its states aside (a socket may yet reach them), or a listener
// whose children can: those it accepts from now on are named after it.
func WalkWants(f tracer.Filter) func(*tracer.Socket) bool {
	f.States = 0
	// A listener's children have its port, any remote end, and on a
	// wildcard address any local one: IPv4 too on IPv6's (dual-stack).
	byPort, wildcard := f, f
	byPort.RPorts = nil
	wildcard.RPorts, wildcard.Addrs = nil, nil
	return func(s *tracer.Socket) bool {
		switch {
		case s.State != tracer.Listen:
			return f.MatchConn(&s.Endpoints, &s.Owner, s.State, s.State)
		case !s.Local.Addr().IsUnspecified():
			return byPort.MatchConn(&s.Endpoints, &s.Owner, s.State, s.State)
		case s.Family == tracer.IPv6 && wildcard.Family == tracer.IPv4:
			ep := s.Endpoints
			ep.Family = tracer.IPv4
			return wildcard.MatchConn(&ep, &s.Owner, s.State, s.State)
		}
		return wildcard.MatchConn(&s.Endpoints, &s.Owner, s.State, s.State)
	}
}

// SkippedNote says how much of the loss the kernel's recursion guard made.
func SkippedNote(s tracer.Stats) string {
	var n string
	if s.Skipped > 0 {
		n += fmt.Sprintf("; %d of the lost are state changes the kernel skipped (a softirq interrupting tcpstate on the same CPU)", s.Skipped)
	}
	if s.SkippedTimers > 0 {
		n += fmt.Sprintf("; the kernel skipped %d runs of the timer hooks (a TIME_WAIT or keepalive event lost if one was a TCP timer)", s.SkippedTimers)
	}
	return n
}

// Summary is the end-of-run line of a live run.
func Summary(s tracer.Stats, shown uint64, what string, tl timeline.Stats) string {
	line := fmt.Sprintf("%d events seen, %d %s, %d lost (%d filtered in kernel)", s.Seen, shown, what, s.AllLost(), s.Filtered)
	line += SkippedNote(s)
	if tl.Evicted > 0 {
		line += fmt.Sprintf("; %d connections evicted from a full table (raise --max-connections)", tl.Evicted)
	}
	if tl.Unseen > 0 {
		line += fmt.Sprintf("; %d transitions to a timewait socket with the steps between not seen", tl.Unseen)
	}
	if s.TimewaitUntracked > 0 {
		line += fmt.Sprintf("; %d timewait sockets ended unfollowed", s.TimewaitUntracked)
	}
	return line
}
