// SPDX-License-Identifier: Apache-2.0

package tracer_test

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/internal/testnet"
	"github.com/tcpstate/tcpstate/tracer"
)

// The walk and sock_diag (what ss reads) agree on a namespace's timewait
// sockets, TIME_WAIT and FIN_WAIT2 alike, IPv4, IPv6 and IPv4 on an IPv6
// socket: nothing is found by one only, and each has its state, endpoints
// and the time left on its timer.
func TestWalkAndSockDiagAgreeOnTimewait(t *testing.T) {
	requireRoot(t)
	ns := testnet.New(t, "net.ipv4.tcp_fin_timeout=30")
	var want []conn
	begin := time.Now() // before any timer is armed
	ns.Do(t, func() {
		for _, c := range []struct{ network, listen, dial string }{
			{"tcp4", "127.0.0.1:0", "127.0.0.1"},
			{"tcp6", "[::1]:0", "::1"},
			{"tcp", "[::]:0", "127.0.0.1"}, // dual-stack listener: v4-mapped sockets
		} {
			ln, err := net.Listen(c.network, c.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			for _, serverFirst := range []bool{true, false} {
				cl, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr(c.dial), uint16(port)).String())
				if err != nil {
					t.Fatal(err)
				}
				sv, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				srvEnd := conn{local: addrPort(sv.LocalAddr()), remote: addrPort(sv.RemoteAddr())}
				cliEnd := conn{local: addrPort(cl.LocalAddr()), remote: addrPort(cl.RemoteAddr())}
				if serverFirst {
					// The server closes, then the client: the server's end
					// in TIME_WAIT.
					sv.Close()
					time.Sleep(20 * time.Millisecond)
					cl.Close()
					srvEnd.state = tracer.TimeWait
					want = append(want, srvEnd)
				} else {
					// The client closes, the server never: the client's
					// orphaned FIN_WAIT2 in a timewait socket.
					cl.Close()
					t.Cleanup(func() { sv.Close() })
					cliEnd.state = tracer.FinWait2
					want = append(want, cliEnd)
				}
			}
		}
	})
	time.Sleep(100 * time.Millisecond)
	r := startRaw(t, tracer.Config{}, nil)
	socks, nss, err := r.tr.ScanAll(tracer.ScanOptions{TimeWait: true})
	if err != nil {
		t.Fatal(err)
	}
	var diag []tracer.Socket
	var diagErr error
	ns.Do(t, func() { diag, diagErr = tracer.DiagTimewait(ns.Inode, 30*time.Second, tracer.BootNow()) })
	sources := []struct {
		name  string
		socks []tracer.Socket
	}{{"walk", socks}, {"sock_diag", diag}}
	if diagErr != nil {
		// A kernel without the inet_diag module at hand (a VM without
		// modules): the walk must stand alone.
		t.Logf("sock_diag unavailable (%v): checking the walk alone", diagErr)
		sources = sources[:1]
	}
	for _, n := range nss {
		if n.Inode == ns.Inode && n.DiagOnly != 0 {
			t.Errorf("%d timewait sockets found by sock_diag only", n.DiagOnly)
		}
	}
	key := func(s tracer.Socket) conn { return conn{s.Local, s.Remote, s.State} }
	// The walk has every end, in its state. A client's orphaned FIN_WAIT2
	// is a timewait socket, unless its FIN's ACK came while close() still
	// held the socket: then the kernel keeps the full socket in FIN_WAIT2
	// (its keepalive timer counting tcp_fin_timeout). Timewait sockets are
	// what sock_diag lists, and it must list the same.
	var walkAll, walkTW []conn
	for _, s := range socks {
		if s.NetNS == ns.Inode && (s.Timewait || s.State == tracer.FinWait2) {
			walkAll = append(walkAll, key(s))
			if s.Timewait {
				walkTW = append(walkTW, key(s))
			}
		}
	}
	for _, w := range want {
		if !slices.Contains(walkAll, w) {
			t.Errorf("walk: missing %v (has %v)", w, walkAll)
		}
	}
	for _, src := range sources {
		var got []conn
		for _, s := range src.socks {
			if s.NetNS != ns.Inode || !s.Timewait {
				continue
			}
			got = append(got, key(s))
			total := tracer.TimewaitLen
			if s.State == tracer.FinWait2 {
				total = 30 * time.Second
			}
			// Armed after begin, read now: at most what has passed since
			// is gone from the timer (a jiffy or two of rounding aside).
			if least := total - time.Since(begin) - 20*time.Millisecond; s.ExpiresIn < least || s.ExpiresIn > total || s.Since == 0 {
				t.Errorf("%s: %v %v %v expires in %v, since %d; want between %v and %v", src.name, s.Local, s.Remote, s.State, s.ExpiresIn, s.Since, least, total)
			}
		}
		slices.SortFunc(got, compareConn)
		slices.SortFunc(walkTW, compareConn)
		if !slices.Equal(got, walkTW) {
			t.Errorf("%s: timewait sockets %v, the walk's %v", src.name, got, walkTW)
		}
		if len(got) < 3 {
			t.Errorf("%s: %d timewait sockets, want at least the 3 TIME_WAIT: %v", src.name, len(got), got)
		}
	}
}

