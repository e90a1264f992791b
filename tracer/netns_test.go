// SPDX-License-Identifier: Apache-2.0

package tracer_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/internal/testnet"
	"github.com/tcpstate/tcpstate/tracer"
)

func newNetNS(t *testing.T, sysctls ...string) *testnet.NetNS {
	requireRoot(t)
	return testnet.New(t, sysctls...)
}

// dialFrom connects to dst from a fixed local port, with SO_REUSEADDR so that
// the port can be taken again while its last connection is in TIME_WAIT.
func dialFrom(t *testing.T, local, dst string) net.Conn {
	t.Helper()
	d := net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(parseAddrPort(local)),
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	c, err := d.Dial("tcp4", dst)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// timewaitPair makes, in ns, a connection whose client (this process) closes
// first and whose server closes after serverDelay: the client ends in TIME_WAIT.
// serverClosed is CLOCK_BOOTTIME after the server's close() returned.
func timewaitPair(t *testing.T, ns *testnet.NetNS, clientPort string, serverDelay time.Duration) (client, server string, serverClosed uint64) {
	t.Helper()
	var ln net.Listener
	var conn, srvConn net.Conn
	ns.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		conn = dialFrom(t, "127.0.0.1:"+clientPort, ln.Addr().String())
	})
	t.Cleanup(func() { ln.Close() })
	srvConn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	client, server = conn.LocalAddr().String(), ln.Addr().String()
	conn.Close()
	time.Sleep(serverDelay)
	srvConn.Close()
	return client, server, tracer.BootNow()
}

func parseAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// serverClosesFirst connects to ln from inside ns and closes the accepted end
// at once: the server goes FIN_WAIT1, then FIN_WAIT2 in a timewait socket,
// until the client closes the end it returns.
func serverClosesFirst(t *testing.T, ns *testnet.NetNS, ln net.Listener) net.Conn {
	t.Helper()
	c := ns.Dial(t, "tcp4", ln.Addr().String())
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	return c
}

// The active closer's TIME_WAIT, followed in its timewait socket with its
// owner, ended early when a new connection reuses the 4-tuple.
func TestTimeWaitKilledByReuse(t *testing.T) { timeWaitKilledByReuse(t, false) }

// The same when the kernel side no longer follows the timewait socket (as if
// evicted): its timer's removal with no re-arm after it is a kill still, and
// the table knows how long TIME_WAIT lasted.
func TestUnfollowedTimeWaitKilledByReuse(t *testing.T) { timeWaitKilledByReuse(t, true) }

func timeWaitKilledByReuse(t *testing.T, forget bool) {
	ns := newNetNS(t, "net.ipv4.tcp_tw_reuse=1")
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	const hold = 1200 * time.Millisecond // tw_reuse wants the last timestamp over a second old
	const delay = 100 * time.Millisecond
	if forget && !r.has("cookies") {
		t.Skip("no socket cookies from tracing programs (Linux 5.12): a timewait socket the kernel side no longer follows is known by its address, not its connection")
	}
	clientAddr, serverAddr, serverClosed := timewaitPair(t, ns, "40001", delay)
	if forget {
		time.Sleep(100 * time.Millisecond) // (the server's FIN and the re-arm for TIME_WAIT are in)
		if n, err := r.tr.ForgetTimewaits(); err != nil || n == 0 {
			t.Fatalf("forgetting the timewait sockets followed: %d forgotten (%v)", n, err)
		}
	}
	time.Sleep(hold)
	var again net.Conn
	ns.Do(t, func() { again = dialFrom(t, clientAddr, serverAddr) })
	defer again.Close()
	reused := tracer.BootNow()

	cl := parseAddrPort(clientAddr)
	first := func(e *tracer.Event) bool { return e.Local == cl && e.New == tracer.SynSent }
	eventually(t, "the first connection's TIME_WAIT killed", func() bool {
		evs := r.col.socket(first)
		return len(evs) > 0 && evs[len(evs)-1].Reason == tracer.ReasonTWKilled
	})
	evs := r.col.socket(first)
	assertSequence(t, "client", evs, "CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1",
		"FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->TIME_WAIT(tw)", "TIME_WAIT->CLOSE(tw)")
	assertOwner(t, "client", evs, os.Getpid())
	assertDurations(t, "client", evs[:5])
	if len(evs) != 6 {
		return
	}
	// FIN_WAIT2 lasted until the server's FIN; TIME_WAIT until the reuse.
	// (Either end may be dated from the timewait timer: a jiffy either way.)
	checkSpan(t, "FIN_WAIT2", evs[4].Duration, delay-timerJiffies, time.Duration(serverClosed-evs[3].Time)+timerJiffies)
	checkSpan(t, "TIME_WAIT before the reuse", evs[5].Duration, hold-timerJiffies, time.Duration(reused-evs[4].Time)+timerJiffies)
	if evs[5].NetNS != ns.Inode {
		t.Errorf("netns %d, want the test's %d", evs[5].NetNS, ns.Inode)
	}
	if !forget {
		checkTurnOnCPU(t, evs[4])
	}
}

