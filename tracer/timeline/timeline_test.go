// SPDX-License-Identifier: Apache-2.0

package timeline

import (
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/tcpstate/tcpstate/tracer"
)

type sink struct {
	events []tracer.Event
}

func (s *sink) Event(e *tracer.Event) error { s.events = append(s.events, *e); return nil }
func (s *sink) Idle() error                 { return nil }

var (
	local  = netip.MustParseAddrPort("10.0.0.1:5000")
	remote = netip.MustParseAddrPort("10.0.0.2:80")
	owner  = tracer.Task{PID: 42, TID: 42, Comm: tracer.CommFrom("app")}
)

func ev(ts uint64, cookie uint64, old, new tracer.State) tracer.Event {
	return tracer.Event{
		Type: tracer.EventState, Time: ts, Cookie: cookie, Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: local, Remote: remote},
		Old: old, New: new, Owner: tracer.Owner{Task: owner, From: tracer.OwnerConnect},
	}
}

func feed(t *testing.T, tl *Timeline, evs ...tracer.Event) {
	t.Helper()
	for i := range evs {
		if err := tl.Event(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
}

const ms = uint64(time.Millisecond)

// A RST sent after CLOSE (close() with SO_LINGER 0) is joined to that CLOSE.
func TestResetJoinsPrecedingClose(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{})
	cl := ev(10*ms, 1, tracer.Established, tracer.Close)
	cl.Reason = tracer.ReasonClosed
	rst := tracer.Event{Type: tracer.EventReset, Time: 10*ms + 5000, Cookie: 1, RstReason: 11}
	feed(t, tl, ev(1*ms, 1, tracer.SynSent, tracer.Established), cl, rst)
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(s.events) != 2 {
		t.Fatalf("%d events, want 2 (the reset joined): %+v", len(s.events), s.events)
	}
	if got := s.events[1]; got.Reason != tracer.ReasonRSTSent || got.RstReason != 11 {
		t.Errorf("close reason %v/%d, want rst_sent/11", got.Reason, got.RstReason)
	}
}

// A reset with no CLOSE to join (too late, or none) is passed on as itself.
func TestLateResetStandsAlone(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{})
	feed(t, tl, ev(10*ms, 1, tracer.Established, tracer.Close),
		tracer.Event{Type: tracer.EventReset, Time: 20 * ms, Cookie: 1})
	_ = tl.Flush()
	if len(s.events) != 2 || s.events[1].Type != tracer.EventReset || s.events[0].Reason == tracer.ReasonRSTSent {
		t.Errorf("got %+v", s.events)
	}
}

// A timewait cancel followed by a re-arm is not a kill; one that is not is.
func TestTimewaitCancelResolution(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{})
	tw := func(ts uint64, typ tracer.EventType) tracer.Event {
		e := ev(ts, 7, tracer.TimeWait, tracer.Close)
		e.Type, e.Timewait, e.Reason = typ, true, tracer.ReasonTWKilled
		return e
	}
	feed(t, tl,
		tw(1*ms, tracer.EventTWCancel), tw(1*ms+100, tracer.EventTWRearm), // re-armed: nothing
		tw(50*ms, tracer.EventTWCancel), // killed
	)
	_ = tl.Flush()
	if len(s.events) != 1 {
		t.Fatalf("%d events, want only the kill: %+v", len(s.events), s.events)
	}
	if k := s.events[0]; k.Type != tracer.EventState || k.New != tracer.Close || k.Reason != tracer.ReasonTWKilled || k.Time != 50*ms {
		t.Errorf("kill reported as %+v", k)
	}
	if tl.Stats().Killed != 1 {
		t.Errorf("killed %d, want 1", tl.Stats().Killed)
	}
}

