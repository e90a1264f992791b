// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/internal/netns"
)

// Socket is a TCP socket as found by Scan.
type Socket struct {
	Cookie uint64
	Endpoints
	State    State
	Timewait bool // a timewait socket (State is FIN_WAIT2 or TIME_WAIT)

	// Since is when the socket entered State (CLOCK_BOOTTIME ns) as the
	// kernel's timestamps tell: exact for timewait sockets (their timer);
	// the latest it can have been for CLOSE_WAIT and FIN_WAIT2 (the last ACK
	// received: every later ACK moves it); an estimate for FIN_WAIT1,
	// LAST_ACK and CLOSING (the last data sent). 0 when the kernel keeps
	// nothing to tell (ESTABLISHED...).
	Since uint64
	// SinceEarliest is the earliest State can have begun, where the kernel
	// bounds it: the last data received for CLOSE_WAIT (the FIN came after
	// it), the last data sent for FIN_WAIT2 (our FIN followed it); Since for
	// timewait sockets. 0: no bound.
	SinceEarliest uint64
	ExpiresIn     time.Duration // timewait: time left on its timer

	// Keepalive: the socket's own options (0: unset, the sysctl applies),
	// whether SO_KEEPALIVE is on, and its timer if armed.
	KeepaliveOn    bool
	SockIdle       time.Duration
	SockIntvl      time.Duration
	SockCount      uint8
	KeepaliveArmed bool
	KeepaliveIn    time.Duration // time left on the keepalive timer
	LastRecv       uint64        // CLOCK_BOOTTIME ns of the last segment received
	ProbesOut      uint8
	UserTimeout    time.Duration

	Inode   uint64 // socket inode (0 for timewait sockets)
	UID     uint32
	Owner   Owner  // from /proc/PID/fd, as `ss -p` finds it (OwnerProc)
	Scanned uint64 // CLOCK_BOOTTIME ns of the walk
}

// NetNS is a network namespace as the walk found it.
type NetNS struct {
	Inode   uint32
	Path    string            // a file that names it (/proc/PID/ns/net, /run/netns/NAME)
	Sysctls map[string]string // net.ipv4.tcp_* values, keyed without the prefix: "keepalive_time"
	// DiagOnly counts the timewait sockets that sock_diag listed and the
	// kernel's iterator did not (added to the walk's sockets; some may be
	// new since the iterator ran).
	DiagOnly int
	// DiagErr: why sock_diag could not list them (the walk stands alone).
	DiagErr error
}

// sysctls are read in each namespace, under /proc/sys/net/ipv4/tcp_.
var sysctls = [...]string{"keepalive_time", "keepalive_intvl", "keepalive_probes", "fin_timeout", "tw_reuse", "max_tw_buckets"}

// ScanOptions choose what a scan returns. The kernel side is seeded with
// every socket walked whatever they say.
type ScanOptions struct {
	// TimeWait returns the timewait sockets in TIME_WAIT too: a busy host
	// may have hundreds of thousands, which only watch shows.
	TimeWait bool
}

// Scan walks every TCP socket of every network namespace it can find (those
// of running processes and those named under /run/netns; only Filter.NetNS,
// for a tracer of one), seeds the tracer's per-socket state so that their
// next events carry what is known, and finds the processes that hold them.
func (t *Tracer) Scan() ([]Socket, error) {
	socks, _, err := t.ScanAll(ScanOptions{TimeWait: true})
	return socks, err
}

// ScanAll is Scan, also returning the namespaces and their TCP sysctls.
func (t *Tracer) ScanAll(opts ScanOptions) ([]Socket, []NetNS, error) {
	var out []Socket
	nss, err := t.scan(opts, func(n int) { out = slices.Grow(out, n) }, func(s *Socket) { out = append(out, *s) })
	return out, nss, err
}

// ScanEach is ScanAll handing each socket to each as it is read, instead of
// keeping them: a big host's walk is tens of megabytes (trace and watch put
// them straight in their tables). each must not keep s.
func (t *Tracer) ScanEach(opts ScanOptions, each func(s *Socket)) ([]NetNS, error) {
	return t.scan(opts, nil, each)
}

