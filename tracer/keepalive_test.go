// SPDX-License-Identifier: Apache-2.0

package tracer_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/internal/testnet"
	"github.com/tcpstate/tcpstate/tracer"
)

// keepaliveClient connects, in ns, a client with its own keepalive settings
// and returns it, the accepted end and the server address.
func keepaliveClient(t *testing.T, ns interface{ Do(testing.TB, func()) }, cfg net.KeepAliveConfig) (net.Conn, net.Conn, netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	var c net.Conn
	ns.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		d := net.Dialer{KeepAliveConfig: cfg}
		if c, err = d.Dial("tcp4", ln.Addr().String()); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { ln.Close(); c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return c, s, netip.MustParseAddrPort(ln.Addr().String())
}

// keepalives returns the client's keepalive events of one kind.
func keepalives(evs []tracer.Event, kind tracer.KeepaliveEvent) []tracer.Event {
	var out []tracer.Event
	for _, e := range evs {
		if e.Type == tracer.EventKeepalive && e.Keepalive.Event == kind {
			out = append(out, e)
		}
	}
	return out
}

// kaTimeline lists a socket's keepalive events with their times from the
// first one, for failure messages.
func kaTimeline(evs []tracer.Event) []string {
	var out []string
	var t0 uint64
	for _, e := range evs {
		if e.Type != tracer.EventKeepalive {
			continue
		}
		if t0 == 0 {
			t0 = e.Time
		}
		out = append(out, fmt.Sprintf("+%v cpu%d %v(probes %d, expires in %v)", time.Duration(e.Time-t0).Round(time.Millisecond), e.CPU,
			e.Keepalive.Event, e.Keepalive.Probes, e.ExpiresIn.Round(time.Millisecond)))
	}
	return out
}

func near(got, want, tol time.Duration) bool { return got >= want-tol && got <= want+tol }

// A peer that stops answering: exactly three probes one interval apart, then
// the kill with its RST and ETIMEDOUT, at the expected times.
func TestKeepaliveDeadPeer(t *testing.T) {
	ns := newNetNS(t)
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	const idle = 2 * time.Second // leaves time to cut the link before the first probe
	_, _, srv := keepaliveClient(t, ns, net.KeepAliveConfig{Enable: true, Idle: idle, Interval: time.Second, Count: 3})
	isClient := func(e *tracer.Event) bool { return e.Remote == srv && e.New == tracer.SynSent }
	// setsockopt(TCP_KEEPIDLE) arms the timer for 2s (interval and count
	// are set right after; they are read when the timer fires).
	var t0 uint64
	eventually(t, "the keepalive timer armed with 2s", func() bool {
		for _, e := range keepalives(r.col.socketAll(isClient), tracer.KeepaliveArmed) {
			// (a jiffy may pass between arming and the tracer's read)
			if e.Keepalive.Idle == idle && e.ExpiresIn > idle-50*time.Millisecond && e.ExpiresIn <= idle {
				t0 = e.Time
				return true
			}
		}
		return false
	})
	ns.LoopbackDown(t) // from now on nothing answers

	deadline := time.Now().Add(8 * time.Second)
	for len(keepalives(r.col.socketAll(isClient), tracer.KeepaliveTimeout)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no keepalive kill: %v", transitions(r.col.socketAll(isClient)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	evs := r.col.socketAll(isClient)
	probes := keepalives(evs, tracer.KeepaliveProbe)
	if len(probes) != 3 {
		t.Fatalf("%d probes, want exactly 3: %v", len(probes), transitions(evs))
	}
	const tol = 150 * time.Millisecond
	for i, p := range probes {
		at := time.Duration(p.Time - t0)
		if want := idle + time.Duration(i)*time.Second; int(p.Keepalive.Probes) != i+1 || !near(at, want, tol) {
			t.Errorf("probe %d: number %d at +%v, want number %d at +%v", i, p.Keepalive.Probes, at, i+1, want)
		}
		k := p.Keepalive
		if !k.On || !k.IdleFromSocket || !k.IntvlFromSocket || !k.CountFromSocket {
			t.Errorf("probe %d: settings %+v, want on and all from the socket", i, k)
		}
	}
	kill := keepalives(evs, tracer.KeepaliveTimeout)[0]
	// The kill names its socket fully (the kernel has released the port by
	// then), and its owner, so that --lport, --pid and --comm keep it.
	if states := slices.DeleteFunc(slices.Clone(evs), func(e tracer.Event) bool { return e.Type != tracer.EventState }); len(states) > 1 {
		if kill.Local != states[1].Local || !kill.Owner.Known() || kill.Owner.PID != uint32(os.Getpid()) {
			t.Errorf("kill from %v owned by %d (known %v), want %v owned by %d", kill.Local, kill.Owner.PID, kill.Owner.Known(), states[1].Local, os.Getpid())
		}
	}
	if at := time.Duration(kill.Time - t0); !near(at, idle+3*time.Second, tol) {
		t.Errorf("killed at +%v, want +%v (idle, then 3 probes 1s apart)", at, idle+3*time.Second)
	}
	if kill.SkErr != 110 || kill.Reason != tracer.ReasonTimeout || (kill.RstReason == 0) == r.has("reset reasons") {
		t.Errorf("kill: sk_err %d reason %v rst %d, want ETIMEDOUT, timeout, a reset reason where the kernel has them (%v)",
			kill.SkErr, kill.Reason, kill.RstReason, r.has("reset reasons"))
	}
	states := slices.DeleteFunc(evs, func(e tracer.Event) bool { return e.Type != tracer.EventState })
	assertSequence(t, "client", states, "CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE")
	assertReason(t, "client", states, tracer.ReasonTimeout)
	assertOwner(t, "client", states, os.Getpid())
}

// A live peer answers each probe; the probes come every keepalive_time.
func TestKeepaliveLivePeer(t *testing.T) {
	ns := newNetNS(t)
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	const idle = 2 * time.Second
	_, _, srv := keepaliveClient(t, ns, net.KeepAliveConfig{Enable: true, Idle: idle, Interval: time.Second, Count: 3})
	isClient := func(e *tracer.Event) bool { return e.Remote == srv && e.New == tracer.SynSent }
	// Probes at about 2, 4 and 6 s (each fire may be a few jiffies late).
	// Under load on a virtual machine, now and then one run of the timer
	// (its fire, probe, answer and re-arm) passes without the kernel's timer
	// tracepoints: bpftrace on timer:timer_expire_entry misses it as tcpstate
	// does, and only the next fire's re-arm (for the rest of the idle time
	// since the answer) shows that it happened. The two probes seen around
	// it are then two keepalive_times apart; the deadline leaves room for one.
	deadline := time.Now().Add(11 * time.Second)
	for len(keepalives(r.col.socketAll(isClient), tracer.KeepaliveProbe)) < 3 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	evs := r.col.socketAll(isClient)
	probes := keepalives(evs, tracer.KeepaliveProbe)
	answered := keepalives(evs, tracer.KeepaliveAnswered)
	if len(probes) != 3 {
		t.Fatalf("%d probes, want 3 (at 2, 4, 6s): %v", len(probes), transitions(evs))
	}
	apart := 0 // gaps of one keepalive_time
	for i := 1; i < len(probes); i++ {
		gap := time.Duration(probes[i].Time - probes[i-1].Time)
		switch {
		case near(gap, idle, 100*time.Millisecond):
			apart++
		case near(gap, 2*idle, 100*time.Millisecond): // (a run unreported, above)
		default:
			t.Errorf("probes %d and %d are %v apart, want keepalive_time 2s: %q", i-1, i, gap, kaTimeline(evs))
		}
		if probes[i].Keepalive.Probes != 1 {
			t.Errorf("probe %d is number %d: the answer should have reset the count", i, probes[i].Keepalive.Probes)
		}
	}
	if apart == 0 {
		t.Errorf("no two probes keepalive_time 2s apart: %q", kaTimeline(evs))
	}
	if len(answered) < 2 {
		t.Errorf("%d answers seen, want one per probe before the last", len(answered))
	}
	if n := len(keepalives(evs, tracer.KeepaliveTimeout)); n != 0 {
		t.Errorf("%d kills of a live connection", n)
	}
}

// BenchmarkHookCost measures, in the kernel, what each hook costs per run
// under loopback connection churn with idle keepalive sockets open: the timer
// hooks run for every timer in the system and must leave at once unless it is
// a keepalive or timewait timer. Reports ns/run per hook and runs per
// connection, with no filter ("all") and with filters that exclude every
// connection: by port ("filtered": the work done for what is not asked
// about), by namespace ("other-netns": none is followed).
func BenchmarkHookCost(b *testing.B) {
	requireRoot(b)
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Skipf("kernel BPF statistics unavailable: %v", err)
	}
	defer stats.Close()
	b.Run("all", func(b *testing.B) { benchmarkHookCost(b, tracer.Filter{}) })
	b.Run("filtered", func(b *testing.B) { benchmarkHookCost(b, tracer.Filter{RPorts: []uint16{1}}) })
	b.Run("other-netns", func(b *testing.B) { benchmarkHookCost(b, tracer.Filter{NetNS: 1}) })
}

func benchmarkHookCost(b *testing.B, f tracer.Filter) {
	tr, err := tracer.New(tracer.Config{Filter: f})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, &collector{discard: true}) }()
	defer func() { cancel(); <-done }()

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	// Idle keepalive sockets: their timers are armed and fire meanwhile.
	for range 200 {
		d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 5}}
		c, err := d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
	}
	before, err := tr.HookCosts()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.StopTimer()
	after, err := tr.HookCosts()
	if err != nil {
		b.Fatal(err)
	}
	for name, a := range after {
		d := tracer.HookCost{Runs: a.Runs - before[name].Runs, Runtime: a.Runtime - before[name].Runtime}
		if d.Runs == 0 {
			continue
		}
		b.ReportMetric(float64(d.PerRun().Nanoseconds()), name+"-ns/run")
		b.ReportMetric(float64(d.Runs)/float64(b.N), name+"-runs/conn")
	}
}

