// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// sock_diag (what ss uses) lists the timewait sockets of a namespace as a
// second source for the walk. The kernel's TCP iterator resumes each read at
// an offset in a hash bucket: sockets leaving the bucket between two reads
// can make it skip others on a busy host. A timewait socket is the one kind
// the tracer cannot learn about from its own events before it ends.

const (
	inetDiagReqV2Len = 56 // struct inet_diag_req_v2
	inetDiagMsgLen   = 72 // struct inet_diag_msg
	// (The kernel matches a timewait socket by its substate, so asking for
	// FIN_WAIT2 brings full sockets too: told apart by their timer.)
	diagTimerTW = 3 // inet_diag_msg.idiag_timer of a timewait socket
)

// diagTimewait lists the timewait sockets (TIME_WAIT or FIN_WAIT2) of the
// calling thread's network namespace. finTimeout dates a FIN_WAIT2 from its
// timer, as the walk does (0: unknown); scanned is when the list was taken.
func diagTimewait(netns uint32, finTimeout time.Duration, scanned uint64) ([]Socket, error) {
	var out []Socket
	err := eachDiagTimewait(netns, finTimeout, scanned, true, func(s *Socket) { out = append(out, *s) })
	return out, err
}

// eachDiagTimewait passes each timewait socket to f (s is reused), those in
// TIME_WAIT only with timeWait: a busy host has hundreds of thousands.
func eachDiagTimewait(netns uint32, finTimeout time.Duration, scanned uint64, timeWait bool, f func(s *Socket)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	states := uint32(1 << FinWait2)
	if timeWait {
		states |= 1 << TimeWait
	}
	var s Socket // (f copies what it keeps: one Socket for the dump, not one each)
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := diagDump(fd, family, states, func(m []byte) {
			var ok bool
			if s, ok = parseDiagMsg(m, netns, finTimeout, scanned); ok {
				f(&s)
			}
		}); err != nil {
			return err
		}
	}
	return nil
}

// diagDump asks for the timewait sockets of one family and passes each
// inet_diag_msg to f.
func diagDump(fd int, family uint8, states uint32, f func([]byte)) error {
	req := make([]byte, unix.NLMSG_HDRLEN+inetDiagReqV2Len)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence
	r := req[unix.NLMSG_HDRLEN:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], states)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag: %w", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("sock_diag: %w", err)
		}
		if done, err := eachDiagMessage(buf[:n], f); done || err != nil {
			return err
		}
	}
}

// eachDiagMessage passes the inet_diag_msg of each SOCK_DIAG_BY_FAMILY
// message of one read to f; done at the dump's end (NLMSG_DONE or
// NLMSG_ERROR: then the errno either carries, if any, is err). The messages are read in place
// (syscall.ParseNetlinkMessage would allocate a slice of them for every read:
// 15 MB for 100,000 timewait sockets).
func eachDiagMessage(b []byte, f func([]byte)) (done bool, err error) {
	ne := binary.NativeEndian
	for len(b) >= unix.NLMSG_HDRLEN {
		size := int(ne.Uint32(b[0:]))
		if size < unix.NLMSG_HDRLEN || size > len(b) {
			return true, fmt.Errorf("sock_diag: a %d-byte message in a %d-byte read", size, len(b))
		}
		data := b[unix.NLMSG_HDRLEN:size]
		switch ne.Uint16(b[4:]) {
		case unix.NLMSG_DONE:
			// (since Linux 4.15 it carries the dump's own errno)
			if len(data) >= 4 {
				if errno := int32(ne.Uint32(data)); errno < 0 {
					return true, fmt.Errorf("sock_diag: %w", unix.Errno(-errno))
				}
			}
			return true, nil
		case unix.NLMSG_ERROR:
			if len(data) >= 4 {
				if errno := int32(ne.Uint32(data)); errno != 0 {
					return true, fmt.Errorf("sock_diag: %w", unix.Errno(-errno))
				}
			}
			return true, nil
		case unix.SOCK_DIAG_BY_FAMILY:
			f(data)
		}
		b = b[min(nlmsgAlign(size), len(b)):]
	}
	return false, nil
}

// nlmsgAlign rounds a netlink message's length up to its alignment (NLMSG_ALIGN).
func nlmsgAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// diagEndpoints reads the family and endpoints of one inet_diag_msg into s,
// as the walk reports them; false for a family it does not know.
func diagEndpoints(m []byte, s *Socket) bool {
	id := m[4:52] // struct inet_diag_sockid
	sport, dport := binary.BigEndian.Uint16(id[0:]), binary.BigEndian.Uint16(id[2:])
	switch m[0] {
	case unix.AF_INET:
		s.Family = IPv4
		s.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(id[4:8])), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(id[20:24])), dport)
	case unix.AF_INET6:
		s.Family = IPv6
		src, dst := netip.AddrFrom16([16]byte(id[4:20])), netip.AddrFrom16([16]byte(id[20:36]))
		if dst.Is4In6() && (src.Is4In6() || src.IsUnspecified()) {
			// As the walk reports it (unmap_v4): an IPv4 connection on an
			// IPv6 socket, its local address unset or mapped.
			if src.IsUnspecified() {
				src = netip.IPv4Unspecified()
			}
			s.Family, src, dst = IPv4, src.Unmap(), dst.Unmap()
		}
		s.Local, s.Remote = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	default:
		return false
	}
	return true
}

// parseDiagMsg reads one inet_diag_msg of a timewait socket.
func parseDiagMsg(m []byte, netns uint32, finTimeout time.Duration, scanned uint64) (Socket, bool) {
	if len(m) < inetDiagMsgLen || m[2] != diagTimerTW {
		return Socket{}, false
	}
	ne := binary.NativeEndian
	id := m[4:52] // struct inet_diag_sockid
	s := Socket{
		Cookie:    uint64(ne.Uint32(id[40:])) | uint64(ne.Uint32(id[44:]))<<32,
		Endpoints: Endpoints{NetNS: netns}, State: State(m[1]), Timewait: true, Scanned: scanned,
		ExpiresIn: time.Duration(ne.Uint32(m[52:])) * time.Millisecond,
	}
	if !diagEndpoints(m, &s) {
		return Socket{}, false
	}
	if s.State != TimeWait && s.State != FinWait2 {
		return Socket{}, false
	}
	total := TimewaitLen
	if s.State == FinWait2 {
		total = finTimeout
	}
	if s.ExpiresIn <= total && uint64(total-s.ExpiresIn) <= scanned {
		s.Since = scanned - uint64(total-s.ExpiresIn)
		s.SinceEarliest = s.Since
	}
	return s, true
}