// The re-arm of a timewait socket the kernel side did not follow (Unseen)
// is no kill either, and tells where the connection is: from FIN_WAIT1 the
// steps between were not seen (shown and counted, no duration); from
// FIN_WAIT2 it is the turn to TIME_WAIT itself, timed; in TIME_WAIT already
// (a restart) nothing is news. The end of such a TIME_WAIT, which the kernel
// side times from the re-arm as a lower bound, takes the table's exact time.
func TestUnseenRearm(t *testing.T) {
	on := func(e tracer.Event, typ tracer.EventType) tracer.Event {
		e.Type, e.Timewait, e.CPU, e.HasCPU = typ, true, 1, true
		if typ == tracer.EventTWCancel {
			e.Reason = tracer.ReasonTWKilled
		} else {
			e.Unseen, e.ExpiresIn = true, tracer.TimewaitLen
		}
		return e
	}
	fw2 := ev(2*ms, 2, tracer.FinWait1, tracer.FinWait2)
	fw2.HasDuration, fw2.Duration = true, time.Millisecond
	expiry := func(ts, cookie uint64) tracer.Event {
		e := ev(ts, cookie, tracer.TimeWait, tracer.Close)
		e.Timewait, e.Reason = true, tracer.ReasonTWExpired
		e.HasDuration, e.DurationMin, e.Duration = true, true, 60*time.Second
		return e
	}
	s := &sink{}
	tl := New(s, Options{})
	feed(t, tl,
		ev(1*ms, 1, tracer.Established, tracer.FinWait1),
		on(ev(20*ms, 1, tracer.TimeWait, tracer.Close), tracer.EventTWCancel),
		on(ev(20*ms+16000, 1, tracer.TimeWait, tracer.TimeWait), tracer.EventTWRearm),
		ev(1*ms, 2, tracer.Established, tracer.FinWait1),
		fw2,
		on(ev(30*ms, 2, tracer.TimeWait, tracer.Close), tracer.EventTWCancel),
		on(ev(30*ms+16000, 2, tracer.TimeWait, tracer.TimeWait), tracer.EventTWRearm),
		on(ev(40*ms, 2, tracer.TimeWait, tracer.Close), tracer.EventTWCancel),
		on(ev(40*ms+16000, 2, tracer.TimeWait, tracer.TimeWait), tracer.EventTWRearm),
		expiry(60*uint64(time.Second)+20*ms+16000, 1),
		expiry(60*uint64(time.Second)+30*ms, 2),
	)
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	type row struct {
		cookie      uint64
		old, new    tracer.State
		duration    time.Duration // -1: none
		min, unseen bool
	}
	var got []row
	for _, e := range s.events {
		d := time.Duration(-1)
		if e.HasDuration {
			d = e.Duration
		}
		got = append(got, row{e.Cookie, e.Old, e.New, d, e.DurationMin, e.Unseen})
		if e.Type != tracer.EventState || e.Reason == tracer.ReasonTWKilled {
			t.Errorf("%+v: want a state change, no kill", e)
		}
	}
	want := []row{
		{1, tracer.Established, tracer.FinWait1, -1, false, false},
		{1, tracer.FinWait1, tracer.TimeWait, -1, false, true},
		{2, tracer.Established, tracer.FinWait1, -1, false, false},
		{2, tracer.FinWait1, tracer.FinWait2, time.Millisecond, false, false},
		{2, tracer.FinWait2, tracer.TimeWait, 30*time.Millisecond - 2*time.Millisecond + 16*time.Microsecond, false, false},
		// (unseen: the re-arm may have restarted a TIME_WAIT begun before)
		{1, tracer.TimeWait, tracer.Close, 60 * time.Second, true, false},
		{2, tracer.TimeWait, tracer.Close, 60*time.Second + 30*time.Millisecond - (30*time.Millisecond + 16*time.Microsecond), false, false},
	}
	if !slices.Equal(got, want) {
		t.Errorf("events:\n%v\nwant\n%v", got, want)
	}
	if st := tl.Stats(); st.Unseen != 1 || st.Killed != 0 {
		t.Errorf("unseen %d, killed %d: want 1, 0", st.Unseen, st.Killed)
	}
}

// A TIME_WAIT in the compact tier stays there through an unseen re-arm (a
// restart), and nothing is shown.
func TestUnseenRearmOfCompactTimewait(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{CompactTimewait: true})
	cancel, rearm := twEv(5*ms, 3, tracer.IPv4, "10.0.0.1:40001", "10.0.0.2:80"), twEv(5*ms+16000, 3, tracer.IPv4, "10.0.0.1:40001", "10.0.0.2:80")
	cancel.Type, cancel.Old, cancel.New, cancel.Reason = tracer.EventTWCancel, tracer.TimeWait, tracer.Close, tracer.ReasonTWKilled
	rearm.Type, rearm.Old, rearm.Unseen = tracer.EventTWRearm, tracer.TimeWait, true
	cancel.CPU, cancel.HasCPU, rearm.CPU, rearm.HasCPU = 1, true, 1, true
	feed(t, tl, twEv(2*ms, 3, tracer.IPv4, "10.0.0.1:40001", "10.0.0.2:80"))
	if err := tl.Tick(4 * ms); err != nil {
		t.Fatal(err)
	}
	feed(t, tl, cancel, rearm)
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(s.events) != 1 {
		t.Errorf("%d events, want only the first TIME_WAIT: %+v", len(s.events), s.events)
	}
	if len(tl.tw) != 1 || len(tl.conns) != 0 || tl.Stats().Killed != 0 || tl.Stats().Unseen != 0 {
		t.Errorf("%d in the compact tier, %d in the list, %d killed, %d unseen: want 1, 0, 0, 0", len(tl.tw), len(tl.conns), tl.Stats().Killed, tl.Stats().Unseen)
	}
}