// A keepalive kill of a socket older than the tracer: the kernel side never
// saw its owner, the walk found it in /proc. The timeout event, which follows
// the CLOSE, still names it, so that --pid and --comm keep it.
func TestKeepaliveKillOfOlderSocketNamed(t *testing.T) {
	ns := newNetNS(t)
	// Keepalive on, not due for an hour: made due once the tracer is
	// attached, however long it takes to start (7 s emulated).
	c, _, srv := keepaliveClient(t, ns, net.KeepAliveConfig{Enable: true, Idle: time.Hour, Interval: time.Second, Count: 1})
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	ns.LoopbackDown(t)
	// TCP_KEEPIDLE re-arms the timer for what is left of the new idle
	// time: it fires at once (idle since the connect), a probe goes
	// nowhere, and the next fire a second later kills.
	if err := c.(*net.TCPConn).SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 1}); err != nil {
		t.Fatal(err)
	}
	due := time.Now()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	isClient := func(e *tracer.Event) bool { return e.Local == local && e.Remote == srv }
	var kill tracer.Event
	for deadline := due.Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if k := keepalives(r.col.socketAll(isClient), tracer.KeepaliveTimeout); len(k) > 0 {
			kill = k[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no keepalive kill: %v", transitions(r.col.socketAll(isClient)))
		}
	}
	if !kill.Owner.Known() || kill.Owner.PID != uint32(os.Getpid()) || kill.Owner.From != tracer.OwnerProc {
		t.Errorf("kill owned by %d (%v), want %d from the walk", kill.Owner.PID, kill.Owner.From, os.Getpid())
	}
}

