// SPDX-License-Identifier: Apache-2.0

// Package timeline rebuilds each connection's life from tracer events: it
// keeps a bounded table of connections keyed by socket cookie, joins what the
// kernel reports in pieces (a RST sent after CLOSE, a timewait socket killed
// early), names owners the kernel could not (sockets older than the tracer,
// timewait sockets, children of old listeners), and finds sockets that linger.
//
// A Timeline sits between the tracer and the output: it is a tracer.Sink and
// passes what it makes on to the next Sink. Replaying a capture feeds the
// same Timeline, so live and replayed output are made by the same code.
package timeline

import (
	"net/netip"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

// DefaultMaxConns bounds the connection table: about 165 bytes a connection
// (a 144-byte Conn and its map slot; without spans), 16 MiB.
const DefaultMaxConns = 100000

// joinWindow is how long an event is held for a later piece of it, in the
// kernel's time: most pieces come within microseconds, from the same CPU.
const joinWindow = 2 * time.Millisecond

// pieceWindow is how long an event is held when a later piece is expected
// from the same kernel call: the re-arm that follows a timewait timer's
// removal (unless the socket was killed), the RST that follows an abortive
// close() (SO_LINGER 0, unread data). Natively microseconds apart, but the
// CPU may stall in between on a busy virtual machine (steal time) or under
// emulation, and a kill or reset reported 200 ms late is still on time.
const pieceWindow = 200 * time.Millisecond

// holdFor is how long e waits for a later piece.
func holdFor(e *tracer.Event) uint64 {
	switch {
	case e.Type == tracer.EventTWCancel:
		return uint64(pieceWindow)
	case e.Type == tracer.EventState && e.New == tracer.Close && !e.Timewait && e.Reason == tracer.ReasonClosed:
		switch e.Old {
		case tracer.Established, tracer.CloseWait, tracer.FinWait1, tracer.FinWait2, tracer.SynRecv:
			return uint64(pieceWindow) // tcp_need_reset(): a RST follows
		}
	}
	return uint64(joinWindow)
}

// Span is one state in a connection's life.
type Span struct {
	State    tracer.State
	Start    uint64        // CLOCK_BOOTTIME ns; 0 when unknown
	Duration time.Duration // valid when Known
	Known    bool          // the tracer saw the state begin and end
	Min      bool          // began before the tracer: Duration is a lower bound
	Timewait bool          // lived in the timewait socket
}

// maxSpans bounds one connection's history; a connection that changes state
// more often keeps its first and last states.
const maxSpans = 32

// Conn is one connection (or listener) as the timeline knows it.
type Conn struct {
	Cookie uint64
	ends   ends  // (Endpoints and SetEndpoints)
	SkErr  int32 // the socket's error when it ended (in the 4 bytes ends leaves before Owner)
	Owner  tracer.Owner

	Since uint64 // when State began (CLOCK_BOOTTIME ns); see SinceStart; in CLOSE, its end (End)
	// SinceEarliest: with SinceStart, the earliest State can have begun
	// (tracer.Socket.SinceEarliest); 0 when nothing bounds it.
	SinceEarliest uint64
	spans         *[]Span // (Spans, SetSpans) with Options.Spans, else nil: 8 bytes, not a slice's 24
	prev, next    *Conn   // LRU list, most recently updated at the head

	// (the small fields last, together: 144 bytes a Conn, a size class of
	// the allocator; one byte more would take 160)
	RstReason  uint16
	State      tracer.State
	Reason     tracer.Reason // how it ended
	SinceStart bool          // State began before the tracer: Since is an estimate or the start time
	Timewait   bool          // the connection lives in a timewait socket
	lingered   bool
	asked      bool // its holder was looked for (HolderQueries)
}

// End is when the connection ended (CLOCK_BOOTTIME ns), 0 while it has not.
func (c *Conn) End() uint64 {
	if c.State != tracer.Close {
		return 0
	}
	return c.Since
}

// ends are a connection's tracer.Endpoints in 44 bytes, not 72: addresses
// without netip's zone handle, which also leaves the collector nothing to
// follow in them. 100,000 connections take 3 MiB less.
type ends struct {
	local, remote [16]byte
	lport, rport  uint16
	netns         uint32
	family        tracer.Family
	v4            uint8 // endsLocal4...: IPv4 (not v4-mapped IPv6); an address at all
}

const (
	endsLocal4 = 1 << iota
	endsRemote4
	endsLocalSet // an address (else the zero netip.AddrPort, as in a zero Conn)
	endsRemoteSet
)

// Endpoints are where the connection is.
func (c *Conn) Endpoints() tracer.Endpoints {
	e := tracer.Endpoints{NetNS: c.ends.netns, Family: c.ends.family}
	if c.ends.v4&endsLocalSet != 0 {
		e.Local = addrOf(c.ends.local, c.ends.v4&endsLocal4 != 0, c.ends.lport)
	}
	if c.ends.v4&endsRemoteSet != 0 {
		e.Remote = addrOf(c.ends.remote, c.ends.v4&endsRemote4 != 0, c.ends.rport)
	}
	return e
}

// SetEndpoints sets where the connection is (zones are not kept: the kernel
// has none to give).
func (c *Conn) SetEndpoints(e tracer.Endpoints) {
	c.ends = ends{netns: e.NetNS, family: e.Family,
		local: e.Local.Addr().As16(), remote: e.Remote.Addr().As16(), lport: e.Local.Port(), rport: e.Remote.Port()}
	c.ends.v4 = endsFlags(e.Local.Addr(), endsLocal4, endsLocalSet) | endsFlags(e.Remote.Addr(), endsRemote4, endsRemoteSet)
}

func addrOf(a [16]byte, v4 bool, port uint16) netip.AddrPort {
	addr := netip.AddrFrom16(a)
	if v4 {
		addr = addr.Unmap()
	}
	return netip.AddrPortFrom(addr, port)
}

func endsFlags(a netip.Addr, v4, set uint8) uint8 {
	switch {
	case !a.IsValid():
		return 0
	case a.Is4():
		return v4 | set
	}
	return set
}

// Spans are the connection's states so far, oldest first (with
// Options.Spans; else none).
func (c *Conn) Spans() []Span {
	if c.spans == nil {
		return nil
	}
	return *c.spans
}

// SetSpans gives c the states s (c keeps s; a copy of c made before keeps
// its own).
func (c *Conn) SetSpans(s []Span) { c.spans = &s }

// addSpan appends one state to c's history.
func (c *Conn) addSpan(s Span) {
	if c.spans == nil {
		c.spans = new([]Span)
	}
	*c.spans = append(*c.spans, s)
}

// truncSpans empties c's history, keeping its memory for the next.
func (c *Conn) truncSpans() *[]Span {
	if c.spans != nil {
		*c.spans = (*c.spans)[:0]
	}
	return c.spans
}

// Age is how long the connection has been in its state at time now.
func (c *Conn) Age(now uint64) time.Duration {
	if c.Since == 0 || now < c.Since {
		return 0
	}
	return time.Duration(now - c.Since)
}

// AgeMax is the most the connection can have been in its state at time now,
// when the kernel bounds it (a state older than the tracer); 0 otherwise.
func (c *Conn) AgeMax(now uint64) time.Duration {
	if !c.SinceStart || c.SinceEarliest == 0 || now < c.SinceEarliest {
		return 0
	}
	return time.Duration(now - c.SinceEarliest)
}

// Options configure a Timeline.
type Options struct {
	// MaxConns bounds the table (DefaultMaxConns when 0); the connection
	// updated least recently is evicted first, and counted.
	MaxConns int
	// Linger: emit an EventLinger once a socket has been in CLOSE_WAIT or
	// FIN_WAIT2 this long. 0: never.
	Linger time.Duration
	// OnFinish receives each connection when it ends (its last CLOSE). The
	// Conn is reused after the call: copy what you keep.
	OnFinish func(*Conn) error
	// Spans keeps each connection's history of states (for OnFinish);
	// without it Conn.Spans stays empty and a connection costs less memory.
	Spans bool
	// CompactTimewait keeps connections in TIME_WAIT in compact form, without
	// owner or history (timewait.go): for views that count them (serve).
	CompactTimewait bool
}

// Stats count what the table did.
type Stats struct {
	Conns    int    // in the table now
	Evicted  uint64 // dropped to stay within MaxConns
	Finished uint64
	Killed   uint64 // timewait sockets ended early
	// Gone: connections a walk after a loss no longer found (their end
	// was among the lost events): dropped, never shown as lingering.
	Gone uint64
	// Corrected: connections such a walk found in another state.
	Corrected uint64
	// Unseen: connections found in a timewait socket by a re-arm of its
	// timer, in a state the table never saw them reach (Event.Unseen).
	Unseen uint64
}

// Timeline is a tracer.Sink. It is not safe for concurrent use.
type Timeline struct {
	opts       Options
	next       tracer.Sink
	conns      map[uint64]*Conn
	head, tail *Conn   // LRU: head most recently updated
	free       []*Conn // finished connections, reused
	// listeners by namespace and port, to name the owner of sockets accepted
	// from a listener older than the tracer
	listeners map[listenKey]*Conn
	lingering map[uint64]*Conn // in CLOSE_WAIT or FIN_WAIT2 and not yet reported

	// ended: the owners of connections that ended last, for what the kernel
	// reports after a CLOSE (a keepalive kill's timeout event follows the
	// CLOSE it caused). A ring of endedOwners, by cookie.
	ended     map[uint64]tracer.Owner
	endedRing []uint64
	endedNext int

	held   heldQueue // waiting for a later piece (holdFor)
	latest uint64    // newest event time seen
	// cancelOn, by CPU: the timewait cancel held from that CPU whose
	// re-arm would be the CPU's next event (see settleCancel).
	cancelOn []heldCancel
	// endedInWalk: the connections that ended while a walk ran (BeginWalk
	// to Resync), at most MaxConns of them (endedOverflow: more did).
	endedInWalk   map[uint64]struct{}
	endedOverflow bool

	// The second tier (CompactTimewait): connections in TIME_WAIT, and the
	// order they entered it in, from twHead on (for eviction).
	tw      map[uint64]twConn
	twOrder []twKey
	twHead  int
	twSeq   uint32
	stats   Stats
	out     tracer.Event
}

type listenKey struct {
	netns uint32
	port  uint16
}

// New returns a Timeline that passes its events to next.
func New(next tracer.Sink, opts Options) *Timeline {
	if opts.MaxConns <= 0 {
		opts.MaxConns = DefaultMaxConns
	}
	return &Timeline{
		opts: opts, next: next,
		conns:     map[uint64]*Conn{},
		listeners: map[listenKey]*Conn{}, lingering: map[uint64]*Conn{},
		ended: map[uint64]tracer.Owner{}, endedRing: make([]uint64, endedOwners),

		tw: map[uint64]twConn{},
	}
}

// isHeldClose: a CLOSE of a full socket, which a RST may join.
func isHeldClose(e *tracer.Event) bool {
	return e.Type == tracer.EventState && e.New == tracer.Close && !e.Timewait
}

// endedOwners bounds how many ended connections keep their owner.
const endedOwners = 1024

// noteEnded keeps the owner of a connection that just ended.
func (t *Timeline) noteEnded(c *Conn) {
	if !c.Owner.Known() {
		return
	}
	if old := t.endedRing[t.endedNext]; old != 0 {
		delete(t.ended, old)
	}
	t.endedRing[t.endedNext] = c.Cookie
	t.endedNext = (t.endedNext + 1) % endedOwners
	t.ended[c.Cookie] = c.Owner
}

// Stats reports the table's counters.
func (t *Timeline) Stats() Stats {
	s := t.stats
	s.Conns = len(t.conns) + len(t.tw)
	return s
}

// BeginWalk marks the start of a walk of the kernel's sockets that runs
// while events keep coming (Resync applies it): from now on the table notes
// the connections that end, so that the walk, which may have seen them
// before they did, does not bring them back.
func (t *Timeline) BeginWalk() {
	t.endedInWalk = map[uint64]struct{}{}
}

// CancelWalk ends a walk that failed: the table stays as it is.
func (t *Timeline) CancelWalk() {
	t.endedInWalk, t.endedOverflow = nil, false
}

// Resync makes the table agree with a fresh walk of the kernel's sockets,
// after events were lost: connections the kernel no longer has are dropped
// (their end was lost; counted in Stats.Gone), those in another state than
// the table says take the walk's (the transitions between were lost), and
// sockets the table missed are added as Seed does. Without withTimewait the
// walk left out the sockets in TIME_WAIT: those of the table, and those in a
// state that leads there, are kept as they are (their timewait events end
// them). Events still held for a join are processed first.
//
// began is when the walk began (CLOCK_BOOTTIME ns, after BeginWalk): the
// events read while it ran are newer than what it saw of their connections.
// A connection whose state changed since began keeps the table's, and one
// that ended since is not added again.
func (t *Timeline) Resync(socks []tracer.Socket, withTimewait bool, began uint64) error {
	if err := t.release(^uint64(0)); err != nil {
		return err
	}
	ended, overflow := t.endedInWalk, t.endedOverflow
	t.endedInWalk, t.endedOverflow = nil, false
	present := make(map[uint64]*tracer.Socket, len(socks))
	for i := range socks {
		present[socks[i].Cookie] = &socks[i]
	}
	for c := t.head; c != nil; {
		next := c.next
		s := present[c.Cookie]
		switch {
		case !c.SinceStart && c.Since >= began:
			// Changed while the walk ran (or after it saw the socket):
			// the events are the newer truth.
		case s == nil && !withTimewait && (c.Timewait || mayTimewait(c.State)):
			// In TIME_WAIT, or maybe by now: such sockets were not walked.
			// It is no full socket any more (the walk had them all): it
			// lives in a timewait socket, or is gone; its age then bounds
			// it (a view can drop it past what those states last).
			c.Timewait = true
		case s == nil:
			t.remove(c)
			t.recycle(c)
			t.stats.Gone++
		case s.State != c.State || s.Timewait != c.Timewait:
			c.State, c.Timewait, c.SinceStart = s.State, s.Timewait, true
			c.Since, c.SinceEarliest = s.Since, s.SinceEarliest
			if c.Since == 0 {
				c.Since = s.Scanned
			}
			t.stats.Corrected++
			t.watchLinger(c)
			t.compact(c)
		}
		c = next
	}
	// The second tier's (in TIME_WAIT since before the walk began, in
	// timewait sockets): a walk without those cannot tell.
	for cookie, w := range t.tw {
		if !withTimewait || !w.sinceStart && w.since >= began {
			continue
		}
		if s := present[cookie]; s == nil {
			delete(t.tw, cookie)
			t.stats.Gone++
		} else if s.State != tracer.TimeWait || !s.Timewait {
			delete(t.tw, cookie) // (seeded below as the walk has it)
			t.stats.Corrected++
		}
	}
	var missing []tracer.Socket
	for _, s := range socks {
		if _, ok := t.conns[s.Cookie]; ok || (!withTimewait && s.Timewait) {
			continue
		}
		if _, ok := t.tw[s.Cookie]; ok {
			continue
		}
		if _, gone := ended[s.Cookie]; gone || overflow {
			continue // ended while the walk ran (or too many did to tell)
		}
		missing = append(missing, s)
	}
	t.Seed(missing)
	return nil
}

// mayTimewait tells whether a connection in state s may have gone on to
// TIME_WAIT with the events that said so lost.
func mayTimewait(s tracer.State) bool {
	return s == tracer.FinWait1 || s == tracer.FinWait2 || s == tracer.Closing || s == tracer.TimeWait
}

// Seed puts sockets found by the start-up walk in the table.
func (t *Timeline) Seed(socks []tracer.Socket) {
	for i := range socks {
		t.SeedSocket(&socks[i])
	}
}

// SeedSocket is Seed for one socket, as a streamed walk gives them
// (tracer.ScanEach); s is not kept.
func (t *Timeline) SeedSocket(s *tracer.Socket) {
	if s.Cookie == 0 {
		return
	}
	c := t.conn(s.Cookie)
	c.SetEndpoints(s.Endpoints)
	c.State, c.Timewait, c.SinceStart = s.State, s.Timewait, true
	c.Since, c.SinceEarliest = s.Since, s.SinceEarliest
	if c.Since == 0 {
		c.Since = s.Scanned
	}
	if s.Owner.Known() {
		c.Owner = s.Owner
	}
	if t.opts.Spans {
		c.truncSpans()
		c.addSpan(Span{State: s.State, Start: c.Since, Min: true, Timewait: s.Timewait})
	}
	if s.State == tracer.Listen {
		t.listeners[listenKey{s.NetNS, s.Local.Port()}] = c
	}
	t.watchLinger(c)
	t.compact(c)
}

// Conns calls f for every connection in the table, most recently updated
// first, then those in compact form (Options.CompactTimewait). f must not
// keep c.
func (t *Timeline) Conns(f func(*Conn) bool) {
	for c := t.head; c != nil; c = c.next {
		if !f(c) {
			return
		}
	}
	var c Conn // the second tier's, one at a time: f must not keep c
	for cookie, w := range t.tw {
		w.fill(&c, cookie)
		if !f(&c) {
			return
		}
	}
}

// HolderQueries lists, for tracer.FindHolders, up to max full sockets in
// states that have been there minAge at now, named only after their listener
// (no task has read, written or closed them), whose holder has not been
// looked for; each is marked looked for. cookies are theirs, in order.
func (t *Timeline) HolderQueries(now uint64, minAge time.Duration, states tracer.StateSet, max int) (qs []tracer.HolderQuery, cookies []uint64) {
	for c := t.head; c != nil && len(qs) < max; c = c.next {
		if c.asked || c.Timewait || c.Owner.From != tracer.OwnerListener || !states.Has(c.State) || c.Age(now) < minAge {
			continue
		}
		c.asked = true
		qs = append(qs, tracer.HolderQuery{Endpoints: c.Endpoints(), State: c.State, PID: c.Owner.PID})
		cookies = append(cookies, c.Cookie)
	}
	return qs, cookies
}

// SetHolder names the process found holding a connection's socket (a zero
// task: none found, nothing changes).
func (t *Timeline) SetHolder(cookie uint64, task tracer.Task) {
	if c, ok := t.conns[cookie]; ok && task.PID != 0 && c.Owner.From == tracer.OwnerListener {
		c.Owner = tracer.Owner{Task: task, From: tracer.OwnerProc}
	}
}

// Listening reports whether a socket listens on port in namespace netns (one
// the walk found or the tracer saw begin): connections to that port are its
// clients'.
func (t *Timeline) Listening(netns uint32, port uint16) bool {
	return t.listeners[listenKey{netns, port}] != nil
}

// conn finds or creates the connection with cookie, marking it most recent.
func (t *Timeline) conn(cookie uint64) *Conn {
	if c := t.find(cookie, true); c != nil {
		return c
	}
	return t.newConn(cookie)
}

// find returns the connection with cookie, marked most recent; with
// compact, also one of the second tier, brought back into the list. nil
// when the table does not have it.
func (t *Timeline) find(cookie uint64, compact bool) *Conn {
	if c, ok := t.conns[cookie]; ok {
		t.unlink(c)
		t.pushFront(c)
		return c
	}
	if compact && len(t.tw) > 0 {
		return t.expand(cookie)
	}
	return nil
}

// newConn adds a connection the table does not have, as the most recent.
func (t *Timeline) newConn(cookie uint64) *Conn {
	var c *Conn
	if len(t.conns)+len(t.tw) >= t.opts.MaxConns {
		t.stats.Evicted++
		if !t.evictTimewait() {
			c = t.tail // reused: a full table evicts one for each it adds
			t.remove(c)
		}
	}
	switch n := len(t.free); {
	case c != nil:
	case n > 0:
		c, t.free = t.free[n-1], t.free[:n-1]
	default:
		c = &Conn{}
	}
	*c = Conn{Cookie: cookie, spans: c.truncSpans()}
	t.pushFront(c)
	t.conns[cookie] = c
	return c
}

func (t *Timeline) pushFront(c *Conn) {
	c.prev, c.next = nil, t.head
	if t.head != nil {
		t.head.prev = c
	}
	t.head = c
	if t.tail == nil {
		t.tail = c
	}
}

func (t *Timeline) unlink(c *Conn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		t.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		t.tail = c.prev
	}
	c.prev, c.next = nil, nil
}

