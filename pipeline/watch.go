// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"time"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// Watch follows the timeline and renders a snapshot every interval, from the
// tracer's own goroutine (the timeline is not shared). It is the timeline's
// sink; the tracer feeds TL.
type Watch struct {
	tl       *timeline.Timeline
	w        WatchRenderer
	events   uint64
	filter   tracer.Filter
	states   tracer.StateSet
	linger   time.Duration
	interval time.Duration
	last     uint64
	lost     uint64
	rows     []output.Socket // the last snapshot's, reused by the next
	reuse    func() []output.Socket
	holders  holderCheck
}

// WatchOptions say which sockets a snapshot lists, and how often.
type WatchOptions struct {
	Filter   tracer.Filter // its States are ignored: States says
	States   tracer.StateSet
	Linger   time.Duration // only sockets in their state this long
	Interval time.Duration
	MaxConns int
	Rescan   Rescan // after a loss, the table is made to agree with a fresh walk
	// Reuse, if set, says the renderer keeps a snapshot's rows past Render
	// (the full-screen view, until the next), and returns rows it has let
	// go of (nil: none) for the next snapshot to be made in: a new 100,000
	// rows at every refresh would grow the heap to twice what is live.
	// Unset, every snapshot is made in the last one's rows.
	Reuse func() []output.Socket
	// FindHolders, live: tracer.FindHolders, to name the process holding a
	// listed socket its listener's owner is named for (nil: not looked for).
	FindHolders func([]tracer.HolderQuery) []tracer.Task
}

// WatchRenderer shows snapshots: output.Watch (text, JSON), or the
// full-screen view of a terminal. Render's rows are the next snapshot's too,
// unless WatchOptions.Reuse is set.
type WatchRenderer interface {
	Render(now uint64, rows []output.Socket, lost uint64) error
}

// NewWatch renders through w.
func NewWatch(w WatchRenderer, o WatchOptions) *Watch {
	s := &Watch{w: w, filter: o.Filter, states: o.States, linger: o.Linger, interval: o.Interval, reuse: o.Reuse,
		holders: holderCheck{find: o.FindHolders, states: o.States}}
	s.filter.States = 0
	rs := &resync{rescan: o.Rescan, withTimewait: true, next: s}
	s.tl = timeline.New(rs, timeline.Options{MaxConns: o.MaxConns})
	rs.tl = s.tl
	return s
}

func (s *Watch) Event(e *tracer.Event) error {
	if e.Type == tracer.EventLost {
		s.lost += e.Lost
	} else {
		s.events++
	}
	return nil
}

// Events is how many events the timeline passed on so far (on the tracer's
// goroutine: from a renderer).
func (s *Watch) Events() uint64 { return s.events }

func (s *Watch) Idle() error {
	now := tracer.BootNow()
	if now-s.last < uint64(s.interval) {
		return nil
	}
	return s.Render(now)
}

// Seed puts the sockets of the start-up walk in the timeline; it says how
// many did not fit the table.
func (s *Watch) Seed(socks []tracer.Socket) (evicted uint64) {
	s.tl.Seed(socks)
	return s.tl.Stats().Evicted
}

// SeedSocket is Seed for one socket of a streamed walk (ScanEach); Evicted
// then says how many did not fit.
func (s *Watch) SeedSocket(sock *tracer.Socket) { s.tl.SeedSocket(sock) }

// Evicted is how many connections did not fit the table so far.
func (s *Watch) Evicted() uint64 { return s.tl.Stats().Evicted }

// Sink is where the source feeds events.
func (s *Watch) Sink() tracer.Sink { return s.tl }

// Render writes the snapshot at now.
func (s *Watch) Render(now uint64) error {
	s.last = now
	s.holders.run(s.tl, now)
	if s.reuse != nil {
		s.rows = s.reuse() // (the renderer still holds the last)
	}
	s.rows = output.AppendSnapshot(s.rows, s.tl, now, &s.filter, s.states, s.linger)
	return s.w.Render(now, s.rows, s.lost)
}