// checkTurnOnCPU checks the task on the CPU of a timewait FIN_WAIT2 turned
// TIME_WAIT by the peer's FIN. The kernel re-arms the timer for TIME_WAIT, and
// the turn is sent then, with 60 s on the timer and the task that handled the
// FIN. Or, when the new expiry falls in the old one's timer-wheel bucket
// (most times: the buckets 60 s ahead are 2 s wide or more), it only rewrites
// the expiry: no tracepoint fires, and the turn is found later, by tcpstate's
// walk of such sockets or at the timer's next event (the kill). It is dated
// from the expiry, and has less than 60 s left when sent, but the task on the
// CPU then did not do it: none is given. (The walk runs in this process, as
// does the FIN's sender: only the time left tells the two apart.)
func checkTurnOnCPU(t *testing.T, turn tracer.Event) {
	t.Helper()
	late := tracer.TimewaitLen - turn.ExpiresIn // how long after the turn it was sent
	switch {
	case late < 0:
		t.Errorf("FIN_WAIT2->TIME_WAIT sent with %v on its timer, over TCP_TIMEWAIT_LEN", turn.ExpiresIn)
	case late == 0 && turn.OnCPU.Comm.String() == "":
		t.Errorf("FIN_WAIT2->TIME_WAIT sent at the re-arm (60s left): no task on the CPU, want the one that handled the FIN")
	case late > 0 && (turn.OnCPU.PID != 0 || turn.OnCPU.Comm.String() != ""):
		t.Errorf("FIN_WAIT2->TIME_WAIT found %v after it happened: task on the CPU %d %q, want none (not the one that did it)",
			late, turn.OnCPU.PID, turn.OnCPU.Comm)
	}
	t.Logf("FIN_WAIT2->TIME_WAIT sent %v after it happened, task on the CPU %d %q", late, turn.OnCPU.PID, turn.OnCPU.Comm)
}

// An orphaned FIN_WAIT2 (closed by its owner, the peer never closes) lasts
// tcp_fin_timeout, in a timewait socket: set to 2 s in the test's namespace.
func TestOrphanedFinWait2LastsFinTimeout(t *testing.T) {
	const finTimeout = 2 * time.Second
	ns := newNetNS(t, "net.ipv4.tcp_fin_timeout=2")
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	var ln net.Listener
	var conn net.Conn
	ns.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if conn, err = net.Dial("tcp4", ln.Addr().String()); err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close() // never closed before the end: the client's FIN_WAIT2 is never answered
	srv := parseAddrPort(ln.Addr().String())
	conn.Close()

	isClient := func(e *tracer.Event) bool { return e.Remote == srv && e.New == tracer.SynSent }
	deadline := time.Now().Add(finTimeout + 3*time.Second)
	for {
		evs := r.col.socket(isClient)
		if len(evs) > 0 && evs[len(evs)-1].New == tracer.Close {
			break
		}
		if time.Now().After(deadline) {
			st, _ := r.tr.Stats()
			t.Fatalf("no end of FIN_WAIT2: %v (all events: %v; %v, %d timewait untracked)",
				transitions(evs), transitions(r.col.socketAll(isClient)), st, st.TimewaitUntracked)
		}
		time.Sleep(50 * time.Millisecond)
	}
	evs := r.col.socket(isClient)
	assertSequence(t, "client", evs, "CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1",
		"FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE(tw)")
	assertOwner(t, "client", evs, os.Getpid())
	assertReason(t, "client", evs, tracer.ReasonFinTimeout)
	last := evs[len(evs)-1]
	// The timer counts whole jiffies from the one FIN_WAIT2 began in (up to
	// a jiffy short), and the wheel may fire it late by an eighth of the delay.
	if d := last.Duration; d < finTimeout-timerJiffies || d > finTimeout+finTimeout/8+timerJiffies {
		t.Errorf("FIN_WAIT2 lasted %v, want tcp_fin_timeout %v (-%v, +12.5%% timer slack)", d, finTimeout, timerJiffies)
	} else {
		t.Logf("orphaned FIN_WAIT2 lasted %v with tcp_fin_timeout=%v", d, finTimeout)
	}
}