func compareConn(a, b conn) int { return strings.Compare(a.String(), b.String()) }

type conn struct {
	local, remote netip.AddrPort
	state         tracer.State
}

func (c conn) String() string {
	return c.local.String() + " " + c.remote.String() + " " + c.state.String()
}

func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// nlmsg is a netlink message of the given type carrying data, padded to the
// 4-byte alignment the kernel keeps between messages.
func nlmsg(typ uint16, data []byte) []byte {
	m := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(data)+3)
	binary.NativeEndian.PutUint32(m[0:], uint32(unix.NLMSG_HDRLEN+len(data)))
	binary.NativeEndian.PutUint16(m[4:], typ)
	m = append(m, data...)
	for len(m)%unix.NLMSG_ALIGNTO != 0 {
		m = append(m, 0)
	}
	return m
}

// One read of a sock_diag dump holds many messages, each padded to its
// alignment: every socket message is handed over whole, in order, and the
// dump ends at NLMSG_DONE or NLMSG_ERROR (with its errno); a message longer
// than the read is an error, not a read past it.
func TestEachDiagMessage(t *testing.T) {
	errMsg := func(errno int32) []byte {
		b := make([]byte, 20) // nlmsgerr: the errno and the request's header
		binary.NativeEndian.PutUint32(b, uint32(-errno))
		return b
	}
	var read []byte
	want := [][]byte{[]byte("one socket"), []byte("a second, odd-sized"), make([]byte, 72)}
	for _, w := range want {
		read = append(read, nlmsg(unix.SOCK_DIAG_BY_FAMILY, w)...)
	}
	for _, c := range []struct {
		name string
		tail []byte
		done bool
		err  error
	}{
		{"more to read", nil, false, nil},
		{"done", nlmsg(unix.NLMSG_DONE, []byte{0, 0, 0, 0}), true, nil},
		{"done, failed", nlmsg(unix.NLMSG_DONE, errMsg(int32(unix.ENOBUFS))[:4]), true, unix.ENOBUFS},
		{"error 0", nlmsg(unix.NLMSG_ERROR, errMsg(0)), true, nil},
		{"error", nlmsg(unix.NLMSG_ERROR, errMsg(int32(unix.EPERM))), true, unix.EPERM},
	} {
		var got [][]byte
		done, err := tracer.EachDiagMessage(append(slices.Clip(read), c.tail...), func(m []byte) { got = append(got, slices.Clone(m)) })
		if done != c.done || !errors.Is(err, c.err) || (err == nil) != (c.err == nil) {
			t.Errorf("%s: done %v, err %v; want %v, %v", c.name, done, err, c.done, c.err)
		}
		if !slices.EqualFunc(got, want, slices.Equal) {
			t.Errorf("%s: messages %q, want %q", c.name, got, want)
		}
	}
	// The last message says it is longer than what was read.
	short := slices.Clone(read)
	binary.NativeEndian.PutUint32(short[len(short)-len(nlmsg(0, want[2])):], 4096)
	if done, err := tracer.EachDiagMessage(short, func([]byte) {}); !done || err == nil {
		t.Errorf("a message past the read: done %v, err %v; want an error", done, err)
	}
}

