// SPDX-License-Identifier: Apache-2.0

package timeline

import (
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

// twEv: cookie's connection goes from FIN_WAIT2 to TIME_WAIT in a timewait
// socket at ts, between local and remote.
func twEv(ts, cookie uint64, family tracer.Family, local, remote string) tracer.Event {
	return tracer.Event{Type: tracer.EventState, Time: ts, Cookie: cookie, Old: tracer.FinWait2, New: tracer.TimeWait, Timewait: true,
		Endpoints: tracer.Endpoints{Family: family, Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote)}}
}

// With CompactTimewait, a connection in TIME_WAIT leaves the list for the
// compact tier and comes back whole for its end: the same endpoints (both
// families, a v4-mapped peer kept apart), the same age, and its TIME_WAIT
// time on the end.
func TestCompactTimewait(t *testing.T) {
	s := &sink{}
	tl := New(s, Options{CompactTimewait: true})
	feed(t, tl,
		ev(1*ms, 1, tracer.SynSent, tracer.Established),
		twEv(2*ms, 2, tracer.IPv4, "10.0.0.1:40001", "10.0.0.2:80"),
		twEv(3*ms, 3, tracer.IPv6, "[2001:db8::1]:40002", "[2001:db8::2]:443"),
		twEv(4*ms, 4, tracer.IPv6, "[::ffff:10.0.0.1]:40003", "[::ffff:10.0.0.2]:80"))
	if err := tl.Tick(uint64(time.Second)); err != nil {
		t.Fatal(err)
	}
	if n := len(tl.tw); n != 3 {
		t.Fatalf("%d connections in the compact tier, want 3", n)
	}
	if n := tl.Stats().Conns; n != 4 {
		t.Errorf("Stats().Conns %d, want 4 (both tiers)", n)
	}
	type row struct {
		state         tracer.State
		timewait      bool
		family        tracer.Family
		local, remote string
		age           time.Duration
	}
	got := map[uint64]row{}
	tl.Conns(func(c *Conn) bool {
		ends := c.Endpoints()
		got[c.Cookie] = row{c.State, c.Timewait, ends.Family, ends.Local.String(), ends.Remote.String(), c.Age(10 * ms)}
		return true
	})
	want := map[uint64]row{
		1: {tracer.Established, false, tracer.IPv4, local.String(), remote.String(), 9 * time.Millisecond},
		2: {tracer.TimeWait, true, tracer.IPv4, "10.0.0.1:40001", "10.0.0.2:80", 8 * time.Millisecond},
		3: {tracer.TimeWait, true, tracer.IPv6, "[2001:db8::1]:40002", "[2001:db8::2]:443", 7 * time.Millisecond},
		4: {tracer.TimeWait, true, tracer.IPv6, "[::ffff:10.0.0.1]:40003", "[::ffff:10.0.0.2]:80", 6 * time.Millisecond},
	}
	if !maps.Equal(got, want) {
		t.Errorf("connections:\n%v\nwant\n%v", got, want)
	}
	// The timer ends 3 (an event the kernel sends without its start).
	end := tracer.Event{Type: tracer.EventState, Time: 60*uint64(time.Second) + 3*ms, Cookie: 3, Old: tracer.TimeWait, New: tracer.Close, Timewait: true,
		Endpoints: tracer.Endpoints{Family: tracer.IPv6, Local: netip.MustParseAddrPort("[2001:db8::1]:40002"), Remote: netip.MustParseAddrPort("[2001:db8::2]:443")}}
	feed(t, tl, end)
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	last := s.events[len(s.events)-1]
	if last.Cookie != 3 || last.New != tracer.Close || !last.HasDuration || last.Duration != 60*time.Second {
		t.Errorf("end of 3: %+v, want its CLOSE after 60s in TIME_WAIT", last)
	}
	if _, ok := tl.tw[3]; ok || tl.Stats().Conns != 3 {
		t.Errorf("3 still in the table after its end (%d connections)", tl.Stats().Conns)
	}
	// The others are all still there, in both tiers: bringing 3 back into
	// the list for its end must not have cut the list.
	seen := map[uint64]bool{}
	tl.Conns(func(c *Conn) bool { seen[c.Cookie] = true; return true })
	if want := map[uint64]bool{1: true, 2: true, 4: true}; !maps.Equal(seen, want) {
		t.Errorf("connections after 3 ended: %v, want %v", seen, want)
	}
	// A TIME_WAIT connection brought back by a re-armed timer goes back
	// to the compact tier, and the list still holds the live one.
	rearm := tracer.Event{Type: tracer.EventTWRearm, Time: 61 * uint64(time.Second), Cookie: 2, Timewait: true, Old: tracer.TimeWait, New: tracer.TimeWait,
		Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:40001"), Remote: netip.MustParseAddrPort("10.0.0.2:80")}}
	feed(t, tl, rearm)
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	clear(seen)
	tl.Conns(func(c *Conn) bool { seen[c.Cookie] = true; return true })
	if _, ok := tl.tw[2]; !ok || !maps.Equal(seen, map[uint64]bool{1: true, 2: true, 4: true}) {
		t.Errorf("after 2's timer was re-armed: %v (2 compact: %v), want 1, 2 and 4, 2 compact", seen, ok)
	}
}

// A full table evicts the connection longest in TIME_WAIT, not a live one
// (which the LRU list alone would pick: it is the least recently updated).
func TestCompactTimewaitEvictsTimewaitFirst(t *testing.T) {
	tl := New(&sink{}, Options{CompactTimewait: true, MaxConns: 3})
	feed(t, tl,
		ev(1*ms, 1, tracer.SynSent, tracer.Established),
		twEv(2*ms, 2, tracer.IPv4, "10.0.0.1:40001", "10.0.0.2:80"),
		twEv(3*ms, 3, tracer.IPv4, "10.0.0.1:40002", "10.0.0.2:80"),
		ev(4*ms, 4, tracer.SynSent, tracer.Established),
		ev(5*ms, 5, tracer.SynSent, tracer.Established),
		ev(6*ms, 6, tracer.SynSent, tracer.Established))
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]tracer.State{}
	tl.Conns(func(c *Conn) bool { got[c.Cookie] = c.State; return true })
	// 4 evicts 2 (TIME_WAIT first), 5 evicts 3, 6 evicts the oldest live one.
	if want := map[uint64]tracer.State{4: tracer.Established, 5: tracer.Established, 6: tracer.Established}; !maps.Equal(got, want) {
		t.Errorf("table %v, want %v", got, want)
	}
	if n := tl.Stats().Evicted; n != 3 {
		t.Errorf("evicted %d, want 3", n)
	}
}