func (t *Timeline) remove(c *Conn) {
	if t.endedInWalk != nil {
		if len(t.endedInWalk) < t.opts.MaxConns {
			t.endedInWalk[c.Cookie] = struct{}{}
		} else {
			t.endedOverflow = true
		}
	}
	t.unlink(c)
	delete(t.conns, c.Cookie)
	delete(t.lingering, c.Cookie)
	if c.State == tracer.Listen {
		k := listenKey{c.ends.netns, c.ends.lport}
		if t.listeners[k] == c {
			delete(t.listeners, k)
		}
	}
}

// recycle keeps a removed connection for reuse once nobody holds it.
func (t *Timeline) recycle(c *Conn) {
	if len(t.free) < 1024 {
		t.free = append(t.free, c)
	}
}

// Event takes one event from the tracer (or a capture).
func (t *Timeline) Event(e *tracer.Event) error {
	if e.Type == tracer.EventLost {
		return t.next.Event(e)
	}
	if e.Time > t.latest {
		t.latest = e.Time
	}
	if err := t.release(t.latest); err != nil {
		return err
	}
	if e.HasCPU {
		t.settleCancel(e)
	}
	switch e.Type {
	case tracer.EventReset:
		// Join the RST to the CLOSE it follows; else show it alone.
		if i := t.held.last(e.Cookie, &t.held.closes, isHeldClose); i >= 0 {
			h := t.held.slot(i)
			if h.Reason == tracer.ReasonClosed || h.Reason == tracer.ReasonFIN || h.Reason == tracer.ReasonNone {
				h.Reason, h.RstReason = tracer.ReasonRSTSent, e.RstReason
				h.until = h.Time + holdFor(&h.Event)
			}
			return nil
		}
	case tracer.EventTWRearm:
		t.dropCancel(e.Cookie)
		if !e.Unseen {
			return nil
		}
		// (in order with the rest: it may tell where the connection is)
	case tracer.EventState:
		if e.Timewait {
			t.dropCancel(e.Cookie)
		}
	}
	t.held.push(e, e.Time+holdFor(e))
	return nil
}

