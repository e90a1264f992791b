// SPDX-License-Identifier: Apache-2.0

package tracer_test

// Kernel tests: they load the tracer into the running kernel, make real TCP
// connections on loopback and assert on what it reports. They need root; the
// peer whose owner matters runs in a child process (this test binary run again,
// see helperMain) so that owner, server and on-CPU task are different processes.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"

	"github.com/tcpstate/tcpstate/internal/testnet"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv("TCPSTATE_HELPER"); mode != "" {
		helperMain(mode)
		return
	}
	os.Exit(m.Run())
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root (CAP_BPF and CAP_PERFMON) to load the tracer; run `go test` as root")
	}
}

// collector is a Sink that keeps copies of every event.
type collector struct {
	discard bool // count only
	mu      sync.Mutex
	events  []tracer.Event
	arrived []uint64 // CLOCK_BOOTTIME when each event reached the collector
	lost    uint64
	nLost   int
	slow    time.Duration // sleep in the first tracer.Event call, to let the ring fill
}

func (c *collector) Event(e *tracer.Event) error {
	if c.discard {
		return nil
	}
	c.mu.Lock()
	slow := c.slow
	c.slow = 0
	if e.Type == tracer.EventLost {
		c.lost += e.Lost
		c.nLost++
	} else {
		c.events = append(c.events, *e)
		c.arrived = append(c.arrived, tracer.BootNow())
	}
	c.mu.Unlock()
	time.Sleep(slow)
	return nil
}

func (c *collector) Idle() error { return nil }

// socket returns the state events of the socket matching pick, in order.
func (c *collector) socket(pick func(*tracer.Event) bool) []tracer.Event {
	return slices.DeleteFunc(c.socketAll(pick), func(e tracer.Event) bool { return e.Type != tracer.EventState })
}

// first returns the first event matching pick and when it arrived.
func (c *collector) first(pick func(*tracer.Event) bool) (tracer.Event, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.events {
		if pick(&c.events[i]) {
			return c.events[i], c.arrived[i], true
		}
	}
	return tracer.Event{}, 0, false
}

// socketAll returns every event of the socket matching pick (keepalive too).
func (c *collector) socketAll(pick func(*tracer.Event) bool) []tracer.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var cookie uint64
	for i := range c.events {
		if pick(&c.events[i]) {
			cookie = c.events[i].Cookie
			break
		}
	}
	var out []tracer.Event
	for _, e := range c.events {
		if cookie != 0 && e.Cookie == cookie {
			out = append(out, e)
		}
	}
	return out
}

// running is a tracer reading into a collector until stop, through a
// timeline (as the tool does) unless raw.
type running struct {
	tr   *tracer.Tracer
	col  *collector
	raw  *rawRing // what the kernel side reported, before the timeline (nil if raw)
	stop func() tracer.Stats
	// detachAtStop: stop detaches the programs before it reads the
	// counters, which then add up exactly (what the tracer saw after Run
	// ended was filtered, or is not delivered).
	detachAtStop bool
}

// rawRing keeps the last rawRingLen events the kernel side delivered, before
// the timeline joins them, so that a failing test can show them: whether
// the kernel reported a transition the test missed tells the tracer's fault
// from the kernel's.
type rawRing struct {
	next tracer.Sink
	mu   sync.Mutex
	ring []tracer.Event
	n    int // events seen
}

const rawRingLen = 1 << 14

func (r *rawRing) Event(e *tracer.Event) error {
	r.mu.Lock()
	if len(r.ring) < rawRingLen {
		r.ring = append(r.ring, *e)
	} else {
		r.ring[r.n%rawRingLen] = *e
	}
	r.n++
	r.mu.Unlock()
	return r.next.Event(e)
}

func (r *rawRing) Idle() error { return r.next.Idle() }

// explain logs, for a failed test, the tracer's counters and the raw events
// of the given local or remote ports, oldest first.
func (r *running) explain(t *testing.T, ports ...uint16) {
	t.Helper()
	if st, err := r.tr.Stats(); err == nil {
		type fields tracer.Stats // every counter, not Stats.String's summary
		t.Logf("tracer stats: %+v", fields(st))
	}
	if r.raw == nil {
		return
	}
	r.raw.mu.Lock()
	defer r.raw.mu.Unlock()
	first := max(0, r.raw.n-rawRingLen)
	t.Logf("raw events of ports %v (of the last %d the kernel side delivered):", ports, r.raw.n-first)
	for i := first; i < r.raw.n; i++ {
		e := &r.raw.ring[i%rawRingLen]
		if !slices.Contains(ports, e.Local.Port()) && !slices.Contains(ports, e.Remote.Port()) {
			continue
		}
		t.Logf("  %d cpu %d %v %v->%v tw=%v %v -> %v cookie %#x dur %v reason %v owner %d",
			e.Time, e.CPU, e.Type, e.Old, e.New, e.Timewait, e.Local, e.Remote, e.Cookie, e.Duration, e.Reason, e.Owner.Task.PID)
	}
}

// has reports whether the kernel under test has a feature (tracer.Features):
// tests assert what tcpstate promises on that kernel, no more, no less.
func (r *running) has(name string) bool {
	for _, f := range r.tr.Features() {
		if f.Name == name {
			return f.OK
		}
	}
	panic("no feature " + name)
}

