// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStateSpellings(t *testing.T) {
	for in, want := range map[string]State{
		"CLOSE_WAIT": CloseWait, "close-wait": CloseWait, "CLOSE-WAIT": CloseWait, "closewait": CloseWait,
		"FIN_WAIT2": FinWait2, "FIN_WAIT_2": FinWait2, "fin-wait-2": FinWait2, "FIN-WAIT-2": FinWait2,
		"fin_wait1": FinWait1, "FIN-WAIT-1": FinWait1, "TCP_LISTEN": Listen, "listen": Listen,
		"ESTAB": Established, "established": Established, "time-wait": TimeWait, "TIME_WAIT": TimeWait,
		"CLOSED": Close, "close": Close, "syn-recv": SynRecv, "SYN_RECV": SynRecv, "syn-sent": SynSent,
		"last-ack": LastAck, "closing": Closing, "new-syn-recv": NewSynRecv, " Established ": Established,
	} {
		got, err := ParseState(in)
		if err != nil || got != want {
			t.Errorf("ParseState(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ESTABLISHEDX", "FIN", "WAIT", "7", "-"} {
		if st, err := ParseState(bad); err == nil {
			t.Errorf("ParseState(%q) = %v, want an error", bad, st)
		}
	}
	for st := Established; st < numStates; st++ {
		if got, err := ParseState(st.String()); err != nil || got != st {
			t.Errorf("ParseState(%q) = %v, %v", st.String(), got, err)
		}
	}
}

func TestParseStatesList(t *testing.T) {
	set, err := ParseStates("close-wait, FIN_WAIT_2,TIME-WAIT")
	if err != nil {
		t.Fatal(err)
	}
	for st := Established; st < numStates; st++ {
		want := st == CloseWait || st == FinWait2 || st == TimeWait
		if set.Has(st) != want {
			t.Errorf("set.Has(%v) = %v, want %v", st, set.Has(st), want)
		}
	}
	if _, err := ParseStates("ESTABLISHED,nope"); err == nil {
		t.Error("ParseStates accepted an unknown state")
	}
}

func TestParsePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1":           "127.0.0.1/32",
		"10.1.2.3/8":          "10.0.0.0/8",
		"::1":                 "::1/128",
		"[::1]":               "::1/128",
		"2001:db8::/32":       "2001:db8::/32",
		"::ffff:10.0.0.1":     "10.0.0.1/32",
		"::ffff:10.0.0.0/104": "10.0.0.0/8",
	} {
		got, err := ParsePrefix(in)
		if err != nil || got.String() != want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "localhost", "1.2.3.4/33", "1.2.3"} {
		if _, err := ParsePrefix(bad); err == nil {
			t.Errorf("ParsePrefix(%q): want an error", bad)
		}
	}
}

func TestParsePorts(t *testing.T) {
	got, err := ParsePorts("80, 443,8080")
	if err != nil || len(got) != 3 || got[0] != 80 || got[1] != 443 || got[2] != 8080 {
		t.Errorf("ParsePorts = %v, %v", got, err)
	}
	for _, bad := range []string{"0", "65536", "http", "-1"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q): want an error", bad)
		}
	}
}

func sampleEvent() Event {
	return Event{
		Type: EventState, Time: 5e9, Cookie: 42, Endpoints: Endpoints{NetNS: 4026531840, Family: IPv4, Local: netip.MustParseAddrPort("10.0.0.1:5000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")},
		Old: Established, New: CloseWait,
		Duration: 1500 * time.Millisecond, HasDuration: true,
		Owner: Owner{Task: Task{PID: 100, TID: 101, Comm: CommFrom("curl")}, From: OwnerConnect},
		OnCPU: Task{PID: 0, Comm: CommFrom("swapper/1")},
	}
}