// A timewait socket the filters want that ends unfollowed (here: forgotten,
// as if evicted) is counted; one the filters leave out is not, however many
// the host has.
func TestTimewaitUntrackedOnlyWanted(t *testing.T) {
	ns := newNetNS(t, "net.ipv4.tcp_fin_timeout=2")
	other := newNetNS(t, "net.ipv4.tcp_fin_timeout=2")
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	var peers []net.Conn
	orphan := func(n *testnet.NetNS) netip.AddrPort { // an orphaned FIN_WAIT2: ends after tcp_fin_timeout
		ln := n.Listen(t, "tcp4", "127.0.0.1:0")
		c := n.Dial(t, "tcp4", ln.Addr().String())
		p, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, p) // never closed before the end
		c.Close()
		return parseAddrPort(c.LocalAddr().String())
	}
	defer func() {
		for _, p := range peers {
			p.Close()
		}
	}()
	for range 3 {
		orphan(other)
	}
	// The client's FIN_WAIT2 in a timewait socket, followed. Not when its
	// FIN's ACK came while close() still held the socket (likelier under
	// emulation): the kernel then keeps the full socket, resets it at
	// tcp_fin_timeout, and no timewait timer runs. Another client then.
	for try := 1; ; try++ {
		cl := orphan(ns)
		eventually(t, "the client's FIN_WAIT2", func() bool {
			return len(r.col.socket(func(e *tracer.Event) bool { return e.Local == cl && e.New == tracer.FinWait2 })) > 0
		})
		followed := func() bool {
			n, err := r.tr.TimewaitFollowed()
			return err == nil && n > 0
		}
		for end := time.Now().Add(time.Second); !followed() && time.Now().Before(end); {
			time.Sleep(10 * time.Millisecond)
		}
		if followed() {
			break
		}
		if try == 5 {
			t.Fatalf("none of %d clients' FIN_WAIT2 followed in a timewait socket", try)
		}
		t.Logf("client %v: FIN_WAIT2 kept in the full socket: another", cl)
	}
	if n, err := r.tr.ForgetTimewaits(); err != nil || n == 0 {
		t.Fatalf("forgot %d timewait sockets (%v), want the client's at least (and those the walk found)", n, err)
	}
	// (By the count: without socket cookies, Linux 5.10, the end of a
	// forgotten timewait socket is not joined to its connection.)
	eventually(t, "the client's FIN_WAIT2 to end unfollowed (tcp_fin_timeout 2s)", func() bool {
		st, err := r.tr.Stats()
		return err == nil && st.TimewaitUntracked > 0
	})
	time.Sleep(500 * time.Millisecond) // (the other namespace's three end with it, give or take a bucket)
	st, err := r.tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.TimewaitUntracked != 1 {
		t.Errorf("%d timewait sockets ended unfollowed, want 1: the filtered namespace's 3 are not tcpstate's to follow", st.TimewaitUntracked)
	}
}