func startTracer(t *testing.T, cfg tracer.Config, col *collector) *running {
	return start(t, cfg, col, false)
}

// startRaw delivers what the kernel side reports, unjoined.
func startRaw(t *testing.T, cfg tracer.Config, col *collector) *running {
	return start(t, cfg, col, true)
}

func start(t *testing.T, cfg tracer.Config, col *collector, raw bool) *running {
	t.Helper()
	requireRoot(t)
	begin := time.Now()
	tr, err := tracer.New(cfg)
	if err != nil {
		t.Fatalf("starting tracer: %v", err)
	}
	t.Logf("tracer attached in %v", time.Since(begin).Round(time.Millisecond))
	if col == nil {
		col = &collector{}
	}
	var sink tracer.Sink = col
	var tl *timeline.Timeline
	var ring *rawRing
	if !raw {
		tl = timeline.New(col, timeline.Options{})
		socks, err := tr.Scan()
		if err != nil {
			t.Fatalf("scanning sockets: %v", err)
		}
		tl.Seed(socks)
		ring = &rawRing{next: tl}
		sink = ring
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, sink) }()
	run := &running{tr: tr, col: col, raw: ring}
	var once sync.Once
	var stats tracer.Stats
	stop := func() tracer.Stats {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			if tl != nil {
				if err := tl.Flush(); err != nil {
					t.Errorf("Flush: %v", err)
				}
			}
			if run.detachAtStop {
				if err := tr.Detach(); err != nil {
					t.Errorf("Detach: %v", err)
				}
			}
			var err error
			if stats, err = tr.Stats(); err != nil {
				t.Errorf("Stats: %v", err)
			}
			tr.Close()
		})
		return stats
	}
	t.Cleanup(func() { stop() })
	run.stop = stop
	return run
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func transitions(evs []tracer.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Old.String() + "->" + e.New.String()
		if e.Type != tracer.EventState {
			out[i] = e.Type.String() + ":" + out[i]
		}
		if e.Timewait {
			out[i] += "(tw)"
		}
	}
	return out
}

func ends(evs []tracer.Event, last string) bool {
	return len(evs) > 0 && transitions(evs)[len(evs)-1] == last
}

func assertSequence(t *testing.T, who string, evs []tracer.Event, want ...string) {
	t.Helper()
	if got := transitions(evs); !slices.Equal(got, want) {
		t.Errorf("%s transitions:\n got %v\nwant %v", who, got, want)
	}
}

// assertDurations checks that every state but the first was seen to begin, and
// that the time reported in it is exactly the gap between the two events.
func assertDurations(t *testing.T, who string, evs []tracer.Event) {
	t.Helper()
	for i, e := range evs {
		if i == 0 {
			if e.HasDuration {
				t.Errorf("%s: %v has a duration (%v) though the tracer never saw it begin", who, e.Old, e.Duration)
			}
			continue
		}
		if !e.HasDuration {
			t.Errorf("%s: %v->%v: no duration", who, e.Old, e.New)
			continue
		}
		if gap := time.Duration(e.Time - evs[i-1].Time); e.Duration != gap {
			t.Errorf("%s: %v->%v: duration %v, but %v passed since it entered %v", who, e.Old, e.New, e.Duration, gap, e.Old)
		}
	}
}

func assertOwner(t *testing.T, who string, evs []tracer.Event, pid int) {
	t.Helper()
	for _, e := range evs {
		if !e.Owner.Known() || e.Owner.PID != uint32(pid) {
			t.Errorf("%s: %v->%v: owner %d (%s, known %v), want %d", who, e.Old, e.New, e.Owner.PID, e.Owner.From, e.Owner.Known(), pid)
		}
	}
}

func assertEndpoints(t *testing.T, who string, evs []tracer.Event, local, remote netip.AddrPort) {
	t.Helper()
	for i, e := range evs {
		wantLocal := local
		if i == 0 && e.Old == tracer.Close && e.New == tracer.SynSent {
			wantLocal = netip.AddrPortFrom(local.Addr(), 0) // the port is picked after the transition
		}
		if e.Local != wantLocal || e.Remote != remote {
			t.Errorf("%s: %v->%v: %v -> %v, want %v -> %v", who, e.Old, e.New, e.Local, e.Remote, wantLocal, remote)
		}
		fam := tracer.IPv4
		if local.Addr().Is6() {
			fam = tracer.IPv6
		}
		if e.Family != fam {
			t.Errorf("%s: family %v, want %v", who, e.Family, fam)
		}
	}
}

// child is a helper process holding one end of a connection.
type child struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	port  uint16 // its local port
	local netip.AddrPort
}

// startChild runs helperMain(mode) in a new process and waits for its
// "ready PORT" line.
func startChild(t *testing.T, mode string, env []string, files ...*os.File) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, "TCPSTATE_HELPER="+mode)...)
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, in: in, out: bufio.NewReader(outPipe)}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line := c.expect(t, "ready")
	if f := strings.Fields(line); len(f) == 2 {
		c.local = netip.MustParseAddrPort(f[1])
		c.port = c.local.Port()
	}
	return c
}