// scan walks every namespace; grow, if set, is told about how many sockets
// a namespace has before they come.
func (t *Tracer) scan(opts ScanOptions, grow func(n int), each func(*Socket)) ([]NetNS, error) {
	prog := t.coll.Programs[tcpstateProgIterTcp]
	if prog == nil {
		return nil, errors.New("scanning sockets: iterator program not loaded")
	}
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return nil, fmt.Errorf("scanning sockets: attaching tcp iterator: %w", err)
	}
	defer it.Close()

	owners := socketOwners()
	owned := func(s *Socket) {
		if task, ok := owners.of(s.Inode); ok && s.Inode != 0 {
			s.Owner = Owner{Task: task, From: OwnerProc}
		}
		each(s)
	}
	var nss []NetNS
	var skipped []error
	for _, f := range netnsPaths() {
		if t.netns != 0 && f.inode != t.netns {
			continue // (the kernel side follows no other namespace's sockets)
		}
		ns, err := scanNetNS(it, f.path, t.info.HZ, opts, grow, owned)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH) {
				continue // the namespace went away meanwhile
			}
			// One namespace the walk cannot enter (no CAP_SYS_ADMIN)
			// costs its sockets only.
			skipped = append(skipped, fmt.Errorf("%s: %w", f.path, err))
			continue
		}
		nss = append(nss, ns)
	}
	if len(skipped) > 0 {
		return nss, &ScanError{Skipped: skipped}
	}
	return nss, nil
}

// ScanError lists the namespaces a walk could not read; the sockets of the
// others are returned with it.
type ScanError struct {
	Skipped []error
}

func (e *ScanError) Error() string {
	msg := fmt.Sprintf("scanning sockets: %d network namespaces skipped: %v", len(e.Skipped), e.Skipped[0])
	if len(e.Skipped) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(e.Skipped)-1)
	}
	return msg
}

func (e *ScanError) Unwrap() []error { return e.Skipped }

// scanNetNS runs the iterator from inside the namespace at path (the
// iterator walks the namespace of whoever opens it, and /proc/sys/net shows
// the namespace of whoever reads it), reading its records as a stream into
// each (on that thread). grow, if set, is told first about how many sockets
// will come (the namespace's sockstat): a slice grown by append to 100,000
// sockets allocates five times their size (large slices grow by a quarter).
func scanNetNS(it *link.Iter, path string, hz uint32, opts ScanOptions, grow func(int), each func(*Socket)) (NetNS, error) {
	ns := NetNS{Path: path, Sysctls: map[string]string{}}
	// (stat again, as close to entering as it can be: a process's
	// namespace file may be another's by now)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ns, err
	}
	ns.Inode = uint32(st.Ino)
	err := inNetNS(path, func() error {
		readSysctls(ns.Sysctls)
		finTimeout := time.Duration(0)
		if v, err := strconv.Atoi(ns.Sysctls["fin_timeout"]); err == nil {
			finTimeout = time.Duration(v) * time.Second
		}
		if grow != nil {
			grow(socketCount(opts.TimeWait))
		}
		rd, err := it.Open()
		if err != nil {
			return err
		}
		defer rd.Close()
		buf := make([]byte, 512*iterRecSize)
		timewait := map[endpointKey]struct{}{} // for sock_diag's: not twice
		var s Socket                           // (each copies what it keeps: one Socket for the walk, not one each)
		for {
			n, err := io.ReadFull(rd, buf)
			if n%iterRecSize != 0 {
				return fmt.Errorf("iterator wrote a partial %d-byte record", iterRecSize)
			}
			for off := 0; off < n; off += iterRecSize {
				rec := buf[off : off+iterRecSize]
				if !opts.TimeWait && rec[offIterTimewait] != 0 && State(rec[offIterState]) == TimeWait {
					continue
				}
				var ok bool
				if s, ok = parseIterRecord(rec, hz, finTimeout); ok {
					if s.Timewait {
						timewait[endpointKeyOf(&s)] = struct{}{}
					}
					each(&s)
				}
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				// A second source only: without it (no inet_diag module, or
				// none can be loaded) the walk stands alone.
				ns.DiagOnly, ns.DiagErr = addDiagTimewait(timewait, ns.Inode, finTimeout, opts, each)
				return nil
			}
			if err != nil {
				return err
			}
		}
	})
	return ns, err
}

// endpointKey is a connection's two ends, addresses as 16 bytes and then
// ports: a map key without pointers (netip.AddrPort holds one), which the
// collector need not scan, in 36 bytes rather than 64.
type endpointKey [36]byte