// TIME_WAIT runs its fixed 60 s and the tracer reports its end. Slow: runs in
// parallel with the rest.
func TestTimeWaitExpires(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 60 s for TIME_WAIT to end; not with -short")
	}
	t.Parallel()
	ns := newNetNS(t)
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	clientAddr, _, _ := timewaitPair(t, ns, "40002", 100*time.Millisecond)
	cl := parseAddrPort(clientAddr)
	isClient := func(e *tracer.Event) bool { return e.Local == cl && e.New == tracer.SynSent }
	deadline := time.Now().Add(65 * time.Second)
	for {
		evs := r.col.socket(isClient)
		if len(evs) > 0 && evs[len(evs)-1].New == tracer.Close {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TIME_WAIT did not end: %v", transitions(evs))
		}
		time.Sleep(200 * time.Millisecond)
	}
	evs := r.col.socket(isClient)
	assertSequence(t, "client", evs, "CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1",
		"FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->TIME_WAIT(tw)", "TIME_WAIT->CLOSE(tw)")
	assertOwner(t, "client", evs, os.Getpid())
	assertReason(t, "client", evs, tracer.ReasonTWExpired)
	if last := evs[len(evs)-1]; !last.HasDuration || last.Duration < 60*time.Second || last.Duration > 60*time.Second+60*time.Second/8 {
		st, _ := r.tr.Stats()
		t.Errorf("TIME_WAIT lasted %v (known: %v), want 60s (+12.5%% timer slack); events %+v; %d timewait untracked",
			last.Duration, last.HasDuration, evs, st.TimewaitUntracked)
	} else {
		t.Logf("TIME_WAIT lasted %v", last.Duration)
	}
}

// The server closes first and the client some time later, the commonest
// pattern there is: the server's timewait socket turns from FIN_WAIT2 to
// TIME_WAIT when the client's FIN arrives, often without a tracepoint (the
// kernel rewrites the timer's expiry in place). Every one must be reported
// within 200 ms of the FIN (the walk of FIN_WAIT2 timewait sockets runs every
// 100 ms), dated to the FIN (two jiffies), for any delay.
// A states filter that wants CLOSE but not TIME_WAIT still gets the timewait
// re-arms (never shown): without them the cancel before each re-arm, a move
// to CLOSE, reads as a kill. The re-arm here: a timewait socket's FIN_WAIT2
// turning TIME_WAIT seconds after it began moves its timer to another
// timer-wheel bucket (at HZ 250 the 60 s level's buckets are 2 s wide).
func TestStatesFilterKeepsTimewaitRearms(t *testing.T) {
	ns := newNetNS(t)
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode, States: 1 << tracer.Close}}, nil)
	raw := startRaw(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil) // to see the re-arms
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	srv := parseAddrPort(ln.Addr().String())
	var clients []net.Conn
	for range 3 {
		clients = append(clients, serverClosesFirst(t, ns, ln))
	}
	time.Sleep(4500 * time.Millisecond) // past two 2 s buckets, whatever the phase
	for _, c := range clients {
		c.Close() // the client's FIN: the server's timer is re-armed for TIME_WAIT
	}
	// The client's own closes pass the filter and come through the same
	// queue: once they are all out, a kill would be out too.
	eventually(t, "the clients' LAST_ACK->CLOSE", func() bool {
		n := 0
		for _, c := range clients {
			cl := parseAddrPort(c.LocalAddr().String())
			if evs := r.col.socket(func(e *tracer.Event) bool { return e.Local == cl && e.New == tracer.Close }); len(evs) > 0 {
				n++
			}
		}
		return n == len(clients)
	})
	time.Sleep(300 * time.Millisecond) // past pieceWindow, for a cancel nothing settled
	if _, _, ok := raw.col.first(func(e *tracer.Event) bool { return e.Local == srv && e.Type == tracer.EventTWRearm }); !ok {
		t.Fatal("no timewait re-arm of the server's sockets: the test proves nothing")
	}
	r.col.mu.Lock()
	defer r.col.mu.Unlock()
	for _, e := range r.col.events {
		if e.Local == srv && e.Reason == tracer.ReasonTWKilled {
			t.Errorf("the server's re-armed TIME_WAIT reported killed: %v -> %v %v", e.Local, e.Remote, e.Reason)
		}
	}
}