// expect reads the child's next line and checks that it starts with word.
func (c *child) expect(t *testing.T, word string) string {
	t.Helper()
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		l, err := c.out.ReadString('\n')
		ch <- result{strings.TrimSpace(l), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil || !strings.HasPrefix(r.line, word) {
			t.Fatalf("child: got %q (%v), want %q", r.line, r.err, word)
		}
		return r.line
	case <-time.After(10 * time.Second):
		t.Fatalf("child: no %q line", word)
	}
	return ""
}

func (c *child) send(t *testing.T, cmd string) {
	t.Helper()
	if _, err := fmt.Fprintln(c.in, cmd); err != nil {
		t.Fatal(err)
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// helperMain is the child process. Modes:
//
//	client: connect to $ADDR, print "ready LOCAL", then obey stdin:
//	  close      close and print "closed"
//	  shutdown-close  shutdown(SHUT_WR), 50 ms later close(), print "closed"
//	  linger0    set SO_LINGER 0, close (RST) and print "closed"
//	  hold D     sleep D without touching the socket, close, print "closed"
//	acceptor: accept on the listener passed as fd 3, print "ready", read a
//	  line, answer "ok", read until EOF, close, print "closed".
//	holder: accept $CONNS connections on the listener passed as fd 3, print
//	  "held N", and hold them until killed.
func helperMain(mode string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(3)
	}
	in := bufio.NewScanner(os.Stdin)
	switch mode {
	case "client":
		conn, err := net.Dial("tcp", os.Getenv("ADDR"))
		if err != nil {
			fail(err)
		}
		tc := conn.(*net.TCPConn)
		fmt.Println("ready", conn.LocalAddr())
		for in.Scan() {
			f := strings.Fields(in.Text())
			switch f[0] {
			case "close":
				tc.Close()
			case "shutdown-close":
				if err := tc.CloseWrite(); err != nil {
					fail(err)
				}
				time.Sleep(50 * time.Millisecond)
				tc.Close()
			case "linger0":
				if err := tc.SetLinger(0); err != nil {
					fail(err)
				}
				tc.Close()
			case "hold":
				hold, _ := time.ParseDuration(f[1])
				time.Sleep(hold)
				tc.Close()
			}
			fmt.Println("closed")
		}
	case "acceptor":
		ln, err := net.FileListener(os.NewFile(3, "listener"))
		if err != nil {
			fail(err)
		}
		fmt.Println("ready")
		conn, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		r := bufio.NewReader(conn)
		if _, err := r.ReadString('\n'); err != nil {
			fail(err)
		}
		fmt.Fprintln(conn, "ok")
		if _, err := io.Copy(io.Discard, r); err != nil {
			fail(err)
		}
		conn.Close()
		fmt.Println("closed")
		in.Scan()
	case "holder":
		ln, err := net.FileListener(os.NewFile(3, "listener"))
		if err != nil {
			fail(err)
		}
		n, _ := strconv.Atoi(os.Getenv("CONNS"))
		fmt.Println("ready")
		held := make([]net.Conn, 0, n)
		for len(held) < n {
			c, err := ln.Accept()
			if err != nil {
				fail(err)
			}
			held = append(held, c)
		}
		fmt.Println("held", len(held))
		in.Scan()
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}
}

var families = []struct {
	name, network, loopback string
}{
	{"ipv4", "tcp4", "127.0.0.1:0"},
	{"ipv6", "tcp6", "[::1]:0"},
}

func listen(t *testing.T, network, addr string) (net.Listener, netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, netip.MustParseAddrPort(ln.Addr().String())
}

// pair is a loopback connection from a client in a child process to a server
// in this process, made while a tracer runs.
type pair struct {
	r    *running
	srv  netip.AddrPort
	cl   *child
	conn net.Conn // the server's accepted end
}

func newPair(t *testing.T, network, addr string) *pair {
	t.Helper()
	r := startTracer(t, tracer.Config{}, nil)
	ln, srv := listen(t, network, addr)
	cl := startChild(t, "client", []string{"ADDR=" + srv.String()})
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Cleanup(func() {
		if t.Failed() {
			r.explain(t, srv.Port(), cl.port)
		}
	})
	return &pair{r: r, srv: srv, cl: cl, conn: conn}
}

func (p *pair) isClient(e *tracer.Event) bool { return e.Remote == p.srv && e.New == tracer.SynSent }
func (p *pair) isServer(e *tracer.Event) bool {
	return e.Local == p.srv && e.Remote.Port() == p.cl.port
}

// waitEnds waits until the client's and the server's last transitions are
// clientLast and serverLast ("": any), and returns their events.
func (p *pair) waitEnds(t *testing.T, clientLast, serverLast string) (client, server []tracer.Event) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	endsOrAny := func(evs []tracer.Event, last string) bool { return last == "" && len(evs) > 0 || ends(evs, last) }
	for !endsOrAny(p.r.col.socket(p.isClient), clientLast) || !endsOrAny(p.r.col.socket(p.isServer), serverLast) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for client %s, server %s; got client %v, server %v", clientLast, serverLast,
				transitions(p.r.col.socket(p.isClient)), transitions(p.r.col.socket(p.isServer)))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p.r.col.socket(p.isClient), p.r.col.socket(p.isServer)
}