// heldCancel: a held timewait cancel, by cookie (see cancelOn).
type heldCancel struct {
	cookie uint64
	held   bool
}

// maxCPU bounds cancelOn: a CPU number past it (a damaged capture) is not
// looked at, and its cancels wait out their window.
const maxCPU = 1 << 14

// settleCancel ends the wait of a timewait cancel once its CPU's next event
// says whether it was a re-arm. The kernel re-arms a timer in one stretch
// with interrupts off (__mod_timer: timer_cancel, then timer_start), so a
// re-arm's event is the very next one its CPU puts in the ring buffer, right
// behind the cancel; anything else from that CPU means that the socket was
// killed. Under churn the kills come by the thousand a second (ports coming
// round again), and each would otherwise hold every event behind it for the
// whole pieceWindow: a queue of 200 ms of the host's events. An event with
// no CPU (older captures) leaves the cancels to their window.
func (t *Timeline) settleCancel(e *tracer.Event) {
	if e.CPU >= maxCPU {
		return
	}
	if int(e.CPU) >= len(t.cancelOn) {
		t.cancelOn = append(t.cancelOn, make([]heldCancel, int(e.CPU)+1-len(t.cancelOn))...)
	}
	p := &t.cancelOn[e.CPU]
	if p.held {
		rearm := e.Cookie == p.cookie && (e.Type == tracer.EventTWRearm || e.Type == tracer.EventState && e.Timewait)
		// (this CPU's own: it may be gone already, and another CPU's of a
		// reused id may be waiting for its re-arm)
		fromCPU := func(h *tracer.Event) bool { return isTWCancel(h) && h.HasCPU && h.CPU == e.CPU }
		if i := t.held.last(p.cookie, &t.held.cancels, fromCPU); !rearm && i >= 0 {
			t.held.settle(i)
		}
	}
	p.held = e.Type == tracer.EventTWCancel
	p.cookie = e.Cookie
}