// A timewait cancel that carries its CPU is settled by that CPU's next event:
// a re-arm drops it, whatever other CPUs sent in between; anything else from
// the CPU releases it as a kill then, not a pieceWindow later with everything
// queued behind it. Without a CPU it waits out the window.
func TestTimewaitCancelSettledByItsCPU(t *testing.T) {
	on := func(e tracer.Event, cpu uint32) tracer.Event {
		e.CPU, e.HasCPU = cpu, true
		return e
	}
	tw := func(ts, cookie uint64, typ tracer.EventType) tracer.Event {
		e := ev(ts, cookie, tracer.TimeWait, tracer.Close)
		e.Type, e.Timewait, e.Reason = typ, true, tracer.ReasonTWKilled
		return e
	}
	other := func(ts, cookie uint64) tracer.Event { return ev(ts, cookie, tracer.Close, tracer.SynSent) }

	s := &sink{}
	tl := New(s, Options{})
	feed(t, tl,
		on(tw(1*ms, 7, tracer.EventTWCancel), 1),
		on(other(1*ms+10, 20), 0),                  // another CPU: nothing said about 7
		on(tw(1*ms+20, 7, tracer.EventTWRearm), 1), // re-armed: nothing
		on(tw(2*ms, 8, tracer.EventTWCancel), 1),
		on(other(2*ms+10, 21), 0),
		on(other(2*ms+20, 22), 1), // CPU 1 went on: 8 was killed
	)
	// Past the join window of everything before the kill, far inside the
	// kill's own pieceWindow.
	if err := tl.Tick(10 * ms); err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, e := range s.events {
		got = append(got, e.Cookie)
		if e.Cookie == 7 {
			t.Errorf("the re-armed cancel was reported: %+v", e)
		}
	}
	if len(got) != 4 || got[0] != 20 || got[1] != 8 || got[2] != 21 || got[3] != 22 {
		t.Fatalf("released cookies %v at 10 ms, want [20 8 21 22] (the kill in its place)", got)
	}
	if k := s.events[1]; k.Type != tracer.EventState || k.Reason != tracer.ReasonTWKilled || k.Time != 2*ms {
		t.Errorf("kill reported as %+v", k)
	}

	// A cancel of the same id from another CPU, still waiting for its
	// re-arm, is not settled by this CPU's next event.
	s = &sink{}
	tl = New(s, Options{})
	feed(t, tl,
		on(tw(1*ms, 9, tracer.EventTWCancel), 1),
		on(tw(1*ms+10, 9, tracer.EventTWCancel), 0),
		on(other(1*ms+20, 23), 1), // settles CPU 1's, not CPU 0's
		on(tw(1*ms+30, 9, tracer.EventTWRearm), 0),
	)
	if err := tl.Tick(10 * ms); err != nil {
		t.Fatal(err)
	}
	if len(s.events) != 2 || s.events[0].Cookie != 9 || s.events[0].Time != 1*ms || s.events[1].Cookie != 23 {
		t.Fatalf("got %+v, want CPU 1's kill, then cookie 23 (CPU 0's cancel re-armed)", s.events)
	}

	// No CPU: the same kill waits for its window.
	s = &sink{}
	tl = New(s, Options{})
	feed(t, tl, tw(2*ms, 8, tracer.EventTWCancel), other(2*ms+20, 22))
	if err := tl.Tick(10 * ms); err != nil {
		t.Fatal(err)
	}
	if len(s.events) != 0 {
		t.Fatalf("released %+v before the window, with no CPU to tell", s.events)
	}
	if err := tl.Tick(2*ms + uint64(pieceWindow)); err != nil {
		t.Fatal(err)
	}
	if len(s.events) != 2 || s.events[0].Cookie != 8 {
		t.Fatalf("after the window: %+v", s.events)
	}
}