// trimTimewait checks and removes a last FIN_WAIT2->TIME_WAIT of the
// timewait socket. The kernel reports it at once when it moves the timer to
// another wheel bucket; else the tracer dates it later, from the timer's
// expiry, when the timewait socket ends. FIN_WAIT2 lasted at least min and
// ended before end, a CLOCK_BOOTTIME the test read after the peer's FIN was
// sent (0: not checked), give or take the timer's jiffy when dated from it.
func trimTimewait(t *testing.T, who string, evs []tracer.Event, min time.Duration, end uint64) []tracer.Event {
	t.Helper()
	if len(evs) < 2 || evs[len(evs)-1].New != tracer.TimeWait {
		return evs
	}
	tw, began := evs[len(evs)-1], evs[len(evs)-2].Time
	if !tw.Timewait || tw.Old != tracer.FinWait2 {
		t.Errorf("%s: %v->%v (timewait %v), want FIN_WAIT2->TIME_WAIT in the timewait socket", who, tw.Old, tw.New, tw.Timewait)
	}
	if end != 0 {
		checkSpan(t, who+": FIN_WAIT2", tw.Duration, min-timerJiffies, time.Duration(end-began)+timerJiffies)
	}
	return evs[:len(evs)-1]
}

// timerJiffies is the precision of a time dated from a kernel timer: two
// jiffies at the lowest CONFIG_HZ (100).
const timerJiffies = 20 * time.Millisecond

// checkSpan checks a duration the kernel measured against the test's own
// clock: at least min (what the test waited for), at most max (the span the
// test measured around both ends). This holds however busy the machine is.
func checkSpan(t *testing.T, what string, d, min, max time.Duration) {
	t.Helper()
	if d < min || d > max {
		t.Errorf("%s lasted %v, want at least %v and at most the %v measured around it", what, d, min, max)
	}
}

// assertReason checks why the socket's last event closed it.
func assertReason(t *testing.T, who string, evs []tracer.Event, want tracer.Reason) {
	t.Helper()
	if len(evs) == 0 {
		return
	}
	if last := evs[len(evs)-1]; last.New != tracer.Close || last.Reason != want {
		t.Errorf("%s: %v->%v closed with reason %q, want %q", who, last.Old, last.New, last.Reason, want)
	}
}

// checkSocket asserts a socket's whole report: its transitions, its owner, the
// time in each state and its endpoints.
func checkSocket(t *testing.T, who string, evs []tracer.Event, pid int, local, remote netip.AddrPort, want ...string) {
	t.Helper()
	assertSequence(t, who, evs, want...)
	assertOwner(t, who, evs, pid)
	assertDurations(t, who, evs)
	assertEndpoints(t, who, evs, local, remote)
	assertCPU(t, who, evs)
}

// assertCPU: each event names the CPU it fired on, one of this machine's (the
// timeline settles timewait cancels by it).
func assertCPU(t *testing.T, who string, evs []tracer.Event) {
	t.Helper()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if !e.HasCPU || e.CPU >= uint32(cpus) {
			t.Errorf("%s: %v->%v: CPU %d (known %v), want one of this machine's %d", who, e.Old, e.New, e.CPU, e.HasCPU, cpus)
		}
	}
}

func TestClientClosesFirst(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			p := newPair(t, fam.network, fam.loopback)
			p.cl.send(t, "close")
			p.cl.expect(t, "closed")
			if _, err := io.Copy(io.Discard, p.conn); err != nil {
				t.Fatal(err)
			}
			const wait = 100 * time.Millisecond
			time.Sleep(wait) // the client reaches FIN_WAIT2 first
			p.conn.Close()
			closed := tracer.BootNow()

			// The client's FIN_WAIT2 and TIME_WAIT go on in a timewait socket:
			// no CLOSE of the client now (the TIME_WAIT tests follow it).
			_, server := p.waitEnds(t, "", "LAST_ACK->CLOSE")
			time.Sleep(50 * time.Millisecond)
			client := p.r.col.socket(p.isClient)
			client = trimTimewait(t, "client", client, wait, closed)
			checkSocket(t, "client", client, p.cl.pid(), p.cl.local, p.srv,
				"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2")
			checkSocket(t, "server", server, os.Getpid(), p.srv, p.cl.local,
				"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE")
			assertReason(t, "server", server, tracer.ReasonFIN)
			if len(client) == 4 {
				if client[0].Owner.From != tracer.OwnerConnect || client[2].Owner.From != tracer.OwnerClose {
					t.Errorf("client owner learnt from %v at connect, %v at close", client[0].Owner.From, client[2].Owner.From)
				}
			}
			if len(server) == 5 {
				if server[0].Owner.From != tracer.OwnerListener || server[3].Owner.From != tracer.OwnerClose {
					t.Errorf("server owner learnt from %v at SYN_RECV, %v at LAST_ACK", server[0].Owner.From, server[3].Owner.From)
				}
				// The server sat in CLOSE_WAIT while it slept before close().
				checkSpan(t, "server CLOSE_WAIT", server[3].Duration, wait, time.Duration(closed-server[2].Time))
			}
		})
	}
}