func TestFilterMatch(t *testing.T) {
	e := sampleEvent()
	unknownOwner := e
	unknownOwner.Owner.From = OwnerUnknown
	rearm, cancel := e, e
	rearm.Type, rearm.Old, rearm.New, rearm.Timewait = EventTWRearm, TimeWait, TimeWait, true
	cancel.Type, cancel.Old, cancel.New, cancel.Timewait = EventTWCancel, TimeWait, Close, true
	for _, tc := range []struct {
		name string
		f    Filter
		e    Event
		want bool
	}{
		{"zero filter", Filter{}, e, true},
		{"either port local", Filter{Ports: []uint16{5000}}, e, true},
		{"either port remote", Filter{Ports: []uint16{1, 80}}, e, true},
		{"either port none", Filter{Ports: []uint16{1}}, e, false},
		{"lport", Filter{LPorts: []uint16{5000}}, e, true},
		{"lport is not remote", Filter{LPorts: []uint16{80}}, e, false},
		{"rport", Filter{RPorts: []uint16{80}}, e, true},
		{"rport is not local", Filter{RPorts: []uint16{5000}}, e, false},
		{"addr remote cidr", Filter{Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/30")}}, e, true},
		{"addr miss", Filter{Addrs: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}, e, false},
		{"family", Filter{Family: IPv4}, e, true},
		{"family miss", Filter{Family: IPv6}, e, false},
		{"state new", Filter{States: 1 << CloseWait}, e, true},
		{"state old", Filter{States: 1 << Established}, e, true},
		{"state miss", Filter{States: 1 << TimeWait}, e, false},
		// A re-arm is never shown; the timeline needs it to tell the cancel
		// before it (to CLOSE) from a kill.
		{"timewait re-arm, any state", Filter{States: 1 << Close}, rearm, true},
		{"timewait re-arm, other port", Filter{States: 1 << Close, Ports: []uint16{1}}, rearm, false},
		{"timewait cancel, state miss", Filter{States: 1 << Listen}, cancel, false},
		{"pid", Filter{PIDs: []uint32{7, 100}}, e, true},
		{"pid miss", Filter{PIDs: []uint32{7}}, e, false},
		{"pid needs a known owner", Filter{PIDs: []uint32{100}}, unknownOwner, false},
		{"comm", Filter{Comm: "curl"}, e, true},
		{"comm is exact", Filter{Comm: "cur"}, e, false},
		{"comm needs a known owner", Filter{Comm: "curl"}, unknownOwner, false},
		{"netns", Filter{NetNS: 4026531840}, e, true},
		{"netns miss", Filter{NetNS: 1}, e, false},
		{"all hold", Filter{Ports: []uint16{80}, PIDs: []uint32{100}, States: 1 << CloseWait}, e, true},
		{"one fails", Filter{Ports: []uint16{80}, PIDs: []uint32{100}, States: 1 << Listen}, e, false},
		{"lost always passes", Filter{Ports: []uint16{1}}, Event{Type: EventLost, Lost: 3}, true},
	} {
		if got := tc.f.Match(&tc.e); got != tc.want {
			t.Errorf("%s: Match = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFilterValidate(t *testing.T) {
	if err := (&Filter{Comm: "a-sixteen-chars!"}).Validate(); err == nil {
		t.Error("a 16-byte comm was accepted")
	}
	if err := (&Filter{Ports: make([]uint16, maxFilterValues+1)}).Validate(); err == nil {
		t.Error("too many ports were accepted")
	}
	if err := (&Filter{Comm: "fifteen-chars!!", Ports: make([]uint16, maxFilterValues)}).Validate(); err != nil {
		t.Error(err)
	}
}

// encode builds a ring buffer record the way the BPF program lays it out,
// through the bpf2go mirror of struct event.
func encode(t testing.TB, raw tcpstateEvent) []byte {
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, &raw); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func comm16(s string) (c [16]int8) {
	for i := 0; i < len(s) && i < 15; i++ {
		c[i] = int8(s[i])
	}
	return c
}

func TestDecodeIPv4(t *testing.T) {
	raw := tcpstateEvent{
		TsNs: 123456789, Cookie: 77, DurationNs: 1500000000, Netns: 4026531840,
		Pid: 100, Tid: 101, CpuPid: 0, Cpu: 3, SkErr: 111, Family: afInet, Sport: 5000, Dport: 80,
		Type: uint8(EventState), OldState: uint8(SynSent), NewState: uint8(Close),
		OwnerSrc: uint8(OwnerConnect), Flags: evfDuration | evfOwner,
		Comm: comm16("curl"), CpuComm: comm16("swapper/0"),
	}
	copy(raw.Saddr[:], []byte{10, 0, 0, 1})
	copy(raw.Daddr[:], []byte{10, 0, 0, 2})
	var e Event
	if err := Decode(encode(t, raw), &e, 250); err != nil {
		t.Fatal(err)
	}
	want := Event{
		Type: EventState, Time: 123456789, Cookie: 77, Endpoints: Endpoints{NetNS: 4026531840, Family: IPv4, Local: netip.MustParseAddrPort("10.0.0.1:5000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")},
		Old: SynSent, New: Close, Duration: 1500 * time.Millisecond, HasDuration: true,
		Owner: Owner{Task: Task{PID: 100, TID: 101, Comm: CommFrom("curl")}, From: OwnerConnect},
		OnCPU: Task{Comm: CommFrom("swapper/0")}, SkErr: 111, HasCPU: true, CPU: 3,
	}
	if e != want {
		t.Errorf("Decode:\n got %+v\nwant %+v", e, want)
	}
}

func TestDecodeIPv6UnknownOwnerAndDuration(t *testing.T) {
	raw := tcpstateEvent{
		TsNs: 1, Cookie: 2, DurationNs: 999, Pid: 5, Family: afInet6, Sport: 1, Dport: 2,
		Type: uint8(EventState), OldState: uint8(Established), NewState: uint8(CloseWait),
		OwnerSrc: uint8(OwnerConnect), Comm: comm16("ghost"),
	}
	raw.Saddr = netip.MustParseAddr("::1").As16()
	raw.Daddr = netip.MustParseAddr("2001:db8::2").As16()
	var e Event
	if err := Decode(encode(t, raw), &e, 250); err != nil {
		t.Fatal(err)
	}
	if e.HasDuration || e.Duration != 0 {
		t.Errorf("duration without EVF_DURATION: %v %v", e.HasDuration, e.Duration)
	}
	if e.Owner.Known() || e.Owner != (Owner{}) {
		t.Errorf("owner without EVF_OWNER: %+v from %v", e.Owner, e.Owner.From)
	}
	if e.Family != IPv6 || e.Local.String() != "[::1]:1" || e.Remote.String() != "[2001:db8::2]:2" {
		t.Errorf("endpoints: %v %v %v", e.Family, e.Local, e.Remote)
	}
}

// A timewait re-arm of a socket the kernel side did not follow carries
// EVF_UNSEEN, its state, and when the timer ends.
func TestDecodeUnseenRearm(t *testing.T) {
	raw := tcpstateEvent{
		TsNs: 1, Cookie: 2, Family: afInet, Sport: 40000, Dport: 80, Type: uint8(EventTWRearm),
		OldState: uint8(TimeWait), NewState: uint8(TimeWait), Flags: evfUnseen | evfTimewait,
		TimerExpires: 1000 + 15000, Jiffies: 1000,
	}
	var e Event
	if err := Decode(encode(t, raw), &e, 250); err != nil {
		t.Fatal(err)
	}
	if !e.Unseen || !e.Timewait || e.ExpiresIn != 60*time.Second || e.HasDuration || e.DurationMin {
		t.Errorf("unseen %v, timewait %v, ends in %v, duration %v (min %v): want true, true, 1m0s, none", e.Unseen, e.Timewait, e.ExpiresIn, e.HasDuration, e.DurationMin)
	}
	raw.Flags = evfTimewait
	if err := Decode(encode(t, raw), &e, 250); err != nil || e.Unseen {
		t.Errorf("unseen %v without EVF_UNSEEN (%v)", e.Unseen, err)
	}
}

func TestDecodeRejectsBadRecords(t *testing.T) {
	var e Event
	good := encode(t, tcpstateEvent{Type: uint8(EventState), Family: afInet})
	if err := Decode(good[:len(good)-1], &e, 250); err == nil {
		t.Error("short record decoded")
	}
	bad := encode(t, tcpstateEvent{Type: 99, Family: afInet})
	if err := Decode(bad, &e, 250); err == nil {
		t.Error("unknown type decoded")
	}
	bad = encode(t, tcpstateEvent{Type: uint8(EventState), Family: 1})
	if err := Decode(bad, &e, 250); err == nil {
		t.Error("unknown family decoded")
	}
}

func TestClockWall(t *testing.T) {
	c := NewClock()
	now := time.Now()
	got := c.Wall(BootNow())
	if d := got.Sub(now); d < -time.Millisecond || d > 50*time.Millisecond {
		t.Errorf("Wall(BootNow()) is %v away from time.Now()", d)
	}
	if got.Location() != time.UTC {
		t.Errorf("Wall returns %v, want UTC", got.Location())
	}
}

func BenchmarkDecode(b *testing.B) {
	raw := tcpstateEvent{Type: uint8(EventState), Family: afInet6, Flags: evfDuration | evfOwner, Comm: comm16("nginx")}
	rec := encode(b, raw)
	var e Event
	b.ReportAllocs()
	for b.Loop() {
		if err := Decode(rec, &e, 250); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFilterMatch(b *testing.B) {
	e := sampleEvent()
	f := Filter{Ports: []uint16{443, 80}, States: 1<<CloseWait | 1<<FinWait2, Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	b.ReportAllocs()
	for b.Loop() {
		if !f.Match(&e) {
			b.Fatal("no match")
		}
	}
}

// socketOwners names this process for a socket it holds and one a child
// holds, by the sockets' inodes, and nothing for a pipe.
func TestSocketOwners(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lnIno := inode(t, f)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	pipeIno := inode(t, pr)
	// A child holding a socket of its own (a shell's stdin).
	child := exec.Command("sleep", "30")
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cf, err := cc.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	child.Stdin = cf
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	childIno := inode(t, cf)
	cf.Close()
	cc.Close() // (now only the child holds it)

	owners := socketOwners()
	if o, ok := owners.of(lnIno); !ok || o.PID != uint32(os.Getpid()) || o.TID != o.PID || o.Comm == (Comm{}) {
		t.Errorf("the listener (inode %d): %+v, %v; want pid %d", lnIno, o, ok, os.Getpid())
	}
	if o, ok := owners.of(childIno); !ok || o.PID != uint32(child.Process.Pid) || o.Comm != CommFrom("sleep") {
		t.Errorf("the child's socket (inode %d): %+v, %v; want pid %d sleep", childIno, o, ok, child.Process.Pid)
	}
	if o, ok := owners.of(pipeIno); ok {
		t.Errorf("a pipe (inode %d) has an owner: %+v", pipeIno, o)
	}

	// Its allocations do not grow with the sockets (a host has 100,000).
	before := testing.AllocsPerRun(3, func() { socketOwners() })
	for range 500 {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[0])
		defer unix.Close(fds[1])
	}
	if after := testing.AllocsPerRun(3, func() { socketOwners() }); after-before > 200 {
		t.Errorf("socketOwners allocated %.0f times, %.0f with 1,000 more sockets", before, after)
	}
}

// inode is the inode number of the open file f.
func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// The FIN_WAIT2 watch ends a bucket's width plus a margin after the first
// arm: the granularity of the timer-wheel level that holds 60 s at each HZ
// Linux offers (kernel/time/timer.c).
func TestFinWait2SilentLead(t *testing.T) {
	for _, c := range []struct {
		hz   uint32
		gran uint64 // jiffies a bucket of the level that holds 60 s
	}{
		{0, 0},       // unknown: always watched
		{100, 512},   // 6,000 jiffies: level 3
		{250, 512},   // 15,000: level 3
		{300, 512},   // 18,000: level 3
		{1000, 4096}, // 60,000: level 4
	} {
		want := uint64(0)
		if c.hz != 0 {
			want = uint64(60*c.hz) - 2*c.gran
		}
		if got := fw2SilentLead(c.hz); got != want {
			t.Errorf("HZ=%d: lead %d jiffies, want %d", c.hz, got, want)
		}
	}
}

func TestParseJiffies(t *testing.T) {
	const timerList = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 506874685081 nsecs\n\ncpu: 0\n" +
		"  .last_jiffies   : 4295015487\njiffies: 4295018951\n\ncpu: 1\njiffies: 4295018952\n"
	const schedstat = "version 15\ntimestamp 4295123456\ncpu0 0 0 0 0 0 0 1 2 3\n"
	for _, c := range []struct {
		text, prefix string
		want         uint64
		ok           bool
	}{
		{timerList, "jiffies: ", 4295018951, true},
		{schedstat, "timestamp ", 4295123456, true},
		{"", "jiffies: ", 0, false},
		{"jiffies: 12", "jiffies: ", 0, false}, // cut short
		{"jiffies: -1\n", "jiffies: ", 0, false},
		{schedstat, "jiffies: ", 0, false},
	} {
		got, ok := parseJiffies([]byte(c.text), c.prefix)
		if got != c.want || ok != c.ok {
			t.Errorf("parseJiffies(%q, %q) = %d, %v; want %d, %v", c.text, c.prefix, got, ok, c.want, c.ok)
		}
	}
}

func TestMeasuredHZ(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(jiffies uint64, ms int) jiffiesSample {
		return jiffiesSample{jiffies: 1<<32 + jiffies, at: t0.Add(time.Duration(ms) * time.Millisecond), window: 100 * time.Microsecond, ok: true}
	}
	wide := at(0, 0)
	wide.window = 40 * time.Millisecond
	for _, c := range []struct {
		a, b jiffiesSample
		want uint32
	}{
		{at(0, 0), at(37, 150), 250},
		{at(0, 0), at(36, 150), 250}, // a tick off
		{at(0, 0), at(39, 150), 250},
		{at(0, 0), at(45, 150), 300},
		{at(0, 0), at(41, 150), 0}, // between 250's and 300's
		{at(0, 0), at(15, 150), 100},
		{at(0, 0), at(151, 150), 1000},
		{at(0, 0), at(30, 150), 0},     // 200 a second: no kernel of ours
		{wide, at(41, 150), 0},         // a wide window fits both 250 and 300
		{at(0, 0), at(25, 100), 0},     // too close
		{at(0, 0), jiffiesSample{}, 0}, // no second sample
		{at(40, 0), at(0, 150), 0},     // jiffies back: not one clock
	} {
		if got := measuredHZ(c.a, c.b); got != c.want {
			t.Errorf("measuredHZ(%+v, %+v) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

func TestResolveHZ(t *testing.T) {
	for _, c := range []struct {
		config, measured, want uint32
		from                   string
		warn                   bool
	}{
		{250, 250, 250, "the kernel config, and measured", false},
		{250, 0, 250, "the kernel config", false},             // not measured: the config
		{0, 1000, 1000, "measured (no kernel config)", false}, // no config (a container): measured
		{0, 0, 0, "", false},
		{250, 1000, 1000, "measured (the kernel config says 250)", true}, // a config of another build
	} {
		hz, from, warning := resolveHZ(c.config, c.measured)
		if hz != c.want || from != c.from || (warning != "") != c.warn {
			t.Errorf("resolveHZ(%d, %d) = %d, %q, %q; want %d, %q, warning %v", c.config, c.measured, hz, from, warning, c.want, c.from, c.warn)
		}
	}
}

// The running kernel's jiffies, measured, advance at its CONFIG_HZ.
func TestJiffiesRate(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: /proc/timer_list is root's only (and /proc/schedstat only with CONFIG_SCHEDSTATS)")
	}
	config := kernelHZ()
	if config == 0 {
		t.Skip("no kernel config to compare with")
	}
	// A busy machine can slow the reads so much that no sample is taken,
	// or more than one rate fits (measuredHZ says 0, and tcpstate keeps
	// the config): measured again then, and skipped if five never got
	// both reads in time. A rate that fits and is not the config's fails
	// at once.
	var windows []time.Duration
	sampled := false // both reads of a measurement came within their windows
	for range 5 {
		a := sampleJiffies()
		time.Sleep(250 * time.Millisecond)
		b := sampleJiffies()
		got := measuredHZ(a, b) // (0 also when a read never came within its window)
		if got == config {
			return
		}
		if got != 0 {
			t.Fatalf("jiffies advance at %d a second, CONFIG_HZ=%d", got, config)
		}
		sampled = sampled || a.ok && b.ok
		windows = append(windows, a.window, b.window)
	}
	msg := fmt.Sprintf("no rate told apart in 5 measurements (CONFIG_HZ=%d); the samples' windows (0: none within %v): %v", config, maxJiffiesWindow, windows)
	if !sampled {
		// (tcpstate then keeps the config: too busy a machine to
		// measure is no disagreement)
		t.Skip(msg + ": too busy a machine to sample")
	}
	t.Error(msg)
}