func isTWCancel(e *tracer.Event) bool { return e.Type == tracer.EventTWCancel }

// dropCancel forgets a held timewait cancel of cookie: it was a re-arm.
func (t *Timeline) dropCancel(cookie uint64) {
	if i := t.held.last(cookie, &t.held.cancels, isTWCancel); i >= 0 {
		t.held.remove(i)
	}
}

// release processes, in order, the held events that have waited long enough
// at time now.
func (t *Timeline) release(now uint64) error {
	for t.held.due(now) {
		if err := t.process(t.held.pop()); err != nil {
			return err
		}
	}
	t.held.shrink()
	return nil
}

// Tick releases what has waited long enough and emits linger events; now is
// the current CLOCK_BOOTTIME (or, on replay, the time of the capture).
func (t *Timeline) Tick(now uint64) error {
	if err := t.release(now); err != nil {
		return err
	}
	if t.opts.Linger > 0 {
		for _, c := range t.lingering {
			if c.Age(now) < t.opts.Linger {
				continue
			}
			delete(t.lingering, c.Cookie)
			c.lingered = true
			t.out = tracer.Event{
				Type: tracer.EventLinger, Time: now, Cookie: c.Cookie, Endpoints: c.Endpoints(), Old: c.State, New: c.State,
				Duration: c.Age(now), HasDuration: c.Since != 0, DurationMin: c.SinceStart,
				Owner: c.Owner, Timewait: c.Timewait,
			}
			if err := t.next.Event(&t.out); err != nil {
				return err
			}
		}
	}
	return nil
}