// Events are held for the join window and released in order.
func TestOrderAndRelease(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{})
	feed(t, tl, ev(1*ms, 1, tracer.Close, tracer.SynSent), ev(1*ms+10, 1, tracer.SynSent, tracer.Established))
	if len(s.events) != 0 {
		t.Errorf("released before the window: %d", len(s.events))
	}
	feed(t, tl, ev(10*ms, 2, tracer.Close, tracer.Listen))
	if len(s.events) != 2 || s.events[0].New != tracer.SynSent || s.events[1].New != tracer.Established {
		t.Errorf("after the window: %+v", s.events)
	}
	if err := tl.Tick(20 * ms); err != nil {
		t.Fatal(err)
	}
	if len(s.events) != 3 {
		t.Errorf("Tick did not release: %d", len(s.events))
	}
}

// A child of a listener older than the tracer gets the listener's owner, as
// found by the start-up walk; a socket nobody was seen to own stays unknown.
func TestOwnerFromSeededListener(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{})
	lst := netip.MustParseAddrPort("0.0.0.0:8080")
	tl.Seed([]tracer.Socket{{Cookie: 100, Endpoints: tracer.Endpoints{NetNS: 1, Family: tracer.IPv4, Local: lst}, State: tracer.Listen,
		Owner: tracer.Owner{Task: owner, From: tracer.OwnerProc}, Scanned: 1 * ms}})
	child := tracer.Event{Type: tracer.EventState, Time: 5 * ms, Cookie: 101, Endpoints: tracer.Endpoints{NetNS: 1, Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:8080"), Remote: remote}, Old: tracer.Listen, New: tracer.SynRecv}
	stranger := tracer.Event{Type: tracer.EventState, Time: 5 * ms, Cookie: 102, Endpoints: tracer.Endpoints{NetNS: 1, Family: tracer.IPv4, Local: local, Remote: remote}, Old: tracer.Established, New: tracer.CloseWait}
	feed(t, tl, child, stranger)
	_ = tl.Flush()
	if got := s.events[0]; got.Owner.PID != 42 || got.Owner.From != tracer.OwnerListener {
		t.Errorf("child owner %d from %v, want 42 from listener", got.Owner.PID, got.Owner.From)
	}
	if got := s.events[1]; got.Owner.Known() {
		t.Errorf("a socket never seen owned got owner %d from %v", got.Owner.PID, got.Owner.From)
	}
}

// The table stays within its bound, and counts what it evicts.
func TestEvictionIsBoundedAndCounted(t *testing.T) {
	tl := New(&sink{}, Options{MaxConns: 100})
	for i := uint64(1); i <= 1000; i++ {
		feed(t, tl, ev(i*ms, i, tracer.Close, tracer.SynSent))
	}
	_ = tl.Flush()
	st := tl.Stats()
	if st.Conns != 100 || st.Evicted != 900 {
		t.Errorf("conns %d evicted %d, want 100 and 900", st.Conns, st.Evicted)
	}
	// The most recent survive.
	seen := 0
	tl.Conns(func(c *Conn) bool {
		if c.Cookie <= 900 {
			t.Errorf("cookie %d survived, older than the 100 newest", c.Cookie)
		}
		seen++
		return true
	})
	if seen != 100 {
		t.Errorf("Conns visited %d", seen)
	}
}

// A finished connection is reported once, with every state and its time.
func TestFinishedConnectionSpans(t *testing.T) {
	var done []Conn
	tl := New(&sink{}, Options{Spans: true, OnFinish: func(c *Conn) error {
		cp := *c
		cp.SetSpans(append([]Span(nil), c.Spans()...))
		done = append(done, cp)
		return nil
	}})
	withDur := func(e tracer.Event, d time.Duration) tracer.Event {
		e.Duration, e.HasDuration = d, true
		return e
	}
	twClose := withDur(ev(70_200*ms, 1, tracer.TimeWait, tracer.Close), 60*time.Second)
	twClose.Timewait, twClose.Reason = true, tracer.ReasonTWExpired
	tw := withDur(ev(10_200*ms, 1, tracer.FinWait2, tracer.TimeWait), 2100*time.Millisecond)
	tw.Timewait = true
	feed(t, tl,
		ev(1*ms, 1, tracer.Close, tracer.SynSent),
		withDur(ev(2*ms, 1, tracer.SynSent, tracer.Established), time.Millisecond),
		withDur(ev(8_000*ms, 1, tracer.Established, tracer.FinWait1), 7998*time.Millisecond),
		withDur(ev(8_100*ms, 1, tracer.FinWait1, tracer.FinWait2), 100*time.Millisecond),
		tw, twClose)
	_ = tl.Flush()
	if len(done) != 1 {
		t.Fatalf("%d finished, want 1", len(done))
	}
	c := &done[0]
	want := []Span{
		{State: tracer.SynSent, Start: 1 * ms, Duration: time.Millisecond, Known: true},
		{State: tracer.Established, Start: 2 * ms, Duration: 7998 * time.Millisecond, Known: true},
		{State: tracer.FinWait1, Start: 8_000 * ms, Duration: 100 * time.Millisecond, Known: true},
		{State: tracer.FinWait2, Start: 8_100 * ms, Duration: 2100 * time.Millisecond, Known: true},
		{State: tracer.TimeWait, Start: 10_200 * ms, Duration: 60 * time.Second, Known: true, Timewait: true},
	}
	if len(c.Spans()) != len(want) {
		t.Fatalf("spans %+v", c.Spans())
	}
	for i := range want {
		if c.Spans()[i] != want[i] {
			t.Errorf("span %d: %+v, want %+v", i, c.Spans()[i], want[i])
		}
	}
	if c.Reason != tracer.ReasonTWExpired || tl.Stats().Conns != 0 {
		t.Errorf("reason %v, %d left in the table", c.Reason, tl.Stats().Conns)
	}
}

// trace --linger: one linger event when a socket passes the threshold in
// CLOSE_WAIT, none for one that left in time, and again after it came back.
func TestLinger(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{Linger: time.Second})
	const t0 = 1000 * ms
	feed(t, tl, ev(t0, 1, tracer.Established, tracer.CloseWait), ev(t0, 2, tracer.Established, tracer.CloseWait),
		ev(t0+500*ms, 2, tracer.CloseWait, tracer.LastAck))
	_ = tl.Tick(t0 + 900*ms)
	_ = tl.Tick(t0 + 1100*ms)
	_ = tl.Tick(t0 + 5000*ms)
	var lingers []tracer.Event
	for _, e := range s.events {
		if e.Type == tracer.EventLinger {
			lingers = append(lingers, e)
		}
	}
	if len(lingers) != 1 || lingers[0].Cookie != 1 || lingers[0].New != tracer.CloseWait || lingers[0].Duration != 1100*time.Millisecond {
		t.Errorf("linger events %+v, want one for cookie 1 at 1.1s", lingers)
	}
}