// shutdown() then close(): close() sets the state the socket is already in
// again. Only real changes are reported, and durations span whole states.
func TestShutdownThenClose(t *testing.T) {
	p := newPair(t, "tcp4", "127.0.0.1:0")
	p.cl.send(t, "shutdown-close")
	p.cl.expect(t, "closed")
	// close() sets FIN_WAIT1 or FIN_WAIT2 again, whichever the socket is in;
	// orphaned, it then hands over to a timewait socket.
	client, _ := p.waitEnds(t, "FIN_WAIT1->FIN_WAIT2", "ESTABLISHED->CLOSE_WAIT")
	time.Sleep(100 * time.Millisecond)
	client = p.r.col.socket(p.isClient)
	checkSocket(t, "client", client, p.cl.pid(), p.cl.local, p.srv,
		"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2")
}

func TestServerClosesFirst(t *testing.T) {
	const hold = 1500 * time.Millisecond
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			p := newPair(t, fam.network, fam.loopback)
			// Like an application that leaks the socket for a while: it does
			// not read, so the peer's FIN is always handled in softirq (a
			// reader holding the socket lock would process it itself).
			sent := tracer.BootNow()
			p.cl.send(t, "hold "+hold.String())
			p.conn.Close()
			p.cl.expect(t, "closed")
			closed := tracer.BootNow()

			client, server := p.waitEnds(t, "LAST_ACK->CLOSE", "")
			// The server's FIN_WAIT2 goes on in a timewait socket; the client's
			// FIN turns it TIME_WAIT, reported now if the kernel moved the
			// timer to another wheel bucket, else when the timer ends.
			// The client may start its hold before the server's FIN arrives
			// (by at most the time since the command was sent).
			var finArrived uint64
			if len(client) > 2 {
				finArrived = client[2].Time
			}
			atLeast := hold - time.Duration(finArrived-sent)
			server = trimTimewait(t, "server", server, atLeast, closed)
			checkSocket(t, "client", client, p.cl.pid(), p.cl.local, p.srv,
				"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE")
			checkSocket(t, "server", server, os.Getpid(), p.srv, p.cl.local,
				"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2")
			assertReason(t, "client", client, tracer.ReasonFIN)
			if len(client) != 5 {
				return
			}
			// The peer's FIN is handled in softirq: the task on the CPU is not
			// the client, yet the client is reported as the owner.
			if cw := client[2]; cw.OnCPU.PID == uint32(p.cl.pid()) {
				t.Errorf("ESTABLISHED->CLOSE_WAIT ran on the client's own task (%d): the test proves nothing", cw.OnCPU.PID)
			}
			// CLOSE_WAIT lasts until the application's close(): the hold.
			checkSpan(t, "client CLOSE_WAIT", client[3].Duration, atLeast, time.Duration(closed-client[2].Time))
			t.Logf("client CLOSE_WAIT lasted %v for a %v hold", client[3].Duration, hold)
		})
	}
}

// Stats is read from other goroutines while Run reads events (serve's
// scrapes; main's last line when stdout stalls), and after Close: it counts,
// never backwards, or says the tracer is closed, never reading a closed map.
// (Under -race, which CI does not run, this also checks the counter buffer
// Run shares: the unguarded one was reported.)
func TestStatsBesideRunAndAfterClose(t *testing.T) {
	r := startRaw(t, tracer.Config{}, nil)
	ln, dst := listen(t, "tcp4", "127.0.0.1:0")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			if c, err := net.Dial("tcp4", dst.String()); err == nil {
				c.Close()
			}
		}
	}()
	var last tracer.Stats
	// Past a few of Run's own reads of the counters (every 100 ms).
	until := time.Now().Add(400 * time.Millisecond)
	for reading := true; reading; {
		select {
		case <-done:
			reading = time.Now().Before(until)
		default:
		}
		st, err := r.tr.Stats()
		if err != nil {
			t.Fatalf("Stats while Run reads: %v", err)
		}
		if st.Seen < last.Seen {
			t.Fatalf("Stats while Run reads: %d seen after %d", st.Seen, last.Seen)
		}
		last = st
	}
	ln.Close()
	if last.Seen == 0 {
		t.Errorf("Stats while Run read saw nothing: %+v", last)
	}
	r.stop() // Run ends, then Close
	if st, err := r.tr.Stats(); !errors.Is(err, tracer.ErrClosed) {
		t.Errorf("Stats after Close: %+v, %v; want ErrClosed", st, err)
	}
	if _, err := r.tr.HookCosts(); !errors.Is(err, tracer.ErrClosed) {
		t.Errorf("HookCosts after Close: %v, want ErrClosed", err)
	}
}

func TestConnectionRefused(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			// A port nobody listens on: bind one, note it, close it.
			ln, dst := listen(t, fam.network, fam.loopback)
			ln.Close()
			r := startTracer(t, tracer.Config{}, nil)
			if c, err := net.Dial(fam.network, dst.String()); err == nil {
				c.Close()
				t.Fatalf("connect to %v succeeded", dst)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("connect: %v, want ECONNREFUSED", err)
			}
			isClient := func(e *tracer.Event) bool { return e.Remote == dst && e.New == tracer.SynSent }
			eventually(t, "the refused socket closed", func() bool { return ends(r.col.socket(isClient), "SYN_SENT->CLOSE") })
			client := r.col.socket(isClient)
			assertSequence(t, "client", client, "CLOSE->SYN_SENT", "SYN_SENT->CLOSE")
			assertOwner(t, "client", client, os.Getpid())
			assertDurations(t, "client", client)
			assertReason(t, "client", client, tracer.ReasonRefused)
			if last := client[len(client)-1]; last.SkErr != int32(syscall.ECONNREFUSED) || last.Local.Port() == 0 {
				t.Errorf("SYN_SENT->CLOSE: sk_err %d, local %v; want ECONNREFUSED and the port it used", last.SkErr, last.Local)
			}
		})
	}
}