// The keepalive timer's work is done only for the sockets the endpoint
// filters want: another socket's fires are not sent, and its probe count
// is not kept (in an LRU, where a host's other sockets would take the place
// of those asked about).
func TestKeepaliveOfFilteredSocketsNotKept(t *testing.T) {
	ns := newNetNS(t)
	wanted, other := ns.Listen(t, "tcp4", "127.0.0.1:0"), ns.Listen(t, "tcp4", "127.0.0.1:0")
	port := parseAddrPort(wanted.Addr().String()).Port()
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode, RPorts: []uint16{port}}}, nil)
	cfg := net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 5}
	var dialed time.Time
	for _, ln := range []net.Listener{wanted, other} {
		dialed = time.Now()
		ns.Do(t, func() {
			c, err := (&net.Dialer{KeepAliveConfig: cfg}).Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		})
		s, err := ln.Accept() // (Go's 15 s keepalive: not due in this test)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
	}
	isClient := func(e *tracer.Event) bool { return e.Remote.Port() == port && e.New == tracer.SynSent }
	// Fires at about 1 and 2 s (the peer answers each probe).
	eventually(t, "two fires of the wanted client's keepalive", func() bool {
		return len(keepalives(r.col.socketAll(isClient), tracer.KeepaliveFired)) >= 2
	})
	// and the other's first fire, at about 1 s (which the last kernel side
	// kept): not to pass for want of it
	time.Sleep(time.Until(dialed.Add(2500 * time.Millisecond)))
	cookie := r.col.socketAll(isClient)[0].Cookie
	kept, err := r.tr.KeepaliveProbesKept()
	if err != nil {
		t.Fatal(err)
	}
	if len(kept) != 1 || kept[0] != cookie {
		t.Errorf("probe counts kept for %x, want only the wanted client's (%x)", kept, cookie)
	}
	for _, e := range r.col.socketAll(func(e *tracer.Event) bool { return e.Type == tracer.EventKeepalive }) {
		if e.Remote.Port() != port {
			t.Errorf("a keepalive event of a socket the filter excludes: %v %v -> %v", e.Keepalive.Event, e.Local, e.Remote)
		}
	}
}

