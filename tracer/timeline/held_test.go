// SPDX-License-Identifier: Apache-2.0

package timeline

import (
	"testing"

	"github.com/tcpstate/tcpstate/tracer"
)

// The held queue keeps arrival order through growth, wrap-around and removals
// from the middle, and its per-cookie counts stay exact (zero when nothing of
// the cookie is held), colliding cookies included. Each event keeps its own
// release time through all of it.
func TestHeldQueue(t *testing.T) {
	// 37 cookies, pairs of them in one slot.
	var collide []uint64
	bySlot := map[uint32]uint64{}
	for c := uint64(1); len(collide) < 36; c++ {
		if o, ok := bySlot[heldSlot(c)]; ok {
			collide = append(collide, o, c)
			delete(bySlot, heldSlot(c))
		} else {
			bySlot[heldSlot(c)] = c
		}
	}
	collide = append(collide, 1<<40)
	var q heldQueue
	var want []tracer.Event // the model
	// Cookies i and i+heldSlots<<... share slots: find colliding ones.
	const cookies = 37
	cookieOf := func(i int) uint64 { return collide[i%cookies] }
	mk := func(i int) tracer.Event {
		e := tracer.Event{Type: tracer.EventState, Time: uint64(i), Cookie: cookieOf(i), New: tracer.Established}
		switch i % 3 {
		case 0:
			e.Type = tracer.EventTWCancel
		case 1:
			e.New = tracer.Close
		}
		return e
	}
	check := func(step string) {
		t.Helper()
		if q.len() != len(want) {
			t.Fatalf("%s: %d held, want %d", step, q.len(), len(want))
		}
		cancels, closes := map[uint64]bool{}, map[uint64]bool{}
		for i := range want {
			if *q.at(i) != want[i] {
				t.Fatalf("%s: event %d is %+v, want %+v", step, i, *q.at(i), want[i])
			}
			if u := q.slot(i).until; u != want[i].Time*10 {
				t.Fatalf("%s: event %d may go at %d, want %d", step, i, u, want[i].Time*10)
			}
			if isTWCancel(&want[i]) {
				cancels[want[i].Cookie] = true
			} else if isHeldClose(&want[i]) {
				closes[want[i].Cookie] = true
			}
		}
		for _, c := range append(collide, 1<<41, 1<<42) {
			// Never "none" for a cookie held (a missed join); "none" for one
			// not held whose slot holds one other cookie only.
			if cancels[c] && !q.cancels.mayHold(c) || closes[c] && !q.closes.mayHold(c) {
				t.Fatalf("%s: cookie %d held, index says none", step, c)
			}
			s := heldSlot(c)
			if !cancels[c] && q.cancels.one[s] && q.cancels.mayHold(c) {
				t.Fatalf("%s: cookie %d not held, index says maybe", step, c)
			}
		}
	}
	next := 0
	for round := range 6 {
		for range 300 + 200*round { // grows past 256, 512, 1024...
			e := mk(next)
			next++
			q.push(&e, e.Time*10)
			want = append(want, e)
		}
		check("pushed")
		// A cancel of some cookie taken out of the middle (a re-arm).
		if i := q.last(collide[3], &q.cancels, isTWCancel); i >= 0 {
			q.remove(i)
			want = append(want[:i], want[i+1:]...)
		} else {
			t.Fatal("no held cancel of cookie 3 found")
		}
		check("removed")
		for range 250 { // the front released: the ring wraps
			e := q.pop()
			if *e != want[0] {
				t.Fatalf("popped %+v, want %+v", *e, want[0])
			}
			want = want[1:]
		}
		check("popped")
	}
	for q.len() > 0 {
		q.pop()
	}
	want = nil
	check("emptied")
	for s := range heldSlots {
		if q.cancels.count[s] != 0 || q.closes.count[s] != 0 {
			t.Fatalf("slot %d still counts %d, %d", s, q.cancels.count[s], q.closes.count[s])
		}
	}
	if q.last(collide[3], &q.closes, isHeldClose) != -1 {
		t.Error("an empty queue found a close")
	}
}