// Idle is called by the tracer when it has drained the ring buffer.
func (t *Timeline) Idle() error {
	if err := t.Tick(tracer.BootNow()); err != nil {
		return err
	}
	return t.next.Idle()
}

// Flush releases everything held (end of a capture, or of tracing).
func (t *Timeline) Flush() error {
	if err := t.release(^uint64(0)); err != nil {
		return err
	}
	return t.next.Idle()
}

// process applies one event to the table, enriches it, and passes it on.
func (t *Timeline) process(e *tracer.Event) error {
	if e.Type == tracer.EventTWHandover {
		// The connection goes on in a timewait socket, in the same state:
		// nothing to show, only where it lives now.
		if c, ok := t.conns[e.Cookie]; ok && c.State == e.New {
			c.Timewait = true
			t.enrichOwner(c, e)
			t.compact(c)
		}
		return nil
	}
	if e.Type == tracer.EventTWRearm {
		return t.unseenRearm(e)
	}
	if e.Type == tracer.EventTWCancel {
		// Not re-armed: the timewait socket was killed early.
		e.Type, e.New, e.Reason = tracer.EventState, tracer.Close, tracer.ReasonTWKilled
		t.stats.Killed++
	}
	if e.Cookie == 0 {
		return t.next.Event(e)
	}
	// One look-up per event (the table is big). Only a timewait socket's
	// events can be for the compact tier's; the connection goes back there
	// after this one, unless it ends it.
	c := t.find(e.Cookie, e.Timewait)
	switch {
	case c != nil:
	case e.Type != tracer.EventState:
		// After its end (a keepalive kill's timeout follows its CLOSE):
		// named from the ended, and no new connection made of it.
		if o, ok := t.ended[e.Cookie]; ok && !e.Owner.Known() {
			e.Owner = o
		}
		return t.next.Event(e)
	default:
		c = t.newConn(e.Cookie)
	}
	if c.ends.family == tracer.FamilyAny || e.Local.Port() != 0 {
		c.SetEndpoints(e.Endpoints)
	}
	t.enrichOwner(c, e)
	if e.Type != tracer.EventState {
		err := t.next.Event(e)
		t.compact(c)
		return err
	}
	if e.Timewait && !e.HasDuration {
		if err := t.untracked(c, e); err != nil {
			return err
		}
	}
	switch {
	case !e.DurationMin || c.Since == 0 || c.State != e.Old || e.Time <= c.Since:
	case c.SinceStart:
		// The walk estimated when the state began: better than the
		// tracer's start as a lower bound.
		if d := time.Duration(e.Time - c.Since); d > e.Duration {
			e.Duration = d
		}
	case e.Timewait:
		// The kernel side began to follow the timewait socket late (an
		// unseen re-arm); the table saw the state begin.
		e.Duration, e.DurationMin = time.Duration(e.Time-c.Since), false
	}
	t.advance(c, e)
	if err := t.next.Event(e); err != nil {
		return err
	}
	if e.New == tracer.Close && !(e.Timewait && e.Old == e.New) {
		t.stats.Finished++
		t.noteEnded(c)
		t.remove(c)
		var err error
		if t.opts.OnFinish != nil {
			err = t.opts.OnFinish(c) // must not keep c
		}
		t.recycle(c)
		return err
	}
	t.compact(c)
	return nil
}

