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
// (TCP_TIMEWAIT_LEN before the expiry, as ss's timer column implies), so the
// state's end carries its whole duration, not one counted from the tracer's
// start. A timewait FIN_WAIT2 stays a lower bound: its timeout is the
// namespace's or the socket's own, and may have been cut short.
func TestWalkDatesTimewait(t *testing.T) {
	requireRoot(t)
	ns := testnet.New(t)
	var tw, fw2 conn
	var twFrom, twTo uint64
	ns.Do(t, func() {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		pair := func() (cl, sv net.Conn) {
			cl, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			sv, err = ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			return cl, sv
		}
		// The server closes first: its end in FIN_WAIT2, then TIME_WAIT
		// when the client's FIN arrives (on loopback, within the close).
		cl, sv := pair()
		tw = conn{local: addrPort(sv.LocalAddr()), remote: addrPort(sv.RemoteAddr()), state: tracer.TimeWait}
		sv.Close()
		time.Sleep(50 * time.Millisecond)
		twFrom = tracer.BootNow()
		cl.Close()
		time.Sleep(20 * time.Millisecond)
		twTo = tracer.BootNow()
		// The client closes, the server never: an orphaned FIN_WAIT2.
		cl, sv = pair()
		t.Cleanup(func() { sv.Close() })
		fw2 = conn{local: addrPort(cl.LocalAddr()), remote: addrPort(cl.RemoteAddr()), state: tracer.FinWait2}
		cl.Close()
	})
	// Long enough that a start counted from the tracer's is told apart.
	time.Sleep(1500 * time.Millisecond)
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
	// A jiffy either side (10 ms at the lowest HZ), and the time between
	// reading jiffies and the clock.
	const slack = 50 * time.Millisecond
	for _, c := range []struct {
		conn
		exact bool
	}{{tw, true}, {fw2, false}} {
		s, ok := found[c.conn]
		if !ok {
			if c.state == tracer.FinWait2 {
				// Its FIN's ACK came while close() still held the socket:
				// the kernel kept the full one (see the test above).
				t.Logf("%v: not a timewait socket: not checked", c.conn)
				continue
			}
			t.Fatalf("the walk did not find %v", c.conn)
		}
		state, since, lower, followed, err := r.tr.TimewaitSince(s.Cookie)
		switch {
		case err != nil:
			t.Fatal(err)
		case !followed:
			t.Errorf("%v: not followed after the walk", c.conn)
		case state != c.state:
			t.Errorf("%v: followed in %v", c.conn, state)
		case c.exact && (lower || since+uint64(slack) < twFrom || since > twTo+uint64(slack)):
			t.Errorf("%v: dated %.3f s after the close (lower bound %v), want within %v of [0, %.3f s]",
				c.conn, float64(int64(since-twFrom))/1e9, lower, slack, float64(twTo-twFrom)/1e9)
		case !c.exact && !lower:
			t.Errorf("%v: dated as known (%d), want a lower bound", c.conn, since)
		}
	}
}
