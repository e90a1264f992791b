// SPDX-License-Identifier: Apache-2.0

package verify

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

func TestParseExpect(t *testing.T) {
	e, err := ParseExpect("keepalive_time=60, net.ipv4.tcp_keepalive_intvl=10,keepalive_probes=3,tcp_fin_timeout=30")
	if err != nil {
		t.Fatal(err)
	}
	if e[KeepaliveTime] != 60 || e[KeepaliveIntvl] != 10 || e[KeepaliveProbes] != 3 || e[FinTimeout] != 30 {
		t.Errorf("got %v", e)
	}
	for _, bad := range []string{"keepalive_time", "keepalive_time=0", "keepalive_time=-1", "keepalive_time=1s", "rmem=4096", "fin_timeout=9999999999"} {
		if _, err := ParseExpect(bad); err == nil {
			t.Errorf("ParseExpect(%q) accepted", bad)
		}
	}
}

const sec = uint64(time.Second)

// A checker with one namespace (keepalive_time 7200, intvl 75, probes 9,
// fin_timeout 60) and one socket, seeded from the walk.
func seeded(t *testing.T, expect Expect, s tracer.Socket) (*Checker, *Socket) {
	t.Helper()
	c := New(expect, nil)
	s.Cookie, s.NetNS, s.Family = 1, 7, tracer.IPv4
	s.Local, s.Remote = netip.MustParseAddrPort("10.0.0.1:5000"), netip.MustParseAddrPort("10.0.0.2:80")
	c.Seed([]tracer.Socket{s}, []tracer.NetNS{{Inode: 7, Sysctls: map[string]string{
		"keepalive_time": "7200", "keepalive_intvl": "75", "keepalive_probes": "9", "fin_timeout": "60"}}})
	return c, c.socks[1]
}

func only(t *testing.T, rs []Result, check string) Result {
	t.Helper()
	for _, r := range rs {
		if r.Check == check {
			return r
		}
	}
	t.Fatalf("no %s result in %+v", check, rs)
	return Result{}
}

func TestArmedWithFromTheWalk(t *testing.T) {
	// Last segment at 100s, timer fires at 7300s: armed with 7200s.
	c, k := seeded(t, nil, tracer.Socket{State: tracer.Established, KeepaliveOn: true, KeepaliveArmed: true,
		Scanned: 200 * sec, KeepaliveIn: 7100 * time.Second, LastRecv: 100 * sec})
	if k.ArmedWith != 7200*time.Second {
		t.Fatalf("armed with %v", k.ArmedWith)
	}
	if r := only(t, c.Results(200*sec), KeepaliveTime); r.Status != OK {
		t.Errorf("%+v", r)
	}
	// The namespace lowers it: mismatch no more, pending until the timer fires.
	c.UpdateSysctls(7, 300*sec, map[string]string{"keepalive_time": "60", "keepalive_intvl": "75", "keepalive_probes": "9", "fin_timeout": "60"})
	r := only(t, c.Results(300*sec), KeepaliveTime)
	if r.Status != Pending || !strings.Contains(r.Detail, "armed with 2h0m0s from before the change; picks up 1m0s when it fires in 1h56m40s") {
		t.Errorf("after the change: %+v", r)
	}
	if len(c.Changes) != 1 || c.Changes[0].Name != "keepalive_time" || c.Changes[0].Old != "7200" {
		t.Errorf("changes %+v", c.Changes)
	}
	// It fires and reads 60s: adopted.
	ev := tracer.Event{Type: tracer.EventKeepalive, Time: 7300 * sec, Cookie: 1, New: tracer.Established,
		Keepalive: tracer.Keepalive{Event: tracer.KeepaliveFired, On: true, Idle: time.Minute, Intvl: 75 * time.Second, Count: 9}}
	_ = c.Event(&ev)
	if r := only(t, c.Results(7300*sec), KeepaliveTime); r.Status != OK || k.AdoptedAt != 7300*sec {
		t.Errorf("after the fire: %+v, adopted at %d", r, k.AdoptedAt)
	}
}

func TestUnaffectedAndMismatch(t *testing.T) {
	c, _ := seeded(t, Expect{KeepaliveTime: 60, KeepaliveProbes: 9},
		tracer.Socket{State: tracer.Established, KeepaliveOn: true, SockIdle: 30 * time.Second})
	rs := c.Results(sec)
	if r := only(t, rs, KeepaliveTime); r.Status != Unaffected || r.Detail != "TCP_KEEPIDLE=30s set on the socket overrides the sysctl" {
		t.Errorf("own idle: %+v", r)
	}
	if r := only(t, rs, KeepaliveProbes); r.Status != OK {
		t.Errorf("probes: %+v", r)
	}
	if Satisfied(rs, false) != true || Satisfied(rs, true) != false {
		t.Error("unaffected must pass unless strict")
	}
	c2, _ := seeded(t, Expect{KeepaliveTime: 60}, tracer.Socket{State: tracer.Established, KeepaliveOn: true})
	if r := only(t, c2.Results(sec), KeepaliveTime); r.Status != Mismatch || !strings.Contains(r.Detail, "tcp_keepalive_time=7200, not 60") {
		t.Errorf("sysctl differs: %+v", r)
	}
	c3, _ := seeded(t, Expect{KeepaliveTime: 60}, tracer.Socket{State: tracer.Established})
	if r := only(t, c3.Results(sec), KeepaliveTime); r.Status != Unaffected || !strings.Contains(r.Detail, "SO_KEEPALIVE is off") {
		t.Errorf("keepalive off: %+v", r)
	}
	if Satisfied(c3.Results(sec), false) != true {
		t.Error("a socket without keepalive fails the gate")
	}
}