// finWait2Arms returns the keepalive timer's arms in FIN_WAIT2 (the FIN_WAIT2
// timer) among the events of the sockets with local port port.
func finWait2Arms(c *collector, port uint16) []tracer.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []tracer.Event
	for _, e := range c.events {
		if e.Local.Port() == port && e.Type == tracer.EventKeepalive &&
			e.Keepalive.Event == tracer.KeepaliveArmed && e.New == tracer.FinWait2 {
			out = append(out, e)
		}
	}
	return out
}

// An orphan's FIN_WAIT2 timer is sent when it stands, and not when the kernel
// replaces it while handling the same segment. A client that closes as soon
// as it reads the server's FIN acks that FIN with its own: the server's
// kernel arms the FIN_WAIT2 timer, then at once moves the socket to TIME_WAIT.
// With tcp_fin_timeout or the socket's TCP_LINGER2 above TCP_TIMEWAIT_LEN (60
// s) and a client that never closes, the timer stands, armed for the excess.
func TestFinWait2TimerSentWhenItStands(t *testing.T) {
	t.Run("replaced", func(t *testing.T) {
		ns := newNetNS(t)
		r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
		ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
		port := parseAddrPort(ln.Addr().String()).Port()
		const conns = 20
		// When each server socket's close() ran (CLOCK_BOOTTIME), by client.
		closing := map[netip.AddrPort][2]uint64{}
		for range conns {
			c := ns.Dial(t, "tcp4", ln.Addr().String())
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			began := tracer.BootNow()
			s.Close()
			closing[parseAddrPort(c.LocalAddr().String())] = [2]uint64{began, tracer.BootNow()}
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("client read %v, want EOF", err)
			}
			c.Close()
		}
		// Every server socket goes FIN_WAIT2 -> TIME_WAIT.
		timewaits := func() int {
			r.col.mu.Lock()
			defer r.col.mu.Unlock()
			n := 0
			for _, e := range r.col.events {
				if e.Local.Port() == port && e.Type == tracer.EventState && e.Old == tracer.FinWait2 && e.New == tracer.TimeWait {
					n++
				}
			}
			return n
		}
		eventually(t, "every server socket in TIME_WAIT", func() bool { return timewaits() == conns })
		time.Sleep(100 * time.Millisecond)
		// A client ACK that came alone, while close() still owned the server
		// socket, armed the timer in tcp_close()'s backlog drain: that arm is
		// sent (it cannot be told from one that stands), and the socket then
		// went to its timewait socket in FIN_WAIT2 (a handover). Only the
		// others took the FIN with their ACK, after close() returned.
		r.col.mu.Lock()
		handedOver := map[uint64]bool{}
		for _, e := range r.col.events {
			if e.Local.Port() == port && e.Type == tracer.EventTWHandover && e.New == tracer.FinWait2 {
				handedOver[e.Cookie] = true
			}
		}
		r.col.mu.Unlock()
		if len(handedOver) == conns {
			t.Fatalf("no server socket took the client's FIN with its ACK: nothing to check")
		}
		for _, e := range finWait2Arms(r.col, port) {
			w, ok := closing[e.Remote]
			if ok && e.Time >= w[0] && e.Time <= w[1] {
				continue // armed while close() owned the socket: sent by design
			}
			client := e.Remote
			t.Errorf("server socket of client %v sent a FIN_WAIT2 timer arm (for %v) that TIME_WAIT replaced at once, "+
				"%v after its close() began (close() took %v; handed over in FIN_WAIT2: %v); its events: %v",
				client, e.ExpiresIn, time.Duration(int64(e.Time)-int64(w[0])), time.Duration(w[1]-w[0]), handedOver[e.Cookie],
				transitions(r.col.socketAll(func(e *tracer.Event) bool { return e.Local.Port() == port && e.Remote == client })))
		}
	})
	// The arm stands, for the excess over 60 s: both ways to ask for 90 s.
	stands := func(t *testing.T, ns *testnet.NetNS, linger2 int) {
		r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
		ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
		port := parseAddrPort(ln.Addr().String()).Port()
		// Open to the end: the server's FIN_WAIT2 is never answered.
		ns.Dial(t, "tcp4", ln.Addr().String())
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if linger2 != 0 {
			setsockoptInt(t, s, unix.IPPROTO_TCP, unix.TCP_LINGER2, linger2)
		}
		s.Close()
		var arms []tracer.Event
		eventually(t, "the server's FIN_WAIT2 timer armed", func() bool {
			arms = finWait2Arms(r.col, port)
			return len(arms) > 0
		})
		// (a jiffy or a stalled virtual CPU may pass between arming and the
		// tracer's read)
		if e := arms[0]; e.ExpiresIn < 29*time.Second || e.ExpiresIn > 30*time.Second {
			t.Errorf("FIN_WAIT2 timer armed for %v, want 30s", e.ExpiresIn)
		}
	}
	t.Run("stands, tcp_fin_timeout", func(t *testing.T) {
		stands(t, newNetNS(t, "net.ipv4.tcp_fin_timeout=90"), 0)
	})
	t.Run("stands, TCP_LINGER2", func(t *testing.T) {
		stands(t, newNetNS(t), 90)
	})
}