// The walk dates a TIME_WAIT older than the tracer from its timer
// (TCP_TIMEWAIT_LEN before the expiry, as watch and ss's timer column do), so
// the state's end carries its whole duration, not one counted from the
// tracer's start. A restart of its timer by a stray segment keeps that date;
// a walk that read the timer of a FIN_WAIT2 turned TIME_WAIT before its
// re-arm (made on purpose here) is dated by the re-armed timer. A timewait
// FIN_WAIT2 stays a lower bound: its timeout is the namespace's or the
// socket's own.
func TestWalkDatesTimewait(t *testing.T) {
	// (RFC 1337: the peer's RST, answering the ACK that a stray segment
	// draws from TIME_WAIT, does not end it)
	ns := newNetNS(t, "net.ipv4.tcp_rfc1337=1")
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	srv := parseAddrPort(ln.Addr().String())
	// The server closes first: its end in FIN_WAIT2, then TIME_WAIT when
	// the client's FIN arrives (on loopback, within the close, or soon
	// after in softirq).
	cl1, cl2 := serverClosesFirst(t, ns, ln), serverClosesFirst(t, ns, ln)
	restarted := conn{local: srv, remote: addrPort(cl1.LocalAddr()), state: tracer.TimeWait}
	raced := conn{local: srv, remote: addrPort(cl2.LocalAddr()), state: tracer.TimeWait}
	time.Sleep(50 * time.Millisecond)
	twFrom := tracer.BootNow()
	cl1.Close()
	time.Sleep(20 * time.Millisecond)
	twTo := tracer.BootNow()
	cl2.Close()
	// The client closes, the server never: an orphaned FIN_WAIT2.
	cl := ns.Dial(t, "tcp4", ln.Addr().String())
	sv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sv.Close() })
	fw2 := conn{local: addrPort(cl.LocalAddr()), remote: addrPort(cl.RemoteAddr()), state: tracer.FinWait2}
	cl.Close()
	// Long enough that a start counted from the tracer's is told apart.
	time.Sleep(3 * time.Second)
	r := startRaw(t, tracer.Config{}, nil)
	socks, _, err := r.tr.ScanAll(tracer.ScanOptions{TimeWait: true})
	if err != nil {
		t.Fatal(err)
	}
	found := map[conn]tracer.Socket{}
	for _, s := range socks {
		if s.NetNS == ns.Inode && s.Timewait {
			found[conn{s.Local, s.Remote, s.State}] = s
		}
	}
	since := func(s tracer.Socket) (uint64, bool, bool) {
		t.Helper()
		state, since, lower, walkDated, followed, err := r.tr.TimewaitSince(s.Cookie)
		switch {
		case err != nil:
			t.Fatal(err)
		case !followed:
			t.Fatalf("%v %v: not followed", s.Local, s.Remote)
		case state != s.State:
			t.Fatalf("%v %v: followed in %v, walked in %v", s.Local, s.Remote, state, s.State)
		}
		return since, lower, walkDated
	}
	if s, ok := found[fw2]; ok {
		if _, lower, _ := since(s); !lower {
			t.Errorf("%v: dated as known, want a lower bound", fw2)
		}
	} else {
		// Its FIN's ACK came while close() still held the socket: the
		// kernel kept the full one (see the test above).
		t.Logf("%v: not a timewait socket: not checked", fw2)
	}
	walked := map[conn]uint64{}
	for _, c := range []conn{restarted, raced} {
		s, ok := found[c]
		if !ok {
			t.Fatalf("the walk did not find %v", c)
		}
		// The same walk's record dates it too (user space, from the same
		// timer): the kernel side agrees within a jiffy (10 ms at the
		// lowest HZ).
		at, lower, walkDated := since(s)
		if d := time.Duration(int64(at - s.Since)); lower || !walkDated || d < -10*time.Millisecond || d > 10*time.Millisecond {
			t.Errorf("%v: dated %v from the walk's own date (lower bound %v, walk-dated %v), want the same, known", c, d, lower, walkDated)
		}
		walked[c] = at
	}
	// And the clock agrees: TIME_WAIT began during the client's close, or
	// its softirq on a loaded machine (a start counted from the tracer's
	// would be 3 s late).
	if at := walked[restarted]; at+uint64(50*time.Millisecond) < twFrom || at > twTo+uint64(time.Second) {
		t.Errorf("%v: dated %.3f s after the client's close, want within [-0.05, %.3f + 1] s",
			restarted, float64(int64(at-twFrom))/1e9, float64(twTo-twFrom)/1e9)
	}

	// A segment to a TIME_WAIT socket restarts its timer for 60 s (an ACK
	// here; a lost last ACK's retransmitted FIN would). The kernel may move
	// the timer (a timer_start) or only rewrite its expiry in place: the
	// next event finds out. A SYN from the same port ends it early (the
	// port reused): that event.
	restart := func(c conn) (j0, j1 uint64, sent uint64) {
		t.Helper()
		j0, ok := tracer.JiffiesNow()
		if !ok {
			t.Skip("this kernel shows no jiffies (/proc/schedstat, /proc/timer_list)")
		}
		sent = tracer.BootNow()
		ns.Do(t, func() { sendTCPAck(t, c.remote, c.local) })
		j1, _ = tracer.JiffiesNow()
		return j0, j1, sent
	}
	reuse := func(c conn) {
		t.Helper()
		var cl net.Conn
		ns.Do(t, func() { cl = dialFrom(t, c.remote.String(), c.local.String()) })
		defer cl.Close()
		sv, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		sv.Close()
	}
	time.Sleep(100 * time.Millisecond) // (well past the walk's jiffy)
	restart(restarted)
	reuse(restarted)
	if at, lower, walkDated := since(found[restarted]); at != walked[restarted] || lower || walkDated {
		t.Errorf("%v: restarted, then ended: dated %d (lower bound %v, walk-dated %v), want %d as before",
			restarted, at, lower, walkDated, walked[restarted])
	}

	// The race: made by having the kernel side take the restart for the
	// re-arm of a FIN_WAIT2 turned TIME_WAIT right after the walk read it.
	// Told apart by the new expiry within a jiffy of the walk.
	for range 10 {
		j0, j1, sent := restart(raced)
		if j1-j0 > 1 {
			continue // (too slow to tell: a jiffy passed)
		}
		if err := r.tr.TimewaitWalkedAt(found[raced].Cookie, j0); err != nil {
			t.Fatal(err)
		}
		reuse(raced)
		at, lower, walkDated := since(found[raced])
		if lower || walkDated || at+uint64(20*time.Millisecond) < sent || at > tracer.BootNow() {
			t.Errorf("%v: the walk raced the re-arm: dated %.3f s after the restart (lower bound %v, walk-dated %v), want at it, known",
				raced, float64(int64(at-sent))/1e9, lower, walkDated)
		}
		return
	}
	t.Skip("no restart within a jiffy in 10 tries (a loaded machine): the race not checked")
}