// A walk after a loss sees the compact tier: what it no longer has is gone,
// what it has in another state is corrected, what is newer than it stays.
func TestResyncCompactTimewait(t *testing.T) {
	tl := New(&sink{}, Options{CompactTimewait: true})
	feed(t, tl,
		twEv(1*ms, 1, tracer.IPv4, "10.0.0.1:40001", "10.0.0.2:80"),
		twEv(2*ms, 2, tracer.IPv4, "10.0.0.1:40002", "10.0.0.2:80"),
		twEv(3*ms, 3, tracer.IPv4, "10.0.0.1:40003", "10.0.0.2:80"))
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	tl.BeginWalk()
	feed(t, tl, twEv(12*ms, 4, tracer.IPv4, "10.0.0.1:40004", "10.0.0.2:80"))
	ep := tracer.Endpoints{Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:40002"), Remote: remote}
	if err := tl.Resync([]tracer.Socket{
		{Cookie: 2, Endpoints: ep, State: tracer.TimeWait, Timewait: true, Scanned: 11 * ms},
		{Cookie: 3, Endpoints: ep, State: tracer.FinWait2, Timewait: true, Scanned: 11 * ms},
	}, true, 10*ms); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]tracer.State{}
	tl.Conns(func(c *Conn) bool { got[c.Cookie] = c.State; return true })
	if want := map[uint64]tracer.State{2: tracer.TimeWait, 3: tracer.FinWait2, 4: tracer.TimeWait}; !maps.Equal(got, want) {
		t.Errorf("table after the walk %v, want %v", got, want)
	}
	if st := tl.Stats(); st.Gone != 1 || st.Corrected != 1 {
		t.Errorf("gone %d corrected %d, want 1 and 1", st.Gone, st.Corrected)
	}
}