// unseenRearm: the kernel side found the timer of a timewait socket it did
// not follow re-armed (the socket is older than the tracer and was not
// walked, was evicted from the kernel side's bounded table, or its first arm
// was never reported). The connection lives there, in e.New. When the table
// has it elsewhere, that is shown as a transition: from FIN_WAIT2 to
// TIME_WAIT it is the step itself (the peer's FIN re-arms the timer), seen
// now; from any other state, the steps between were not seen (Unseen,
// counted), and how long each state lasted is not known.
func (t *Timeline) unseenRearm(e *tracer.Event) error {
	if _, ok := t.tw[e.Cookie]; ok && e.New == tracer.TimeWait {
		return nil // in TIME_WAIT already (the compact tier): restarted, no news
	}
	c := t.find(e.Cookie, true)
	switch {
	case c == nil:
		return nil // not a connection of the table
	case c.State == e.New:
		c.Timewait = true // no news, or a handover not seen: only where it lives
		t.compact(c)
		return nil
	}
	e.Type, e.Old, e.Timewait = tracer.EventState, c.State, true
	e.Reason, e.RstReason, e.SkErr = tracer.ReasonNone, 0, 0
	e.Duration, e.HasDuration, e.DurationMin, e.Unseen = 0, false, false, false
	if c.State == tracer.FinWait2 && e.New == tracer.TimeWait {
		if c.Since != 0 && e.Time >= c.Since {
			e.Duration, e.HasDuration, e.DurationMin = time.Duration(e.Time-c.Since), true, c.SinceStart
		}
	} else {
		e.Unseen = true
		t.stats.Unseen++
	}
	if e.Local.Port() != 0 {
		c.SetEndpoints(e.Endpoints)
	}
	t.enrichOwner(c, e)
	t.advance(c, e)
	// Unseen: the state may have begun before (the re-arm a restart):
	// its start is the latest it can have been.
	c.SinceStart = e.Unseen
	err := t.next.Event(e)
	t.compact(c)
	return err
}