func TestAbortiveClose(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			p := newPair(t, fam.network, fam.loopback)
			p.cl.send(t, "linger0")
			p.cl.expect(t, "closed")

			client, server := p.waitEnds(t, "ESTABLISHED->CLOSE", "ESTABLISHED->CLOSE")
			checkSocket(t, "client", client, p.cl.pid(), p.cl.local, p.srv, "CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE")
			checkSocket(t, "server", server, os.Getpid(), p.srv, p.cl.local, "LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE")
			// close() with SO_LINGER 0 sends the RST after the CLOSE: joined.
			assertReason(t, "client", client, tracer.ReasonRSTSent)
			assertReason(t, "server", server, tracer.ReasonRSTReceived)
			if last := client[len(client)-1]; last.SkErr != 0 {
				t.Errorf("the resetting side has sk_err %d, want 0", last.SkErr)
			}
			if last := server[len(server)-1]; last.SkErr != int32(syscall.ECONNRESET) {
				t.Errorf("the reset side has sk_err %d (%v), want ECONNRESET", last.SkErr, syscall.Errno(last.SkErr))
			}
		})
	}
}

func TestListenerOpenAndClose(t *testing.T) {
	const hold = time.Second
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			r := startTracer(t, tracer.Config{}, nil)
			ln, srv := listen(t, fam.network, fam.loopback)
			time.Sleep(hold)
			ln.Close()
			isListener := func(e *tracer.Event) bool { return e.Local == srv && e.New == tracer.Listen }
			eventually(t, "the listener closed", func() bool { return ends(r.col.socket(isListener), "LISTEN->CLOSE") })
			evs := r.col.socket(isListener)
			assertSequence(t, "listener", evs, "CLOSE->LISTEN", "LISTEN->CLOSE")
			assertOwner(t, "listener", evs, os.Getpid())
			assertDurations(t, "listener", evs)
			zero := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
			if fam.name == "ipv6" {
				zero = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
			}
			assertEndpoints(t, "listener", evs, srv, zero)
			assertReason(t, "listener", evs, tracer.ReasonClosed)
			if len(evs) == 2 {
				if evs[0].Owner.From != tracer.OwnerListen || evs[1].Owner.From != tracer.OwnerClose {
					t.Errorf("owner learnt from %v, %v; want listen, close", evs[0].Owner.From, evs[1].Owner.From)
				}
				if d := evs[1].Duration; d < hold || d > hold+hold/20 {
					t.Errorf("LISTEN lasted %v, want %v (+5%%)", d, hold)
				}
			}
		})
	}
}

// An accepted socket belongs to its listener's process until a process reads
// or writes it: then to that process, here a child that inherited the listener.
func TestAcceptedSocketOwnedByAcceptor(t *testing.T) {
	r := startTracer(t, tracer.Config{}, nil)
	ln, srv := listen(t, "tcp4", "127.0.0.1:0")
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	acc := startChild(t, "acceptor", nil, f)
	f.Close()
	conn, err := net.Dial("tcp4", srv.String())
	if err != nil {
		t.Fatal(err)
	}
	local := netip.MustParseAddrPort(conn.LocalAddr().String())
	fmt.Fprintln(conn, "hi")
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "ok\n" {
		t.Fatalf("acceptor answered %q, %v", line, err)
	}
	conn.Close()
	acc.expect(t, "closed")

	isServer := func(e *tracer.Event) bool { return e.Local == srv && e.Remote == local }
	eventually(t, "the accepted socket closed", func() bool { return ends(r.col.socket(isServer), "LAST_ACK->CLOSE") })
	server := r.col.socket(isServer)
	assertSequence(t, "accepted", server,
		"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE")
	assertOwner(t, "before accept", server[:2], os.Getpid())
	sources := []tracer.OwnerSource{tracer.OwnerListener, tracer.OwnerListener, tracer.OwnerIO, tracer.OwnerClose, tracer.OwnerClose}
	if r.has("acceptor") {
		assertOwner(t, "after accept", server[2:], acc.pid())
	} else {
		// Before Linux 6.3 nothing tells who accepted: the listener's
		// process until the acceptor closes the socket.
		assertOwner(t, "after accept, before close", server[2:3], os.Getpid())
		assertOwner(t, "close", server[3:], acc.pid())
		sources[2] = tracer.OwnerListener
	}
	if len(server) == 5 {
		for i, want := range sources {
			if server[i].Owner.From != want {
				t.Errorf("%v->%v: owner learnt from %v, want %v", server[i].Old, server[i].New, server[i].Owner.From, want)
			}
		}
	}
}