// With tcp_fin_timeout above TCP_TIMEWAIT_LEN, an orphan's FIN_WAIT2 timer
// (armed for the excess, 2 s here) fires and hands the connection to a
// timewait socket in FIN_WAIT2 for the excess again: the full socket reaches
// CLOSE inside its keepalive timer, with no reset sent. That is no keepalive
// kill: no timeout event, and the connection ends once, FIN_WAIT2 -> CLOSE
// (fin_timeout), twice the excess after FIN_WAIT2 began (the kernel's own
// arithmetic: tcp_keepalive_timer() gives the timewait socket
// tcp_fin_time() - TCP_TIMEWAIT_LEN again).
func TestFinWait2TimerAboveTimewaitLenIsNoKill(t *testing.T) {
	const excess = 2 * time.Second
	ns := newNetNS(t, "net.ipv4.tcp_fin_timeout=62")
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	srv := parseAddrPort(ln.Addr().String())
	conn := ns.Dial(t, "tcp4", ln.Addr().String())
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close() // open to the end: the client's FIN_WAIT2 is never answered
	conn.Close()

	isClient := func(e *tracer.Event) bool { return e.Remote == srv && e.New == tracer.SynSent }
	deadline := time.Now().Add(2*excess + 3*time.Second)
	for {
		evs := r.col.socket(isClient)
		if len(evs) > 0 && evs[len(evs)-1].New == tracer.Close {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no end of FIN_WAIT2: %v", transitions(r.col.socketAll(isClient)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // (anything sent after the end)
	all := r.col.socketAll(isClient)
	evs := r.col.socket(isClient)
	assertSequence(t, "client", evs, "CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1",
		"FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE(tw)")
	assertReason(t, "client", evs, tracer.ReasonFinTimeout)
	if d := evs[len(evs)-1].Duration; d < 2*excess-2*timerJiffies || d > 2*excess+2*excess/8+2*timerJiffies {
		t.Errorf("FIN_WAIT2 lasted %v, want twice the excess, %v", d, 2*excess)
	}
	arms := slices.DeleteFunc(keepalives(all, tracer.KeepaliveArmed), func(e tracer.Event) bool { return e.New != tracer.FinWait2 })
	if len(arms) != 1 || !near(arms[0].ExpiresIn, excess, time.Second) {
		t.Errorf("FIN_WAIT2 timer arms %v, want one for %v", kaTimeline(all), excess)
	}
	if kills := keepalives(all, tracer.KeepaliveTimeout); len(kills) > 0 {
		t.Errorf("a keepalive timeout reported for a FIN_WAIT2 timer that handed the connection to a timewait socket: %v",
			kaTimeline(all))
	}
	for _, e := range all {
		if e.Type == tracer.EventReset {
			t.Errorf("a reset reported, none sent: %+v", e)
		}
	}
}

// setsockoptInt sets an integer socket option on c.
func setsockoptInt(t *testing.T, c net.Conn, level, opt, v int) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("setsockopt %d/%d = %d: %v", level, opt, v, serr)
	}
}