type countSink struct{ n int }

func (s *countSink) Event(*tracer.Event) error { s.n++; return nil }
func (s *countSink) Idle() error               { return nil }

// A connection's five transitions at 1 µs apart (a million events a second).
func BenchmarkTimelineEvent(b *testing.B) {
	tl := New(&countSink{}, Options{MaxConns: 1 << 16})
	evs := []tracer.Event{
		ev(0, 0, tracer.Close, tracer.SynSent), ev(0, 0, tracer.SynSent, tracer.Established),
		ev(0, 0, tracer.Established, tracer.FinWait1), ev(0, 0, tracer.FinWait1, tracer.FinWait2),
		ev(0, 0, tracer.FinWait2, tracer.Close),
	}
	b.ReportAllocs()
	var ts, cookie uint64
	var e tracer.Event
	for b.Loop() {
		e = evs[ts%5]
		if ts%5 == 0 {
			cookie++
		}
		ts++
		e.Time, e.Cookie = ts*1000, cookie
		if err := tl.Event(&e); err != nil {
			b.Fatal(err)
		}
	}
}

// The kernel side forgot a timewait connection (its table is an LRU: a host
// with more timewait sockets than it holds evicts some). Its expiry comes
// without a duration and in TIME_WAIT although the table last saw FIN_WAIT2:
// the table dates TIME_WAIT from the timer (TimewaitLen before it expired)
// and restores the missing transition and both durations.
func TestUntrackedTimewaitExpiryIsCompleted(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{})
	const sec = uint64(time.Second)
	expiry := ev(100*sec+100*ms, 1, tracer.TimeWait, tracer.Close)
	expiry.Timewait, expiry.Reason = true, tracer.ReasonTWExpired
	expiry.ExpiresIn = -20 * time.Millisecond // the timer fired 20 ms late
	feed(t, tl, ev(1*sec, 1, tracer.Established, tracer.FinWait1), ev(1*sec+ms, 1, tracer.FinWait1, tracer.FinWait2), expiry)
	_ = tl.Flush()
	if len(s.events) != 4 {
		t.Fatalf("%d events, want 4: %+v", len(s.events), s.events)
	}
	tw, end := s.events[2], s.events[3]
	entered := 100*sec + 80*ms - 60*sec
	if tw.Old != tracer.FinWait2 || tw.New != tracer.TimeWait || !tw.Timewait || tw.Time != entered {
		t.Errorf("restored transition %v->%v timewait=%v at %d, want FIN_WAIT2->TIME_WAIT timewait at %d", tw.Old, tw.New, tw.Timewait, tw.Time, entered)
	}
	if want := time.Duration(entered - (1*sec + ms)); !tw.HasDuration || tw.Duration != want {
		t.Errorf("FIN_WAIT2 lasted %v (known %v), want %v", tw.Duration, tw.HasDuration, want)
	}
	if want := 60*time.Second + 20*time.Millisecond; !end.HasDuration || end.Duration != want {
		t.Errorf("TIME_WAIT lasted %v (known %v), want %v", end.Duration, end.HasDuration, want)
	}
}