func endpointKeyOf(s *Socket) endpointKey {
	var k endpointKey
	la, ra := s.Local.Addr().As16(), s.Remote.Addr().As16()
	copy(k[0:16], la[:])
	copy(k[16:32], ra[:])
	binary.BigEndian.PutUint16(k[32:], s.Local.Port())
	binary.BigEndian.PutUint16(k[34:], s.Remote.Port())
	return k
}

// addDiagTimewait hands to each the timewait sockets that sock_diag lists in
// the calling thread's namespace and the iterator did not find (seen), and
// says how many.
func addDiagTimewait(seen map[endpointKey]struct{}, netns uint32, finTimeout time.Duration, opts ScanOptions, each func(*Socket)) (int, error) {
	n := 0
	err := eachDiagTimewait(netns, finTimeout, BootNow(), opts.TimeWait, func(s *Socket) {
		if _, dup := seen[endpointKeyOf(s)]; !dup {
			each(s)
			n++
		}
	})
	return n, err
}

var (
	iterRecSize     = int(unsafe.Sizeof(tcpstateIterRec{}))
	offIterTimewait = int(unsafe.Offsetof(tcpstateIterRec{}.Timewait))
	offIterState    = int(unsafe.Offsetof(tcpstateIterRec{}.State))
)

// parseIterRecord decodes one record of iter_tcp; false for the trailer.
// finTimeout is the namespace's tcp_fin_timeout, which dates an orphaned
// FIN_WAIT2 from its timer (0: unknown).
func parseIterRecord(data []byte, hz uint32, finTimeout time.Duration) (Socket, bool) {
	var r tcpstateIterRec
	if _, err := binary.Decode(data, binary.NativeEndian, &r); err != nil || r.End != 0 {
		return Socket{}, false
	}
	s := Socket{
		Cookie: r.Cookie, Endpoints: Endpoints{NetNS: r.Netns}, State: State(r.State), Timewait: r.Timewait != 0,
		Inode: r.Ino, UID: r.Uid, Scanned: r.TsNs,
	}
	switch r.Family {
	case afInet:
		s.Family = IPv4
		s.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.Saddr[:4])), r.Sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.Daddr[:4])), r.Dport)
	case afInet6:
		s.Family = IPv6
		s.Local = netip.AddrPortFrom(netip.AddrFrom16(r.Saddr), r.Sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom16(r.Daddr), r.Dport)
	default:
		return Socket{}, false
	}
	ago := func(stamp uint32) uint64 {
		d := uint64(JiffiesToDuration(int64(uint32(r.Jiffies)-stamp), hz))
		if d > r.TsNs {
			return 0
		}
		return r.TsNs - d
	}
	switch {
	case s.Timewait:
		s.ExpiresIn = JiffiesToDuration(int64(r.TimerExpires-r.Jiffies), hz)
		total := TimewaitLen
		if s.State == FinWait2 {
			total = finTimeout
		}
		if s.ExpiresIn >= 0 && s.ExpiresIn <= total {
			s.Since = r.TsNs - uint64(total-s.ExpiresIn)
			s.SinceEarliest = s.Since
		}
	case s.State == CloseWait:
		s.Since, s.SinceEarliest = ago(r.RcvTstamp), ago(r.Lrcvtime)
	case s.State == FinWait2:
		s.Since, s.SinceEarliest = ago(r.RcvTstamp), ago(r.Lsndtime)
	}
	if s.SinceEarliest > s.Since {
		s.SinceEarliest = s.Since // (one jiffy apart, read at different times)
	}
	if !s.Timewait && s.State != NewSynRecv {
		s.KeepaliveOn = r.KaSrc&kaOn != 0
		s.SockIdle = JiffiesToDuration(int64(r.KaTime), hz)
		s.SockIntvl = JiffiesToDuration(int64(r.KaIntvl), hz)
		s.SockCount = r.KaProbes
		s.ProbesOut = r.ProbesOut
		s.UserTimeout = time.Duration(r.UserTimeout) * time.Millisecond
		// keepalive_time_elapsed() counts from the later of the two.
		last := r.RcvTstamp
		if int32(r.Lrcvtime-last) > 0 {
			last = r.Lrcvtime
		}
		s.LastRecv = ago(last)
		if r.KaSrc&kaPending != 0 {
			s.KeepaliveArmed = true
			s.KeepaliveIn = JiffiesToDuration(int64(r.KaExpires-r.Jiffies), hz)
		}
	}
	switch {
	case s.State == FinWait1 || s.State == LastAck || s.State == Closing:
		s.Since = ago(r.Lsndtime)
	}
	return s, true
}