// A FIN_WAIT2 its owner still holds (shut down, not closed) runs keepalive
// as any other state: a dead peer kills it, and that kill is reported, unlike
// an orphan's FIN_WAIT2 timeout (TestFinWait2TimerAboveTimewaitLenIsNoKill).
func TestKeepaliveKillInHeldFinWait2(t *testing.T) {
	ns := newNetNS(t)
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	const idle = 2 * time.Second
	c, _, srv := keepaliveClient(t, ns, net.KeepAliveConfig{Enable: true, Idle: idle, Interval: time.Second, Count: 2})
	isClient := func(e *tracer.Event) bool { return e.Remote == srv && e.New == tracer.SynSent }
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the client in FIN_WAIT2", func() bool {
		evs := r.col.socket(isClient)
		return len(evs) > 0 && evs[len(evs)-1].New == tracer.FinWait2
	})
	ns.LoopbackDown(t) // from now on nothing answers
	deadline := time.Now().Add(10 * time.Second)
	for len(keepalives(r.col.socketAll(isClient), tracer.KeepaliveTimeout)) == 0 {
		if time.Now().After(deadline) {
			all := r.col.socketAll(isClient)
			t.Fatalf("no keepalive kill of the held FIN_WAIT2: %v %v", transitions(all), kaTimeline(all))
		}
		time.Sleep(50 * time.Millisecond)
	}
	all := r.col.socketAll(isClient)
	if n := len(keepalives(all, tracer.KeepaliveFinWait2)); n > 0 {
		t.Errorf("%d keepalive fires of a held FIN_WAIT2 reported as its FIN_WAIT2 timeout: %v", n, kaTimeline(all))
	}
	if kill := keepalives(all, tracer.KeepaliveTimeout)[0]; kill.SkErr != 110 {
		t.Errorf("kill: sk_err %d, want ETIMEDOUT", kill.SkErr)
	}
}