// sendTCPAck sends one bare ACK from one IPv4 endpoint to another through a
// raw socket (in the caller's namespace), as a peer's stray segment.
func sendTCPAck(t *testing.T, from, to netip.AddrPort) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], from.Port())
	binary.BigEndian.PutUint16(h[2:], to.Port())
	binary.BigEndian.PutUint32(h[4:], 1)     // seq: out of window (any ACK restarts TIME_WAIT)
	binary.BigEndian.PutUint32(h[8:], 1)     // ack
	h[12] = 5 << 4                           // data offset: 20 bytes
	h[13] = 0x10                             // ACK
	binary.BigEndian.PutUint16(h[14:], 1024) // window
	// The checksum covers the pseudo-header: addresses, protocol, length.
	src, dst := from.Addr().As4(), to.Addr().As4()
	pseudo := append(append(append(src[:], dst[:]...), 0, unix.IPPROTO_TCP, 0, byte(len(h))), h...)
	var sum uint32
	for i := 0; i < len(pseudo); i += 2 {
		sum += uint32(pseudo[i])<<8 | uint32(pseudo[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(h[16:], ^uint16(sum))
	if err := unix.Sendto(fd, h, 0, &unix.SockaddrInet4{Addr: dst}); err != nil {
		t.Fatal(err)
	}
}