// A connection made before the tracer started: the start-up walk finds it,
// names its owner from /proc (as ss -p would), and its first reported state
// is marked as having begun before the tracer.
func TestSocketOlderThanTracer(t *testing.T) {
	requireRoot(t)
	ln, srv := listen(t, "tcp4", "127.0.0.1:0")
	cl := startChild(t, "client", []string{"ADDR=" + srv.String()})
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	r := startTracer(t, tracer.Config{}, nil)
	conn.Close()
	isClient := func(e *tracer.Event) bool { return e.Local == cl.local }
	isServer := func(e *tracer.Event) bool { return e.Local == srv && e.Remote == cl.local }
	// The client does nothing with its socket until CLOSE_WAIT is reported.
	eventually(t, "the client in CLOSE_WAIT", func() bool { return ends(r.col.socket(isClient), "ESTABLISHED->CLOSE_WAIT") })
	cl.send(t, "close")
	cl.expect(t, "closed")
	eventually(t, "both sockets closed", func() bool {
		return ends(r.col.socket(isClient), "LAST_ACK->CLOSE") && slices.Contains(transitions(r.col.socket(isServer)), "FIN_WAIT1->FIN_WAIT2")
	})
	client, server := r.col.socket(isClient), r.col.socket(isServer)
	assertSequence(t, "client", client, "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE")
	assertSequence(t, "server", trimTimewait(t, "server", server, 0, 0), "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2")
	assertOwner(t, "client", client, cl.pid())
	assertOwner(t, "server", server, os.Getpid())
	for who, first := range map[string]tracer.Event{"client": client[0], "server": server[0]} {
		// ESTABLISHED began before the tracer, and the kernel keeps no
		// record of when: the duration counts from the start, marked so.
		if !first.DurationMin || !first.HasDuration || first.Duration <= 0 {
			t.Errorf("%s: first state: duration %v (known %v, lower bound %v), want a positive lower bound",
				who, first.Duration, first.HasDuration, first.DurationMin)
		}
	}
	if client[0].Owner.From != tracer.OwnerProc {
		t.Errorf("client owner learnt from %v, want proc (the start-up walk)", client[0].Owner.From)
	}
}