// untracked completes a timewait event that the kernel side sent without a
// duration: it had forgotten the connection (its table is bounded, LRU), so it
// neither saw a FIN_WAIT2 turn TIME_WAIT nor knew when the state began. The
// table still knows. TIME_WAIT began TimewaitLen before the timer's expiry,
// which the event carries.
func (t *Timeline) untracked(c *Conn, e *tracer.Event) error {
	if c.Since == 0 || e.Time < c.Since {
		return nil
	}
	if c.State == tracer.FinWait2 && e.Old == tracer.TimeWait && e.ExpiresIn != 0 {
		entered := int64(e.Time) + int64(e.ExpiresIn) - int64(tracer.TimewaitLen)
		entered = max(min(entered, int64(e.Time)), int64(c.Since))
		t.out = *e
		t.out.Type, t.out.Time, t.out.Old, t.out.New = tracer.EventState, uint64(entered), tracer.FinWait2, tracer.TimeWait
		t.out.Reason, t.out.RstReason, t.out.SkErr = tracer.ReasonNone, 0, 0
		t.out.Duration, t.out.HasDuration, t.out.DurationMin = time.Duration(uint64(entered)-c.Since), true, c.SinceStart
		t.out.ExpiresIn = tracer.TimewaitLen
		t.advance(c, &t.out)
		if err := t.next.Event(&t.out); err != nil {
			return err
		}
	}
	if c.State == e.Old {
		e.Duration, e.HasDuration, e.DurationMin = time.Duration(e.Time-c.Since), true, c.SinceStart
	}
	return nil
}