// TimewaitLen is TCP_TIMEWAIT_LEN, fixed in the kernel: how long TIME_WAIT lasts.
const TimewaitLen = 60 * time.Second

// nsFile is a file of a network namespace, and the namespace's inode.
type nsFile struct {
	path  string
	inode uint32
}

// netnsPaths names one file per network namespace: a process's, or a
// mount under /run/netns.
func netnsPaths() []nsFile {
	seen := map[uint64]bool{}
	var out []nsFile
	add := func(path string) {
		var st unix.Stat_t
		var fs unix.Statfs_t
		// (a stray file under /run/netns is no namespace: left out)
		if unix.Stat(path, &st) != nil || seen[st.Ino] || unix.Statfs(path, &fs) != nil || fs.Type != unix.NSFS_MAGIC {
			return
		}
		seen[st.Ino] = true
		out = append(out, nsFile{path: path, inode: uint32(st.Ino)})
	}
	add("/proc/self/ns/net")
	if names, err := os.ReadDir("/run/netns"); err == nil {
		for _, n := range names {
			add(filepath.Join("/run/netns", n.Name()))
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err == nil {
			add(filepath.Join("/proc", p.Name(), "ns/net"))
		}
	}
	return out
}

// NetNSExists tells whether a network namespace has this inode now: one a
// process or thread runs in, one mounted ('ip netns', a container runtime's,
// in any mount namespace), or one a process holds open. unreadable lists the
// processes it could not look into (another user's without CAP_SYS_PTRACE, a
// sandbox's init): the namespace may be one of theirs. (Not found either: one
// that only its sockets still hold, their process having moved to another.)
func NetNSExists(inode uint32) (found bool, unreadable []int) {
	// (one pass over /proc: a process's threads include its main one, and
	// its mount namespace's mounts /run/netns)
	name := "net:[" + strconv.FormatUint(uint64(inode), 10) + "]"
	mounted := func(mountinfo string) (bool, error) {
		b, err := os.ReadFile(mountinfo)
		for _, line := range strings.Split(string(b), "\n") {
			// (the fourth field: the root of the mount, net:[INODE] for a
			// namespace's)
			if f := strings.Fields(line); len(f) > 4 && f[3] == name {
				return true, nil
			}
		}
		return false, err
	}
	procs, _ := os.ReadDir("/proc")
	mntSeen := map[uint64]bool{}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", p.Name())
		denied := false
		check := func(err error) {
			denied = denied || errors.Is(err, os.ErrPermission)
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, "ns/mnt"), &st); err != nil {
			check(err)
		} else if !mntSeen[st.Ino] {
			mntSeen[st.Ino] = true
			ok, err := mounted(filepath.Join(dir, "mountinfo"))
			if ok {
				return true, nil
			}
			check(err)
		}
		tasks, err := os.ReadDir(filepath.Join(dir, "task"))
		check(err)
		for _, task := range tasks {
			if err := unix.Stat(filepath.Join(dir, "task", task.Name(), "ns/net"), &st); err != nil {
				check(err)
			} else if uint32(st.Ino) == inode {
				return true, nil
			}
		}
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		check(err)
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(dir, "fd", fd.Name())); err == nil && l == name {
				return true, nil
			}
		}
		if denied {
			unreadable = append(unreadable, pid)
		}
	}
	return false, unreadable
}