// An orphaned FIN_WAIT2 handed to a timewait socket: the connection stays in
// FIN_WAIT2 from when it began, now in a timewait socket, and nothing is
// shown for the handover itself.
func TestTimewaitHandover(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{})
	hand := ev(12*ms, 1, tracer.FinWait2, tracer.FinWait2)
	hand.Type, hand.Timewait = tracer.EventTWHandover, true
	feed(t, tl, ev(1*ms, 1, tracer.Established, tracer.FinWait1), ev(10*ms, 1, tracer.FinWait1, tracer.FinWait2), hand)
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(s.events) != 2 {
		t.Fatalf("%d events shown, want the 2 transitions: %+v", len(s.events), s.events)
	}
	var c *Conn
	tl.Conns(func(x *Conn) bool { c = x; return false })
	if c == nil || c.State != tracer.FinWait2 || !c.Timewait || c.Since != 10*ms || !c.Owner.Known() {
		t.Errorf("after the handover: %+v, want FIN_WAIT2 in a timewait socket since 10 ms, with its owner", c)
	}
}

// A state older than the tracer that the kernel bounds: Age is the least it
// can be, AgeMax the most; both go once the tracer sees the next transition.
func TestSeededAgeBounds(t *testing.T) {
	tl := New(&sink{}, Options{})
	tl.Seed([]tracer.Socket{{Cookie: 1, Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: local, Remote: remote}, State: tracer.CloseWait,
		Since: 900 * ms, SinceEarliest: 200 * ms, Scanned: 1000 * ms}})
	var c *Conn
	tl.Conns(func(x *Conn) bool { c = x; return false })
	if got, max := c.Age(1000*ms), c.AgeMax(1000*ms); got != 100*time.Millisecond || max != 800*time.Millisecond {
		t.Errorf("age %v..%v, want 100ms..800ms", got, max)
	}
	feed(t, tl, ev(1100*ms, 1, tracer.CloseWait, tracer.LastAck))
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	if max := c.AgeMax(1200 * ms); max != 0 || c.Age(1200*ms) != 100*time.Millisecond {
		t.Errorf("in LAST_ACK seen begin: age %v, max %v; want 100ms exact", c.Age(1200*ms), max)
	}
}

// A keepalive kill of a socket older than the tracer: the kernel knows no
// owner, the walk did. The timeout event, which follows the CLOSE it caused,
// is named from the ended connection, and makes no new one.
func TestKeepaliveTimeoutAfterCloseNamed(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{})
	tl.Seed([]tracer.Socket{{Cookie: 5, Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: local, Remote: remote},
		State: tracer.Established, Owner: tracer.Owner{Task: owner, From: tracer.OwnerProc}, Scanned: 1 * ms}})
	cl := ev(10*ms, 5, tracer.Established, tracer.Close)
	cl.Owner, cl.Reason = tracer.Owner{}, tracer.ReasonTimeout
	ka := tracer.Event{Type: tracer.EventKeepalive, Time: 10*ms + 1000, Cookie: 5, Endpoints: cl.Endpoints, Old: tracer.Established, New: tracer.Established,
		Keepalive: tracer.Keepalive{Event: tracer.KeepaliveTimeout}}
	feed(t, tl, cl, ka)
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(s.events) != 2 || s.events[1].Type != tracer.EventKeepalive || s.events[1].Owner.PID != owner.PID {
		t.Fatalf("events %+v, want the CLOSE then the timeout named %d", s.events, owner.PID)
	}
	if n := tl.Stats().Conns; n != 0 {
		t.Errorf("%d connections in the table after the end, want 0", n)
	}
}