// enrichOwner fills the owner of e from the table, or the table from e.
func (t *Timeline) enrichOwner(c *Conn, e *tracer.Event) {
	// (the process found holding the socket stays, but not over what a
	// task did to it since)
	if e.Owner.Known() && !(c.Owner.From == tracer.OwnerProc && e.Owner.From <= tracer.OwnerListener) {
		c.Owner = e.Owner
		return
	}
	if !c.Owner.Known() && e.Old == tracer.Listen && e.New == tracer.SynRecv {
		if l := t.listeners[listenKey{e.NetNS, e.Local.Port()}]; l != nil && l.Owner.Known() {
			c.Owner = tracer.Owner{Task: l.Owner.Task, From: tracer.OwnerListener}
		}
	}
	if c.Owner.Known() {
		e.Owner = c.Owner
	}
}

// advance records the transition in c's history.
func (t *Timeline) advance(c *Conn, e *tracer.Event) {
	if t.opts.Spans {
		if spans := c.Spans(); len(spans) > 0 && spans[len(spans)-1].State == e.Old {
			last := &spans[len(spans)-1]
			last.Duration, last.Known, last.Min = e.Duration, e.HasDuration, e.DurationMin
		} else if e.Old != tracer.Close && !(e.Old == tracer.Listen && e.New == tracer.SynRecv) {
			// The first state the tracer saw of this connection (an accepted
			// socket's LISTEN is its listener's).
			c.addSpan(Span{State: e.Old, Duration: e.Duration, Known: e.HasDuration, Min: e.DurationMin})
		}
	}
	if e.Old == tracer.Listen && e.New == tracer.Close {
		delete(t.listeners, listenKey{c.ends.netns, c.ends.lport})
	}
	c.State, c.Since, c.SinceStart, c.SinceEarliest, c.Timewait = e.New, e.Time, false, 0, e.Timewait
	if e.New == tracer.Close {
		c.Reason, c.RstReason, c.SkErr = e.Reason, e.RstReason, e.SkErr
	} else if t.opts.Spans {
		if spans := c.Spans(); len(spans) == maxSpans {
			*c.spans = append(spans[:maxSpans/2], spans[maxSpans/2+1:]...)
		}
		c.addSpan(Span{State: e.New, Start: e.Time, Timewait: e.Timewait})
	}
	if e.New == tracer.Listen {
		t.listeners[listenKey{c.ends.netns, c.ends.lport}] = c
	}
	t.watchLinger(c)
}

func (t *Timeline) watchLinger(c *Conn) {
	lingerState := c.State == tracer.CloseWait || c.State == tracer.FinWait2
	if !lingerState {
		c.lingered = false
	}
	if t.opts.Linger > 0 && lingerState && !c.lingered {
		t.lingering[c.Cookie] = c
	} else {
		delete(t.lingering, c.Cookie)
	}
}

// Match reports whether c passes f: in its current state, or with finished
// set, in any state of its life.
func Match(f *tracer.Filter, c *Conn, finished bool) bool {
	if f == nil {
		return true
	}
	ends := c.Endpoints()
	if !finished || f.States == 0 {
		return f.MatchConn(&ends, &c.Owner, c.State, c.State)
	}
	for _, s := range c.Spans() {
		if f.MatchConn(&ends, &c.Owner, s.State, s.State) {
			return true
		}
	}
	return false
}