// A timewait socket the kernel side no longer follows (evicted from its
// bounded table; the same holds for one older than the tracer, or whose first
// arm went unreported) turns TIME_WAIT when its peer's FIN comes, and the
// kernel moves its timer: a removal, then a start. That is no kill: the
// connection goes FIN_WAIT2 -> TIME_WAIT, timed from the FIN_WAIT2 the
// timeline saw begin. tcp_fin_timeout is 3 s in the namespace, so that the
// FIN_WAIT2 expiry and TIME_WAIT's 60 s fall in different timer buckets (the
// kernel then re-arms; else it rewrites the expiry in place).
func TestTimewaitRearmUnfollowed(t *testing.T) {
	ns := newNetNS(t, "net.ipv4.tcp_fin_timeout=3")
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	if !r.has("cookies") {
		t.Skip("no socket cookies from tracing programs (Linux 5.12): without one, a re-arm of a timewait socket the kernel side does not follow cannot be told from the next socket's first arm, and still reads as a kill")
	}
	raw := startRaw(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	srv := parseAddrPort(ln.Addr().String())
	c := serverClosesFirst(t, ns, ln)
	defer c.Close()
	cl := parseAddrPort(c.LocalAddr().String())
	isServer := func(e *tracer.Event) bool { return e.Local == srv && e.Remote == cl }
	eventually(t, "the server's FIN_WAIT2", func() bool {
		return len(r.col.socket(func(e *tracer.Event) bool { return isServer(e) && e.New == tracer.FinWait2 })) > 0
	})
	time.Sleep(50 * time.Millisecond) // (the timewait socket's first arm is on its way)
	for _, tr := range []*tracer.Tracer{r.tr, raw.tr} {
		n, err := tr.ForgetTimewaits()
		if err != nil || n == 0 {
			t.Fatalf("forgetting the timewait sockets followed: %d forgotten (%v), want the server's", n, err)
		}
	}
	const delay = 300 * time.Millisecond
	time.Sleep(delay)
	finSent := tracer.BootNow()
	c.Close()
	finSentBy := tracer.BootNow()
	eventually(t, "the client's LAST_ACK->CLOSE", func() bool {
		return len(r.col.socket(func(e *tracer.Event) bool { return e.Local == cl && e.New == tracer.Close })) > 0
	})
	time.Sleep(600 * time.Millisecond) // past pieceWindow and a read, for a cancel nothing settled
	if _, _, ok := raw.col.first(func(e *tracer.Event) bool { return isServer(e) && e.Type == tracer.EventTWRearm && e.Unseen }); !ok {
		raw.col.mu.Lock()
		var got []string
		for _, e := range raw.col.events {
			if isServer(&e) {
				got = append(got, fmt.Sprintf("%v %v->%v cookie %d unseen %v cpu %d t %d", e.Type, e.Old, e.New, e.Cookie, e.Unseen, e.CPU, e.Time))
			}
		}
		raw.col.mu.Unlock()
		t.Fatalf("no re-arm of the unfollowed timewait socket: the test proves nothing; the server's raw events: %v", got)
	}
	evs := r.col.socket(func(e *tracer.Event) bool { return e.Local == srv && e.Remote == cl })
	assertSequence(t, "server", evs, "LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->FIN_WAIT1",
		"FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->TIME_WAIT(tw)")
	if len(evs) != 5 {
		return
	}
	tw := evs[4]
	if tw.Unseen || !tw.HasDuration || tw.DurationMin {
		t.Errorf("FIN_WAIT2->TIME_WAIT: unseen %v, duration known %v, a lower bound %v; want a seen step, timed", tw.Unseen, tw.HasDuration, tw.DurationMin)
	}
	// (the FIN is handled in the close() on loopback, or soon after in
	// ksoftirqd on a loaded machine)
	checkSpan(t, "FIN_WAIT2", tw.Duration, time.Duration(finSent-evs[3].Time), time.Duration(finSentBy-evs[3].Time)+time.Second)
	if tw.Duration < delay {
		t.Errorf("FIN_WAIT2 lasted %v, want at least the %v slept", tw.Duration, delay)
	}
	if tw.ExpiresIn < tracer.TimewaitLen-time.Second || tw.ExpiresIn > tracer.TimewaitLen {
		t.Errorf("TIME_WAIT ends in %v, want about %v", tw.ExpiresIn, tracer.TimewaitLen)
	}
}

func TestTimeWaitReportedInTime(t *testing.T) {
	ns := newNetNS(t)
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	srv := parseAddrPort(ln.Addr().String())
	// A FIN_WAIT2 is watched for a turn to TIME_WAIT without timer_start for
	// the first few seconds only: after that the peer's FIN always moves its
	// timer, and timer_start reports it. The last delay comes after the watch.
	window := tracer.FinWait2Window(r.tr.Info().HZ)
	if window == 0 {
		t.Fatalf("HZ=%d: FIN_WAIT2 watched for ever", r.tr.Info().HZ)
	}
	late := window + 1500*time.Millisecond
	delays := []time.Duration{10 * time.Millisecond, 100 * time.Millisecond, 300 * time.Millisecond,
		700 * time.Millisecond, 1500 * time.Millisecond, 2500 * time.Millisecond, late}
	type result struct {
		client             netip.AddrPort
		delay              time.Duration
		finSent, finSentBy uint64 // CLOCK_BOOTTIME before and after the client's close()
	}
	results := make(chan result, len(delays))
	for _, d := range delays {
		c := serverClosesFirst(t, ns, ln)
		go func() {
			time.Sleep(d)
			before := tracer.BootNow()
			c.Close()
			results <- result{parseAddrPort(c.LocalAddr().String()), d, before, tracer.BootNow()}
		}()
	}
	go func() {
		// The server sockets whose client has not closed yet are watched
		// (300 ms and later: 5), until the watch ends (none left).
		time.Sleep(200 * time.Millisecond)
		if n, err := r.tr.FinWait2Watched(); err != nil || n < 4 {
			t.Errorf("at 200ms: %d FIN_WAIT2 watched (%v), want the 4 or 5 whose client has not closed", n, err)
		}
		time.Sleep(window + 500*time.Millisecond)
		if n, err := r.tr.FinWait2Watched(); err != nil || n != 0 {
			t.Errorf("%v after the server closed: %d FIN_WAIT2 still watched (%v), want none", window+700*time.Millisecond, n, err)
		}
	}()
	const jiffies = timerJiffies
	for range delays {
		res := <-results
		isServer := func(e *tracer.Event) bool {
			return e.Local == srv && e.Remote == res.client && e.Old == tracer.FinWait2 && e.New == tracer.TimeWait
		}
		deadline := time.Now().Add(5 * time.Second)
		var tw tracer.Event
		var arrived uint64
		for ok := false; !ok; {
			if tw, arrived, ok = r.col.first(isServer); !ok && time.Now().After(deadline) {
				t.Fatalf("client close delay %v: no FIN_WAIT2->TIME_WAIT for the server (client %v)", res.delay, res.client)
			}
			time.Sleep(5 * time.Millisecond)
		}
		late := time.Duration(arrived - res.finSent)
		if late > 200*time.Millisecond {
			t.Errorf("client close delay %v: TIME_WAIT reported %v after the FIN, want within 200ms", res.delay, late)
		}
		if tw.Time+uint64(jiffies) < res.finSent || tw.Time > res.finSentBy+uint64(jiffies) {
			t.Errorf("client close delay %v: TIME_WAIT dated %v from the client's close(), want at its FIN", res.delay,
				time.Duration(int64(tw.Time)-int64(res.finSent)))
		}
		if !tw.Timewait || !tw.HasDuration || tw.Duration < res.delay-jiffies {
			t.Errorf("client close delay %v: FIN_WAIT2 lasted %v (known %v, timewait %v)", res.delay, tw.Duration, tw.HasDuration, tw.Timewait)
		}
		t.Logf("client close delay %v: TIME_WAIT reported %v after the FIN", res.delay, late.Round(time.Millisecond))
	}
	// All in TIME_WAIT: nothing left to watch, and no more walks.
	eventually(t, "the FIN_WAIT2 watch empty", func() bool {
		n, err := r.tr.FinWait2Watched()
		return err == nil && n == 0
	})
	walks := r.tr.FinWait2Walks()
	time.Sleep(500 * time.Millisecond)
	if n := r.tr.FinWait2Walks() - walks; n > 0 {
		t.Errorf("%d walks of an empty FIN_WAIT2 watch in 500ms, want none", n)
	}
}

// A tracer of one namespace does not follow the sockets of another at all:
// it makes them no socket storage (which the kernel would also clone into
// each accepted socket and free with each), by their state changes, their
// reads and writes, or the start-up walk of those older than the tracer.
func TestNetNSFilterFollowsNoOtherNamespace(t *testing.T) {
	asked, other := newNetNS(t), newNetNS(t)
	type sockets struct {
		ln                     net.Listener
		oldC, oldS, newC, newS net.Conn // connected before the tracer and after
	}
	connect := func(ns *testnet.NetNS, ln net.Listener) (client, server net.Conn) {
		c := ns.Dial(t, "tcp4", ln.Addr().String())
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		// (a read and a write: where the kernel has their tracepoints, the
		// first task to do either is an owner, learnt in the kernel)
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		return c, s
	}
	var in [2]sockets
	for i, ns := range []*testnet.NetNS{asked, other} {
		in[i].ln = ns.Listen(t, "tcp4", "127.0.0.1:0")
		in[i].oldC, in[i].oldS = connect(ns, in[i].ln)
		// and one connection in TIME_WAIT (its client closed first)
		c, s := connect(ns, in[i].ln)
		c.Close()
		if _, err := s.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("server read %v, want EOF", err)
		}
		s.Close()
	}
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: asked.Inode}}, nil) // (walks the older ones)
	// The walk visits the namespace asked about alone: the listener, the
	// older connection's two ends and the one in TIME_WAIT.
	if socks, err := r.tr.Scan(); err != nil || len(socks) != 4 || slices.ContainsFunc(socks, func(s tracer.Socket) bool { return s.NetNS != asked.Inode }) {
		t.Errorf("the walk found %d sockets (%v), want the 4 of the namespace asked about: %v", len(socks), err, socks)
	}
	for i, ns := range []*testnet.NetNS{asked, other} {
		in[i].newC, in[i].newS = connect(ns, in[i].ln)
	}
	stored := func(c syscall.Conn) bool {
		t.Helper()
		raw, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var has bool
		if err := raw.Control(func(fd uintptr) { has, err = r.tr.HasSocketInfo(int(fd)) }); err != nil {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		return has
	}
	have := func(s sockets) string {
		// (not the listener's: Go's listeners are MPTCP ones, whose
		// descriptor is not the TCP socket the kernel side follows)
		return fmt.Sprintf("older client %v and server %v, newer client %v and server %v",
			stored(s.oldC.(*net.TCPConn)), stored(s.oldS.(*net.TCPConn)), stored(s.newC.(*net.TCPConn)), stored(s.newS.(*net.TCPConn)))
	}
	const all, none = "older client true and server true, newer client true and server true",
		"older client false and server false, newer client false and server false"
	// one: the walk's; none of another namespace, older than the tracer or not
	if n, err := r.tr.TimewaitFollowed(); err != nil || n != 1 {
		t.Errorf("%d timewait sockets followed (%v), want the one of the namespace asked about", n, err)
	}
	got := have(in[0])
	if got == none {
		t.Skip("no socket storage for tracing programs (Linux 5.11): the kernel side keeps sockets by address")
	}
	if got != all {
		t.Errorf("socket storage in the namespace asked about: %s; want all", got)
	}
	if got := have(in[1]); got != none {
		t.Errorf("socket storage in another namespace: %s; want none", got)
	}
}