// After a loss, a fresh walk is the truth: a connection whose end was lost
// is dropped (no ghost, no linger event for it), one the table missed is
// added, and one whose events are still held is kept.
func TestResyncDropsGhosts(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{Linger: time.Second})
	feed(t, tl, ev(1*ms, 1, tracer.Established, tracer.CloseWait), ev(2*ms, 2, tracer.Established, tracer.CloseWait))
	if err := tl.Tick(3 * ms); err != nil { // processes what is held
		t.Fatal(err)
	}
	feed(t, tl, ev(4*ms, 3, tracer.Established, tracer.FinWait1))   // held still: processed before the walk applies
	feed(t, tl, ev(2*ms+1, 4, tracer.Established, tracer.FinWait1)) // then its FIN_WAIT2 and TIME_WAIT were lost
	if err := tl.Tick(5 * ms); err != nil {
		t.Fatal(err)
	}
	err := tl.Resync([]tracer.Socket{
		{Cookie: 2, Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: local, Remote: remote}, State: tracer.CloseWait, Since: 2 * ms, Scanned: 5 * ms},
		{Cookie: 4, Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: local, Remote: remote}, State: tracer.TimeWait, Timewait: true, Since: 3 * ms, SinceEarliest: 3 * ms, Scanned: 5 * ms},
		{Cookie: 7, Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: local, Remote: remote}, State: tracer.LastAck, Scanned: 5 * ms},
		{Cookie: 3, Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: local, Remote: remote}, State: tracer.FinWait1, Scanned: 5 * ms},
	}, true, 5*ms)
	if err != nil {
		t.Fatal(err)
	}
	if err := tl.Tick(2 * uint64(time.Second)); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]tracer.State{}
	tl.Conns(func(c *Conn) bool { got[c.Cookie] = c.State; return true })
	if _, ok := got[1]; ok || got[2] != tracer.CloseWait || got[3] != tracer.FinWait1 || got[7] != tracer.LastAck || got[4] != tracer.TimeWait {
		t.Errorf("table after resync: %v, want 2 CLOSE_WAIT, 3 FIN_WAIT1 (was held), 4 TIME_WAIT (corrected), 7 LAST_ACK (added), not 1", got)
	}
	if c := tl.Stats().Corrected; c != 1 {
		t.Errorf("corrected %d, want 1", c)
	}
	if g := tl.Stats().Gone; g != 1 {
		t.Errorf("gone %d, want 1", g)
	}
	for _, e := range s.events {
		if e.Type == tracer.EventLinger && e.Cookie == 1 {
			t.Errorf("linger event for a connection that is gone: %+v", e)
		}
	}
}

// A walk runs while events keep coming (the reader is not held up): what
// changed after it began is newer than what it saw, and a connection that
// ended meanwhile is not brought back by it.
func TestResyncWhileEventsCome(t *testing.T) {
	tl := New(&sink{}, Options{})
	feed(t, tl,
		ev(1*ms, 1, tracer.SynSent, tracer.Established),
		ev(2*ms, 2, tracer.SynSent, tracer.Established),
		ev(3*ms, 6, tracer.SynSent, tracer.Established)) // its end was lost
	if err := tl.Tick(5 * ms); err != nil {
		t.Fatal(err)
	}
	tl.BeginWalk() // at 10 ms
	feed(t, tl,
		ev(12*ms, 1, tracer.Established, tracer.Close),    // after the walk saw it
		ev(13*ms, 2, tracer.Established, tracer.FinWait1), // likewise
		ev(14*ms, 4, tracer.SynSent, tracer.Established))  // after the walk passed its place
	sock := func(cookie uint64, st tracer.State) tracer.Socket {
		return tracer.Socket{Cookie: cookie, Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: local, Remote: remote}, State: st, Scanned: 11 * ms}
	}
	if err := tl.Resync([]tracer.Socket{
		sock(1, tracer.Established), sock(2, tracer.Established), sock(5, tracer.Established),
	}, true, 10*ms); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]tracer.State{}
	tl.Conns(func(c *Conn) bool { got[c.Cookie] = c.State; return true })
	want := map[uint64]tracer.State{2: tracer.FinWait1, 4: tracer.Established, 5: tracer.Established}
	if !maps.Equal(got, want) {
		t.Errorf("table after the walk: %v, want %v (1 ended meanwhile, 2 changed meanwhile, 4 is newer than the walk, 5 the table missed, 6 is gone)", got, want)
	}
	if st := tl.Stats(); st.Gone != 1 || st.Corrected != 0 {
		t.Errorf("gone %d, corrected %d; want 1 and 0", st.Gone, st.Corrected)
	}
	// The next walk, begun after all that, is the truth again.
	tl.BeginWalk()
	if err := tl.Resync([]tracer.Socket{sock(2, tracer.FinWait2), sock(5, tracer.Established)}, true, 20*ms); err != nil {
		t.Fatal(err)
	}
	got = map[uint64]tracer.State{}
	tl.Conns(func(c *Conn) bool { got[c.Cookie] = c.State; return true })
	if want := map[uint64]tracer.State{2: tracer.FinWait2, 5: tracer.Established}; !maps.Equal(got, want) {
		t.Errorf("table after the second walk: %v, want %v", got, want)
	}
}

