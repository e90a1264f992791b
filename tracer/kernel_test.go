// SPDX-License-Identifier: Apache-2.0

package tracer

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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
	mu     sync.Mutex
	events []Event
	lost   uint64
	nLost  int
	slow   time.Duration // sleep in the first Event call, to let the ring fill
}

func (c *collector) Event(e *Event) error {
	c.mu.Lock()
	slow := c.slow
	c.slow = 0
	if e.Type == EventLost {
		c.lost += e.Lost
		c.nLost++
	} else {
		c.events = append(c.events, *e)
	}
	c.mu.Unlock()
	time.Sleep(slow)
	return nil
}

func (c *collector) Idle() error { return nil }

// socket returns the events of the socket matching pick, in order.
func (c *collector) socket(pick func(*Event) bool) []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var cookie uint64
	for i := range c.events {
		if pick(&c.events[i]) {
			cookie = c.events[i].Cookie
			break
		}
	}
	var out []Event
	for _, e := range c.events {
		if cookie != 0 && e.Cookie == cookie {
			out = append(out, e)
		}
	}
	return out
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.events)
}

// running is a tracer reading into a collector until stop.
type running struct {
	tr   *Tracer
	col  *collector
	stop func() Stats
}

func startTracer(t *testing.T, cfg Config, col *collector) *running {
	t.Helper()
	requireRoot(t)
	start := time.Now()
	tr, err := New(cfg)
	if err != nil {
		t.Fatalf("starting tracer: %v", err)
	}
	t.Logf("tracer attached in %v", time.Since(start).Round(time.Millisecond))
	if col == nil {
		col = &collector{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, col) }()
	var once sync.Once
	var stats Stats
	stop := func() Stats {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
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
	return &running{tr: tr, col: col, stop: stop}
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

func transitions(evs []Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Old.String() + "->" + e.New.String()
	}
	return out
}

func ends(evs []Event, last string) bool {
	return len(evs) > 0 && transitions(evs)[len(evs)-1] == last
}

func assertSequence(t *testing.T, who string, evs []Event, want ...string) {
	t.Helper()
	if got := transitions(evs); !slices.Equal(got, want) {
		t.Errorf("%s transitions:\n got %v\nwant %v", who, got, want)
	}
}

// assertDurations checks that every state but the first was seen to begin, and
// that the time reported in it is exactly the gap between the two events.
func assertDurations(t *testing.T, who string, evs []Event) {
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

func assertOwner(t *testing.T, who string, evs []Event, pid int) {
	t.Helper()
	for _, e := range evs {
		if !e.OwnerKnown() || e.Owner.PID != uint32(pid) {
			t.Errorf("%s: %v->%v: owner %d (%s, known %v), want %d", who, e.Old, e.New, e.Owner.PID, e.OwnerFrom, e.OwnerKnown(), pid)
		}
	}
}

func assertEndpoints(t *testing.T, who string, evs []Event, local, remote netip.AddrPort) {
	t.Helper()
	for i, e := range evs {
		wantLocal := local
		if i == 0 && e.Old == Close && e.New == SynSent {
			wantLocal = netip.AddrPortFrom(local.Addr(), 0) // the port is picked after the transition
		}
		if e.Local != wantLocal || e.Remote != remote {
			t.Errorf("%s: %v->%v: %v -> %v, want %v -> %v", who, e.Old, e.New, e.Local, e.Remote, wantLocal, remote)
		}
		fam := IPv4
		if local.Addr().Is6() {
			fam = IPv6
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
	r := startTracer(t, Config{}, nil)
	ln, srv := listen(t, network, addr)
	cl := startChild(t, "client", []string{"ADDR=" + srv.String()})
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &pair{r: r, srv: srv, cl: cl, conn: conn}
}

func (p *pair) isClient(e *Event) bool { return e.Remote == p.srv && e.New == SynSent }
func (p *pair) isServer(e *Event) bool { return e.Local == p.srv && e.Remote.Port() == p.cl.port }

// waitEnds waits until the client's and the server's last transitions are
// clientLast and serverLast, and returns their events.
func (p *pair) waitEnds(t *testing.T, clientLast, serverLast string) (client, server []Event) {
	t.Helper()
	eventually(t, "client "+clientLast+", server "+serverLast, func() bool {
		return ends(p.r.col.socket(p.isClient), clientLast) && ends(p.r.col.socket(p.isServer), serverLast)
	})
	return p.r.col.socket(p.isClient), p.r.col.socket(p.isServer)
}

// checkSocket asserts a socket's whole report: its transitions, its owner, the
// time in each state and its endpoints.
func checkSocket(t *testing.T, who string, evs []Event, pid int, local, remote netip.AddrPort, want ...string) {
	t.Helper()
	assertSequence(t, who, evs, want...)
	assertOwner(t, who, evs, pid)
	assertDurations(t, who, evs)
	assertEndpoints(t, who, evs, local, remote)
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
			time.Sleep(100 * time.Millisecond) // the client reaches FIN_WAIT2 first
			p.conn.Close()

			client, server := p.waitEnds(t, "FIN_WAIT2->CLOSE", "LAST_ACK->CLOSE")
			checkSocket(t, "client", client, p.cl.pid(), p.cl.local, p.srv,
				"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE")
			checkSocket(t, "server", server, os.Getpid(), p.srv, p.cl.local,
				"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE")
			if len(client) == 5 {
				if client[0].OwnerFrom != OwnerConnect || client[2].OwnerFrom != OwnerClose {
					t.Errorf("client owner learnt from %v at connect, %v at close", client[0].OwnerFrom, client[2].OwnerFrom)
				}
			}
			if len(server) == 5 {
				if server[0].OwnerFrom != OwnerListener || server[3].OwnerFrom != OwnerClose {
					t.Errorf("server owner learnt from %v at SYN_RECV, %v at LAST_ACK", server[0].OwnerFrom, server[3].OwnerFrom)
				}
				// The server sat in CLOSE_WAIT for the 100 ms it slept before close().
				if d := server[3].Duration; d < 100*time.Millisecond || d > 150*time.Millisecond {
					t.Errorf("server CLOSE_WAIT lasted %v, want 100ms (+50ms)", d)
				}
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
	client, _ := p.waitEnds(t, "FIN_WAIT2->CLOSE", "ESTABLISHED->CLOSE_WAIT")
	checkSocket(t, "client", client, p.cl.pid(), p.cl.local, p.srv,
		"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE")
}

func TestServerClosesFirst(t *testing.T) {
	const hold = 1500 * time.Millisecond
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			p := newPair(t, fam.network, fam.loopback)
			// Like an application that leaks the socket for a while: it does
			// not read, so the peer's FIN is always handled in softirq (a
			// reader holding the socket lock would process it itself).
			p.cl.send(t, "hold "+hold.String())
			p.conn.Close()
			p.cl.expect(t, "closed")

			client, server := p.waitEnds(t, "LAST_ACK->CLOSE", "FIN_WAIT2->CLOSE")
			checkSocket(t, "client", client, p.cl.pid(), p.cl.local, p.srv,
				"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE")
			checkSocket(t, "server", server, os.Getpid(), p.srv, p.cl.local,
				"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE")
			if len(client) != 5 {
				return
			}
			// The peer's FIN is handled in softirq: the task on the CPU is not
			// the client, yet the client is reported as the owner.
			if cw := client[2]; cw.OnCPU.PID == uint32(p.cl.pid()) {
				t.Errorf("ESTABLISHED->CLOSE_WAIT ran on the client's own task (%d): the test proves nothing", cw.OnCPU.PID)
			}
			// CLOSE_WAIT lasts until the application's close(): the hold, within 5%.
			if d := client[3].Duration; d < hold-hold/20 || d > hold+hold/20 {
				t.Errorf("client CLOSE_WAIT lasted %v, want %v (±5%%)", d, hold)
			} else {
				t.Logf("client CLOSE_WAIT lasted %v for a %v hold", d, hold)
			}
		})
	}
}

func TestConnectionRefused(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			// A port nobody listens on: bind one, note it, close it.
			ln, dst := listen(t, fam.network, fam.loopback)
			ln.Close()
			r := startTracer(t, Config{}, nil)
			if c, err := net.Dial(fam.network, dst.String()); err == nil {
				c.Close()
				t.Fatalf("connect to %v succeeded", dst)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("connect: %v, want ECONNREFUSED", err)
			}
			isClient := func(e *Event) bool { return e.Remote == dst && e.New == SynSent }
			eventually(t, "the refused socket closed", func() bool { return ends(r.col.socket(isClient), "SYN_SENT->CLOSE") })
			client := r.col.socket(isClient)
			assertSequence(t, "client", client, "CLOSE->SYN_SENT", "SYN_SENT->CLOSE")
			assertOwner(t, "client", client, os.Getpid())
			assertDurations(t, "client", client)
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
			r := startTracer(t, Config{}, nil)
			ln, srv := listen(t, fam.network, fam.loopback)
			time.Sleep(hold)
			ln.Close()
			isListener := func(e *Event) bool { return e.Local == srv && e.New == Listen }
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
			if len(evs) == 2 {
				if evs[0].OwnerFrom != OwnerListen || evs[1].OwnerFrom != OwnerClose {
					t.Errorf("owner learnt from %v, %v; want listen, close", evs[0].OwnerFrom, evs[1].OwnerFrom)
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
	r := startTracer(t, Config{}, nil)
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

	isServer := func(e *Event) bool { return e.Local == srv && e.Remote == local }
	eventually(t, "the accepted socket closed", func() bool { return ends(r.col.socket(isServer), "LAST_ACK->CLOSE") })
	server := r.col.socket(isServer)
	assertSequence(t, "accepted", server,
		"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE")
	assertOwner(t, "before accept", server[:2], os.Getpid())
	assertOwner(t, "after accept", server[2:], acc.pid())
	if len(server) == 5 {
		for i, want := range []OwnerSource{OwnerListener, OwnerListener, OwnerIO, OwnerClose, OwnerClose} {
			if server[i].OwnerFrom != want {
				t.Errorf("%v->%v: owner learnt from %v, want %v", server[i].Old, server[i].New, server[i].OwnerFrom, want)
			}
		}
	}
}

// A connection made before the tracer started: its owner was never observed,
// so it is reported unknown (not as the task on the CPU), and so is the time
// spent in the state it was in.
func TestSocketOlderThanTracer(t *testing.T) {
	requireRoot(t)
	ln, srv := listen(t, "tcp4", "127.0.0.1:0")
	cl := startChild(t, "client", []string{"ADDR=" + srv.String()})
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	r := startTracer(t, Config{}, nil)
	conn.Close()
	isClient := func(e *Event) bool { return e.Local == cl.local }
	isServer := func(e *Event) bool { return e.Local == srv && e.Remote == cl.local }
	// The client does nothing with its socket until CLOSE_WAIT is reported.
	eventually(t, "the client in CLOSE_WAIT", func() bool { return ends(r.col.socket(isClient), "ESTABLISHED->CLOSE_WAIT") })
	cl.send(t, "close")
	cl.expect(t, "closed")
	eventually(t, "both sockets closed", func() bool {
		return ends(r.col.socket(isClient), "LAST_ACK->CLOSE") && ends(r.col.socket(isServer), "FIN_WAIT2->CLOSE")
	})
	client, server := r.col.socket(isClient), r.col.socket(isServer)
	assertSequence(t, "client", client, "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE")
	assertSequence(t, "server", server, "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE")
	assertDurations(t, "client", client)
	assertDurations(t, "server", server)
	if cw := client[0]; cw.OwnerKnown() {
		t.Errorf("ESTABLISHED->CLOSE_WAIT of a socket older than the tracer names owner %d (%s from %v)", cw.Owner.PID, cw.Owner.Comm, cw.OwnerFrom)
	}
	// Its close() names it.
	assertOwner(t, "client after its close()", client[1:], cl.pid())
	// close() names the server's owner at once.
	assertOwner(t, "server", server, os.Getpid())
}

// The in-kernel filter must agree with Filter.Match: a tracer filtering in the
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
	ours := func(e *Event) bool {
		for _, p := range []uint16{srv4.Port(), srv6.Port()} {
			if e.Local.Port() == p || e.Remote.Port() == p {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		name string
		f    Filter
	}{
		{"port", Filter{Ports: []uint16{srv4.Port()}}},
		{"lport", Filter{LPorts: []uint16{srv6.Port()}}},
		{"rport", Filter{RPorts: []uint16{srv4.Port(), srv6.Port()}}},
		{"addr ipv4", Filter{Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}},
		{"addr ipv4 cidr", Filter{Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}},
		{"addr ipv6", Filter{Addrs: []netip.Prefix{netip.MustParsePrefix("::1/128")}}},
		{"family", Filter{Family: IPv6}},
		{"states", Filter{States: 1<<CloseWait | 1<<LastAck}},
		{"pid", Filter{PIDs: []uint32{uint32(os.Getpid())}}},
		{"comm", Filter{Comm: "tracer.test"}},
		{"netns", Filter{NetNS: netns}},
		{"all at once", Filter{Ports: []uint16{srv6.Port()}, Family: IPv6, States: 1 << SynSent, PIDs: []uint32{uint32(os.Getpid())}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := startTracer(t, Config{}, nil)
			got := startTracer(t, Config{Filter: tc.f}, nil)
			for _, dst := range []netip.AddrPort{srv4, srv6} {
				c, err := net.Dial("tcp", dst.String())
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
			}
			time.Sleep(200 * time.Millisecond)
			stats := got.stop()
			ref.stop()
			key := func(e Event) string { return fmt.Sprintf("%d %v->%v", e.Cookie, e.Old, e.New) }
			var want, have []string
			for _, e := range ref.col.events {
				if ours(&e) && tc.f.Match(&e) {
					want = append(want, key(e))
				}
			}
			for _, e := range got.col.events {
				if ours(&e) {
					have = append(have, key(e))
				}
				if !tc.f.Match(&e) {
					t.Errorf("the kernel let through what Match rejects: %+v", e)
				}
			}
			if len(want) == 0 {
				t.Fatal("the filter matches nothing: the test proves nothing")
			}
			// Two sockets on two CPUs may interleave differently in the two
			// ring buffers; the order within a socket is tested elsewhere.
			slices.Sort(have)
			slices.Sort(want)
			if !slices.Equal(have, want) {
				t.Errorf("kernel-filtered events differ from Match on all events:\n got %v\nwant %v", have, want)
			}
			if stats.Filtered == 0 && tc.name != "netns" && tc.name != "addr ipv4 cidr" {
				t.Error("nothing filtered in the kernel")
			}
		})
	}
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
	col := &collector{slow: 500 * time.Millisecond}
	r := startTracer(t, Config{RingBufferSize: os.Getpagesize()}, col)
	ln, srv := listen(t, "tcp4", "127.0.0.1:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for range 200 {
		c, err := net.Dial("tcp4", srv.String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	time.Sleep(time.Second)
	stats := r.stop()
	col.mu.Lock()
	defer col.mu.Unlock()
	t.Logf("seen %d, delivered %d, lost %d in %d reports", stats.Seen, len(col.events), col.lost, col.nLost)
	if col.lost == 0 || col.nLost == 0 {
		t.Fatal("no loss reported to the sink")
	}
	if col.lost != stats.Lost {
		t.Errorf("sink was told of %d lost events, the kernel counted %d", col.lost, stats.Lost)
	}
	if got := uint64(len(col.events)) + stats.Filtered + stats.Lost; got != stats.Seen {
		t.Errorf("delivered %d + filtered %d + lost %d = %d, but %d were seen", len(col.events), stats.Filtered, stats.Lost, got, stats.Seen)
	}
}

func TestNewErrors(t *testing.T) {
	requireRoot(t)
	if _, err := New(Config{KernelBTF: "/nonexistent/vmlinux"}); !errors.Is(err, ErrNoBTF) ||
		!strings.Contains(err.Error(), "CONFIG_DEBUG_INFO_BTF") {
		t.Errorf("missing BTF: %v", err)
	}
	if _, err := New(Config{RingBufferSize: 12345}); err == nil || !strings.Contains(err.Error(), "power of two") {
		t.Errorf("bad ring size: %v", err)
	}
	if _, err := New(Config{Filter: Filter{Comm: strings.Repeat("x", 16)}}); err == nil {
		t.Error("16-byte comm accepted")
	}
}

func BenchmarkAttach(b *testing.B) {
	requireRoot(b)
	for b.Loop() {
		tr, err := New(Config{})
		if err != nil {
			b.Fatal(err)
		}
		tr.Close()
	}
}