// The in-kernel filter must agree with tracer.Filter.Match: a tracer filtering in the
// kernel delivers exactly what an unfiltered tracer running beside it
// delivers and Match accepts.
func TestKernelFilterAgreesWithMatch(t *testing.T) {
	requireRoot(t)
	_, srv4 := listen(t, "tcp4", "127.0.0.1:0")
	_, srv6 := listen(t, "tcp6", "[::1]:0")
	netns, err := resolveOwnNetNS()
	if err != nil {
		t.Fatal(err)
	}
	ours := func(e *tracer.Event) bool {
		for _, p := range []uint16{srv4.Port(), srv6.Port()} {
			if e.Local.Port() == p || e.Remote.Port() == p {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		name string
		f    tracer.Filter
	}{
		{"port", tracer.Filter{Ports: []uint16{srv4.Port()}}},
		{"lport", tracer.Filter{LPorts: []uint16{srv6.Port()}}},
		{"rport", tracer.Filter{RPorts: []uint16{srv4.Port(), srv6.Port()}}},
		{"addr ipv4", tracer.Filter{Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}},
		{"addr ipv4 cidr", tracer.Filter{Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}},
		{"addr ipv6", tracer.Filter{Addrs: []netip.Prefix{netip.MustParsePrefix("::1/128")}}},
		{"family", tracer.Filter{Family: tracer.IPv6}},
		{"states", tracer.Filter{States: 1<<tracer.CloseWait | 1<<tracer.LastAck}},
		{"pid", tracer.Filter{PIDs: []uint32{uint32(os.Getpid())}}},
		{"comm", tracer.Filter{Comm: testnet.SelfComm(t)}},
		{"netns", tracer.Filter{NetNS: netns}},
		{"all at once", tracer.Filter{Ports: []uint16{srv6.Port()}, Family: tracer.IPv6, States: 1 << tracer.SynSent, PIDs: []uint32{uint32(os.Getpid())}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := startRaw(t, tracer.Config{}, nil)
			got := startRaw(t, tracer.Config{Filter: tc.f}, nil)
			// Compared only while both run: attaching takes seconds on a
			// slow machine, and the host's own sockets (an earlier test's
			// FIN_WAIT2 expiring) may change meanwhile.
			begin := tracer.BootNow()
			for _, dst := range []netip.AddrPort{srv4, srv6} {
				c, err := net.Dial("tcp", dst.String())
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
			}
			// Past the longest delayed ACK (200 ms) most transitions are
			// done; any later one is compared only if both tracers were
			// still running (cut: before the first stops, slow as it may be).
			time.Sleep(300 * time.Millisecond)
			// (An event is stamped when its program starts and reaches the
			// ring buffer when it ends: far less than 100 ms, even emulated.)
			cut := tracer.BootNow() - uint64(100*time.Millisecond)
			stats := got.stop()
			refStats := ref.stop()
			// By endpoints, not cookie: where the kernel makes no cookies for
			// tracing programs (before 5.12) each tracer has its own ids.
			key := func(e tracer.Event) string { return fmt.Sprintf("%v %v %v->%v", e.Local, e.Remote, e.Old, e.New) }
			var want, have []string
			for _, e := range ref.col.events {
				if ours(&e) && tc.f.Match(&e) && e.Time >= begin && e.Time < cut {
					want = append(want, key(e))
				}
			}
			for _, e := range got.col.events {
				if !tc.f.Match(&e) {
					// Only an unknown owner may pass the kernel's pid and
					// comm filters: user space may still learn it.
					if e.Owner.Known() || tc.f.PIDs == nil && tc.f.Comm == "" {
						t.Errorf("the kernel let through what Match rejects: %+v", e)
					}
					continue
				}
				if ours(&e) && e.Time >= begin && e.Time < cut {
					have = append(have, key(e))
				}
			}
			if len(want) == 0 {
				t.Fatal("the filter matches nothing: the test proves nothing")
			}
			// Two sockets on two CPUs may interleave differently in the two
			// ring buffers; the order within a socket is tested elsewhere.
			slices.Sort(have)
			slices.Sort(want)
			// A transition in softirq (a packet, a timewait timer) that
			// interrupts one tracer's program on the same CPU is skipped by
			// the kernel for that tracer only (counted, Stats.Skipped and
			// SkippedTimers): such a difference must be counted.
			onlyWant, onlyHave := minus(want, have), minus(have, want)
			lost, refLost := stats.AllLost()+stats.SkippedTimers, refStats.AllLost()+refStats.SkippedTimers
			if uint64(len(onlyWant)) > lost || uint64(len(onlyHave)) > refLost {
				t.Errorf("kernel-filtered events differ from Match on all events beyond what the kernel counted as lost or skipped (%v; %v):\n got %v\nwant %v\nonly in got %v\nonly in want %v",
					stats, refStats, have, want, onlyHave, onlyWant)
			} else if len(onlyWant)+len(onlyHave) > 0 {
				t.Logf("the kernel skipped %v for the filtered tracer and %v for the other (counted as lost)", onlyWant, onlyHave)
			}
			// (unknown owners pass the kernel's pid and comm filters)
			if stats.Filtered == 0 && tc.f.PIDs == nil && tc.f.Comm == "" && tc.name != "netns" && tc.name != "addr ipv4 cidr" {
				t.Error("nothing filtered in the kernel")
			}
		})
	}
}

// minus is a without the elements of b (multisets, both sorted).
func minus(a, b []string) []string {
	var out []string
	for i, j := 0, 0; i < len(a); i++ {
		for j < len(b) && b[j] < a[i] {
			j++
		}
		if j < len(b) && b[j] == a[i] {
			j++
			continue
		}
		out = append(out, a[i])
	}
	return out
}

func resolveOwnNetNS() (uint32, error) {
	fi, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		return 0, err
	}
	return uint32(fi.Sys().(*syscall.Stat_t).Ino), nil
}

// A ring buffer of one page, a reader that stalls, and a burst of connections:
// the loss is reported to the sink and adds up with what was delivered.
func TestLostEventsAreReported(t *testing.T) {
	// In a namespace of its own, filtered to it: the host's other traffic,
	// which goes on while the tracer stops, only counts as filtered.
	ns := newNetNS(t)
	col := &collector{slow: 500 * time.Millisecond}
	r := startRaw(t, tracer.Config{RingBufferSize: os.Getpagesize(), Filter: tracer.Filter{NetNS: ns.Inode}}, col)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ns.Do(t, func() {
		for range 200 {
			c, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
	})
	time.Sleep(time.Second)
	// Counted with the programs detached: the host's other traffic goes
	// on, and counts as filtered between reads of the counters.
	r.detachAtStop = true
	stats := r.stop()
	col.mu.Lock()
	defer col.mu.Unlock()
	t.Logf("seen %d, delivered %d, lost %d in %d reports", stats.Seen, len(col.events), col.lost, col.nLost)
	if col.lost == 0 || col.nLost == 0 {
		t.Fatal("no loss reported to the sink")
	}
	if col.lost != stats.AllLost() {
		t.Errorf("sink was told of %d lost events, the kernel counted %d (%d skipped)", col.lost, stats.AllLost(), stats.Skipped)
	}
	if got := uint64(len(col.events)) + stats.Filtered + stats.Lost; got != stats.Seen {
		t.Errorf("delivered %d + filtered %d + lost %d = %d, but %d were seen", len(col.events), stats.Filtered, stats.Lost, got, stats.Seen)
	}
}

func TestNewErrors(t *testing.T) {
	requireRoot(t)
	if _, err := tracer.New(tracer.Config{KernelBTF: "/nonexistent/vmlinux"}); !errors.Is(err, tracer.ErrNoBTF) ||
		!strings.Contains(err.Error(), "/nonexistent/vmlinux does not exist") {
		t.Errorf("missing BTF: %v", err)
	}
	if _, err := tracer.New(tracer.Config{RingBufferSize: 12345}); err == nil || !strings.Contains(err.Error(), "power of two") {
		t.Errorf("bad ring size: %v", err)
	}
	if _, err := tracer.New(tracer.Config{Filter: tracer.Filter{Comm: strings.Repeat("x", 16)}}); err == nil {
		t.Error("16-byte comm accepted")
	}
}

func BenchmarkAttach(b *testing.B) {
	requireRoot(b)
	for b.Loop() {
		tr, err := tracer.New(tracer.Config{})
		if err != nil {
			b.Fatal(err)
		}
		tr.Close()
	}
}
