// SPDX-License-Identifier: Apache-2.0

package timeline

import "github.com/tcpstate/tcpstate/tracer"

// heldQueue holds events in arrival order until they are released: a ring
// that grows by doubling and is never copied to move its front, so that a
// busy host's 200 ms of events (20,000 and more behind a held CLOSE) cost a
// copy in and a copy out each, nothing more.
//
// Alongside, per cookie hash, what is held that a later piece may join
// (timewait cancels, full sockets' CLOSEs): how many, and whose when they
// are all one cookie's. Nearly every event asks, and the answer is nearly
// always "none" without a look at the queue; the queue is searched only for
// a cookie of the slot's, or a slot that two cookies share. (A host whose
// ports come round again kills thousands of TIME_WAIT a second: held
// cancels by the thousand.)
type heldQueue struct {
	ring    []heldEvent // len is a power of two
	head, n int
	cancels heldIndex
	closes  heldIndex
	maxLen  int // the most events held at once since the queue was last empty
}

// heldEvent is an event and when it may go (CLOCK_BOOTTIME ns).
type heldEvent struct {
	tracer.Event
	until uint64
}

// heldIndex counts held events by cookie hash.
type heldIndex struct {
	count  [heldSlots]uint16
	cookie [heldSlots]uint64 // the slot's one cookie, when one (see one)
	one    [heldSlots]bool   // every event counted in the slot has cookie
}

const heldSlots = 1 << 15

func heldSlot(cookie uint64) uint32 { return uint32((cookie * 0x9e3779b97f4a7c15) >> (64 - 15)) }

func (x *heldIndex) add(cookie uint64) {
	s := heldSlot(cookie)
	switch {
	case x.count[s] == 0:
		x.cookie[s], x.one[s] = cookie, true
	case x.cookie[s] != cookie:
		x.one[s] = false
	}
	x.count[s]++ // (one per held event: 65,536 in one slot would take a million held)
}

func (x *heldIndex) sub(cookie uint64) {
	s := heldSlot(cookie)
	if x.count[s]--; x.count[s] == 0 {
		x.one[s] = false
	}
}

// mayHold: false when nothing of cookie is held.
func (x *heldIndex) mayHold(cookie uint64) bool {
	s := heldSlot(cookie)
	return x.count[s] > 0 && (!x.one[s] || x.cookie[s] == cookie)
}

// index is where e is counted, or nil for an event nothing joins.
func (q *heldQueue) index(e *tracer.Event) *heldIndex {
	switch {
	case e.Type == tracer.EventTWCancel:
		return &q.cancels
	case isHeldClose(e):
		return &q.closes
	}
	return nil
}

func (q *heldQueue) len() int { return q.n }

// at is the i-th held event, oldest first.
func (q *heldQueue) at(i int) *tracer.Event { return &q.slot(i).Event }

func (q *heldQueue) slot(i int) *heldEvent { return &q.ring[(q.head+i)&(len(q.ring)-1)] }

// due: the oldest held event may go at time now.
func (q *heldQueue) due(now uint64) bool { return q.n > 0 && q.slot(0).until <= now }

// settle lets the i-th held event go as soon as it is the oldest: nothing
// more will join it.
func (q *heldQueue) settle(i int) { q.slot(i).until = q.slot(i).Time }

func (q *heldQueue) push(e *tracer.Event, until uint64) {
	if q.n == len(q.ring) {
		ring := make([]heldEvent, max(2*len(q.ring), 256))
		for i := range q.n {
			ring[i] = *q.slot(i)
		}
		q.ring, q.head = ring, 0
	}
	h := q.slot(q.n)
	h.Event, h.until = *e, until
	q.n++
	q.maxLen = max(q.maxLen, q.n)
	if x := q.index(e); x != nil {
		x.add(e.Cookie)
	}
}

// pop takes the oldest event out; it stays valid until the next push.
func (q *heldQueue) pop() *tracer.Event {
	e := q.at(0)
	q.head = (q.head + 1) & (len(q.ring) - 1)
	q.n--
	if x := q.index(e); x != nil {
		x.sub(e.Cookie)
	}
	return e
}

// remove takes the i-th event out, keeping the order of the others.
func (q *heldQueue) remove(i int) {
	e := q.at(i)
	if x := q.index(e); x != nil {
		x.sub(e.Cookie)
	}
	for ; i < q.n-1; i++ {
		*q.slot(i) = *q.slot(i + 1)
	}
	q.n--
}

// last finds the newest held event with cookie that match accepts; -1 if
// none. x is the index of such events: nothing is searched when it says none.
func (q *heldQueue) last(cookie uint64, x *heldIndex, match func(*tracer.Event) bool) int {
	if !x.mayHold(cookie) {
		return -1
	}
	for i := q.n - 1; i >= 0; i-- {
		if h := q.at(i); h.Cookie == cookie && match(h) {
			return i
		}
	}
	return -1
}

// shrink lets an empty ring that grew past a busy moment go.
func (q *heldQueue) shrink() {
	if q.n == 0 && len(q.ring) > 4096 && q.maxLen < len(q.ring)/4 {
		q.ring, q.head = nil, 0
	}
	if q.n == 0 {
		q.maxLen = 0
	}
}
