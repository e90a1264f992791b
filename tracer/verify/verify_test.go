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

func TestFinTimeoutFromTheEnd(t *testing.T) {
	c := New(Expect{FinTimeout: 2}, nil)
	c.Seed(nil, []tracer.NetNS{{Inode: 7, Sysctls: map[string]string{"fin_timeout": "2"}}})
	base := tracer.Event{Type: tracer.EventState, Cookie: 5, Endpoints: tracer.Endpoints{NetNS: 7, Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:5000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")}}
	enter := base
	enter.Time, enter.Old, enter.New = 10*sec, tracer.FinWait1, tracer.FinWait2
	_ = c.Event(&enter)
	if r := only(t, c.Results(11*sec), FinTimeout); r.Status != Pending {
		t.Errorf("in FIN_WAIT2: %+v", r)
	}
	end := base
	end.Time, end.Old, end.New, end.Reason = 12*sec+sec/100, tracer.FinWait2, tracer.Close, tracer.ReasonFinTimeout
	end.Duration, end.HasDuration, end.Timewait = 2010*time.Millisecond, true, true
	_ = c.Event(&end)
	if r := only(t, c.Results(13*sec), FinTimeout); r.Status != OK {
		t.Errorf("ended after 2.01s: %+v", r)
	}
}