// tcp_fin_timeout counts from the orphaning: a FIN_WAIT2 its owner still
// holds (shutdown) is not rated; orphaned, the timer armed then rates it, and
// its end how long it lasted from then.
func TestFinTimeoutFromTheOrphaning(t *testing.T) {
	c := New(Expect{FinTimeout: 2}, nil)
	c.Seed(nil, []tracer.NetNS{{Inode: 7, Sysctls: map[string]string{"fin_timeout": "2"}}})
	base := tracer.Event{Type: tracer.EventState, Cookie: 5, Endpoints: tracer.Endpoints{NetNS: 7, Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:5000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")}}
	enter := base
	enter.Time, enter.Old, enter.New = 10*sec, tracer.FinWait1, tracer.FinWait2
	_ = c.Event(&enter)
	if rs := c.Results(11 * sec); len(rs) != 0 {
		t.Errorf("in FIN_WAIT2, not orphaned: %+v", rs)
	}
	// close() 3 s later: a timewait socket takes over, armed for 2 s.
	hand := base
	hand.Type, hand.Time, hand.Old, hand.New, hand.ExpiresIn, hand.Timewait = tracer.EventTWHandover, 13*sec, tracer.FinWait2, tracer.FinWait2, 1996*time.Millisecond, true
	c.Handover(&hand)
	if r := only(t, c.Results(14*sec), FinTimeout); r.Status != OK || r.Detail != "orphaned FIN_WAIT2, its timer armed for 1.996s (ends in 996ms)" {
		t.Errorf("orphaned, armed for 2s: %+v", r)
	}
	end := base
	end.Time, end.Old, end.New, end.Reason = 15*sec+sec/100, tracer.FinWait2, tracer.Close, tracer.ReasonFinTimeout
	end.Duration, end.HasDuration, end.Timewait = 5010*time.Millisecond, true, true
	_ = c.Event(&end)
	if r := only(t, c.Results(16*sec), FinTimeout); r.Status != OK || r.Socket.FinWait2Took != 2010*time.Millisecond {
		t.Errorf("ended 2.01s after its close(), 5.01s after FIN_WAIT2 began: %+v (took %v)", r, r.Socket.FinWait2Took)
	}
}

// Above TCP_TIMEWAIT_LEN the kernel arms the excess twice: 62 s lasts 4 s.
func TestFinTimeoutAboveTimewaitLen(t *testing.T) {
	c := New(Expect{FinTimeout: 62}, nil)
	c.Seed(nil, []tracer.NetNS{{Inode: 7, Sysctls: map[string]string{"fin_timeout": "62"}}})
	base := tracer.Event{Cookie: 5, Endpoints: tracer.Endpoints{NetNS: 7, Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:5000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")}}
	enter := base
	enter.Type, enter.Time, enter.Old, enter.New = tracer.EventState, 10*sec, tracer.FinWait1, tracer.FinWait2
	_ = c.Event(&enter)
	arm := base
	arm.Type, arm.Time, arm.Old, arm.New, arm.ExpiresIn = tracer.EventKeepalive, 10*sec, tracer.FinWait2, tracer.FinWait2, 2*time.Second
	arm.Keepalive.Event = tracer.KeepaliveArmed
	_ = c.Event(&arm)
	if r := only(t, c.Results(11*sec), FinTimeout); r.Status != Pending || !strings.Contains(r.Detail, "armed for 2s: rated when it ends") {
		t.Errorf("armed for the excess: %+v", r)
	}
	hand := base
	hand.Type, hand.Time, hand.Old, hand.New, hand.ExpiresIn = tracer.EventTWHandover, 12*sec, tracer.FinWait2, tracer.FinWait2, 2*time.Second
	c.Handover(&hand)
	end := base
	end.Type, end.Time, end.Old, end.New, end.Reason = tracer.EventState, 14*sec, tracer.FinWait2, tracer.Close, tracer.ReasonFinTimeout
	end.Duration, end.HasDuration, end.Timewait = 4*time.Second, true, true
	_ = c.Event(&end)
	if r := only(t, c.Results(15*sec), FinTimeout); r.Status != Mismatch || r.Detail != "orphaned FIN_WAIT2 ended after 4s, not 1m2s" {
		t.Errorf("lasted 4s with fin_timeout=62: %+v", r)
	}
}

// An orphan the walk found is not rated by a start its timer only implies;
// it leaves the scope when it ends.
func TestFinTimeoutOrphanedBeforeStart(t *testing.T) {
	c := New(Expect{FinTimeout: 2}, nil)
	ns := []tracer.NetNS{{Inode: 7, Sysctls: map[string]string{"fin_timeout": "2"}}}
	ep := tracer.Endpoints{NetNS: 7, Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:5000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")}
	c.Seed([]tracer.Socket{{Cookie: 5, Endpoints: ep, State: tracer.FinWait2, Timewait: true, Since: 9 * sec, Scanned: 10 * sec, ExpiresIn: time.Second}}, ns)
	if r := only(t, c.Results(10*sec+sec/2), FinTimeout); r.Status != Pending ||
		r.Detail != "orphaned in FIN_WAIT2 before tcpstate started: keeps its timer (ends in 500ms), leaves when it ends" {
		t.Errorf("found orphaned: %+v", r)
	}
	end := tracer.Event{Type: tracer.EventState, Cookie: 5, Endpoints: ep, Time: 11 * sec, Old: tracer.FinWait2, New: tracer.Close,
		Reason: tracer.ReasonFinTimeout, Duration: 2 * time.Second, HasDuration: true, DurationMin: true, Timewait: true}
	_ = c.Event(&end)
	if rs := c.Results(12 * sec); len(rs) != 0 {
		t.Errorf("ended: %+v, want out of scope", rs)
	}
}