// A walk without the TIME_WAIT sockets (trace's: a churning host has
// hundreds of thousands) cannot tell a connection gone from one in TIME_WAIT:
// those that may be there are kept for their timewait events to end; the
// others are dropped as before.
func TestResyncWithoutTimewait(t *testing.T) {
	tl := New(&sink{}, Options{})
	feed(t, tl,
		ev(1*ms, 1, tracer.Established, tracer.CloseWait),
		ev(2*ms, 2, tracer.Established, tracer.FinWait1),
		ev(3*ms, 3, tracer.FinWait1, tracer.FinWait2),
		ev(4*ms, 4, tracer.Established, tracer.LastAck))
	if err := tl.Tick(uint64(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := tl.Resync([]tracer.Socket{
		{Cookie: 4, Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: local, Remote: remote}, State: tracer.LastAck, Scanned: 5 * ms},
	}, false, 5*ms); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]tracer.State{}
	tw := map[uint64]bool{}
	tl.Conns(func(c *Conn) bool { got[c.Cookie], tw[c.Cookie] = c.State, c.Timewait; return true })
	if _, ok := got[1]; ok || got[2] != tracer.FinWait1 || got[3] != tracer.FinWait2 || got[4] != tracer.LastAck {
		t.Errorf("table after resync: %v, want 2 FIN_WAIT1 and 3 FIN_WAIT2 (kept), 4 LAST_ACK, not 1", got)
	}
	// Not among the full sockets any more: in a timewait socket (or gone).
	if !tw[2] || !tw[3] || tw[4] {
		t.Errorf("timewait after resync: %v, want 2 and 3 (not walked), not 4", tw)
	}
	if g := tl.Stats().Gone; g != 1 {
		t.Errorf("gone %d, want 1", g)
	}
}

// BenchmarkChurnWithHeldEvents: a busy host's mix, where abortive CLOSEs
// hold the queue for 200 ms while timewait events keep coming; the joins must
// not scan the held queue for every event.
func BenchmarkChurnWithHeldEvents(b *testing.B) {
	tl := New(&sink{}, Options{})
	b.ReportAllocs()
	var ts uint64
	i := uint64(0)
	for b.Loop() {
		i++
		ts += 10_000 // 100k events/s
		var e tracer.Event
		switch i % 10 {
		case 0: // abortive close: held 200 ms
			e = ev(ts, i, tracer.Established, tracer.Close)
			e.Reason = tracer.ReasonClosed
		default: // a timewait socket's event: looks for a held cancel
			e = ev(ts, i, tracer.FinWait2, tracer.TimeWait)
			e.Timewait = true
		}
		if err := tl.Event(&e); err != nil {
			b.Fatal(err)
		}
	}
}

// A Conn keeps its endpoints compact: every family and shape must come back
// as it went in, a v4-mapped peer apart from its IPv4 twin.
func TestConnEndpoints(t *testing.T) {
	for _, e := range []tracer.Endpoints{
		{NetNS: 4026531840, Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:43210"), Remote: netip.MustParseAddrPort("10.0.0.20:8443")},
		{NetNS: 1, Family: tracer.IPv6, Local: netip.MustParseAddrPort("[2001:db8::1]:80"), Remote: netip.MustParseAddrPort("[2001:db8::2]:50000")},
		{NetNS: 2, Family: tracer.IPv6, Local: netip.MustParseAddrPort("[::ffff:10.0.0.1]:80"), Remote: netip.MustParseAddrPort("10.0.0.2:1")},
		{NetNS: 3, Family: tracer.IPv6, Local: netip.MustParseAddrPort("[::]:22")},
		{},
	} {
		var c Conn
		c.SetEndpoints(e)
		if got := c.Endpoints(); got != e {
			t.Errorf("SetEndpoints(%+v): Endpoints() = %+v", e, got)
		}
	}
	var zero Conn
	if e := zero.Endpoints(); e != (tracer.Endpoints{}) {
		t.Errorf("a zero Conn is at %+v", e)
	}
	// 144 is a size class of Go's allocator: a byte more takes 160.
	if s := unsafe.Sizeof(Conn{}); s > 144 {
		t.Errorf("a Conn takes %d bytes: README counts 144, check it", s)
	}
}