// FindHolders finds the process holding a socket by its inode, from sock_diag
// or, without it, from the walk; a process that does not hold it is passed
// over for one that does (here: none but the test process holds it).
func TestFindHolders(t *testing.T) {
	ns := newNetNS(t)
	r := startTracer(t, tracer.Config{Filter: tracer.Filter{NetNS: ns.Inode}}, nil)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	c := ns.Dial(t, "tcp4", ln.Addr().String())
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	q := tracer.HolderQuery{Endpoints: tracer.Endpoints{NetNS: ns.Inode, Family: tracer.IPv4,
		Local: parseAddrPort(s.LocalAddr().String()), Remote: parseAddrPort(s.RemoteAddr().String())},
		State: tracer.Established, PID: uint32(os.Getpid())}
	gone := q
	gone.Remote = netip.AddrPortFrom(gone.Remote.Addr(), 1) // no such socket
	for _, how := range []string{"sock_diag", "walk"} {
		if how == "walk" {
			defer tracer.WithoutDiag()()
		}
		got := r.tr.FindHolders([]tracer.HolderQuery{q, gone})
		if got[0].PID != uint32(os.Getpid()) || got[0].Comm.String() == "" {
			t.Errorf("%s: holder of the accepted socket %+v, want this process (%d)", how, got[0], os.Getpid())
		}
		if got[1].PID != 0 {
			t.Errorf("%s: a holder %+v for a socket that does not exist", how, got[1])
		}
	}
}