// socketOwners maps socket inodes to a process holding them, by reading
// every /proc/PID/fd link ("socket:[INODE]"). The lowest PID wins.
//
// A host with 100,000 sockets has as many links: they are listed and read
// into buffers reused from one to the next (os.ReadDir and os.Readlink
// allocated 30 MB of garbage per 100,000, which set tcpstate's peak memory).
func socketOwners() holders {
	owners := holders{pids: map[uint64]uint32{}, comms: map[uint32]Comm{}}
	procs, _ := os.ReadDir("/proc")
	var dents [32 << 10]byte
	var link [64]byte
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		dir, err := unix.Open("/proc/"+p.Name()+"/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		named := false
		for {
			n, err := unix.Getdents(dir, dents[:])
			if n <= 0 || err != nil {
				break
			}
			for off := 0; off+19 <= n; {
				// struct linux_dirent64: ino 8, off 8, reclen 2, type 1, name (NUL-terminated)
				reclen := int(binary.NativeEndian.Uint16(dents[off+16:]))
				if reclen < 20 || off+reclen > n {
					break
				}
				name := dents[off+19 : off+reclen]
				off += reclen
				if name[0] < '0' || name[0] > '9' {
					continue // . and ..
				}
				ino, ok := socketInode(dir, name, link[:])
				if !ok {
					continue
				}
				if held, ok := owners.pids[ino]; ok && held <= uint32(pid) {
					continue
				}
				if !named {
					b, _ := os.ReadFile("/proc/" + p.Name() + "/comm")
					owners.comms[uint32(pid)] = CommFrom(strings.TrimSuffix(string(b), "\n"))
					named = true
				}
				owners.pids[ino] = uint32(pid)
			}
		}
		unix.Close(dir)
	}
	return owners
}

// holders are the processes holding socket inodes: a PID per socket and a name per
// PID (12 bytes a socket, not 32 with the name in each).
type holders struct {
	pids  map[uint64]uint32
	comms map[uint32]Comm
}

func (o holders) of(ino uint64) (Task, bool) {
	pid, ok := o.pids[ino]
	if !ok {
		return Task{}, false
	}
	return Task{PID: pid, TID: pid, Comm: o.comms[pid]}, true
}

// socketInode reads the link name (a NUL-terminated file name) in directory
// dir into buf and returns the inode of the socket it names ("socket:[N]"),
// allocating nothing.
func socketInode(dir int, name, buf []byte) (uint64, bool) {
	r, _, errno := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dir), uintptr(unsafe.Pointer(&name[0])),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0)
	if errno != 0 {
		return 0, false
	}
	target, ok := strings.CutPrefix(unsafe.String(&buf[0], int(r)), "socket:[")
	if !ok {
		return 0, false
	}
	target, ok = strings.CutSuffix(target, "]")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(target, 10, 64)
	return ino, err == nil
}

// readSysctls reads the sysctls as the current thread's namespace sees them.
func readSysctls(into map[string]string) {
	for _, name := range sysctls {
		if v, err := os.ReadFile("/proc/sys/net/ipv4/tcp_" + name); err == nil {
			into[name] = strings.TrimSpace(string(v))
		}
	}
}

// socketCount is about how many TCP sockets the calling thread's network
// namespace has (its sockstat), TIME_WAIT ones only with timeWait: the size
// to allocate for a walk of it.
func socketCount(timeWait bool) int {
	n := 64 // sockets made meanwhile
	for _, name := range []string{"sockstat", "sockstat6"} {
		b, err := os.ReadFile("/proc/thread-self/net/" + name)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if len(f) == 0 || (f[0] != "TCP:" && f[0] != "TCP6:") {
				continue
			}
			for i := 1; i+1 < len(f); i += 2 {
				if f[i] == "inuse" || (timeWait && f[i] == "tw") {
					v, _ := strconv.Atoi(f[i+1])
					n += v
				}
			}
		}
	}
	return min(n, 1<<22)
}

// NetNamespaces lists the network namespaces a walk visits, with their TCP
// sysctls, without walking their sockets (a capture's header names them
// before its walk streams in). One it cannot enter is left out, as the walk
// leaves out its sockets.
func NetNamespaces() []NetNS {
	var out []NetNS
	for _, f := range netnsPaths() {
		var st unix.Stat_t
		if unix.Stat(f.path, &st) != nil {
			continue
		}
		vals, err := ReadSysctls(f.path)
		if err != nil {
			continue
		}
		out = append(out, NetNS{Inode: uint32(st.Ino), Path: f.path, Sysctls: vals})
	}
	return out
}

// ReadSysctls reads the TCP sysctls of the namespace at path (a NetNS.Path).
func ReadSysctls(path string) (map[string]string, error) {
	out := map[string]string{}
	err := inNetNS(path, func() error { readSysctls(out); return nil })
	return out, err
}

// inNetNS runs f on a thread that has entered the network namespace at path.
// The thread runs nothing else; if it cannot go back, it dies with its
// goroutine.
func inNetNS(path string, f func() error) error { return netns.Go(path, f) }
