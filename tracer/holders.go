// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// An accepted socket is named after its listener's owner until a task reads
// or writes it (Linux 6.3; before, until it closes). A forking server whose
// child holds the socket and never touches it, or a pre-forked worker that
// accepted it on an older kernel, is then not the process named. FindHolders
// asks the kernel and /proc who holds such sockets now, as `ss -p` does, but
// looking only where the holder can be: the process named and its
// descendants.

// HolderQuery is a full socket whose holder to find: by its endpoints and
// state in its namespace, among PID (the owner named so far) and PID's
// descendants.
type HolderQuery struct {
	Endpoints
	State State
	PID   uint32
}

// maxDescendants bounds the processes looked through for one PID.
const maxDescendants = 4096

// FindHolders answers each query with the process holding the socket now
// (the lowest PID of those that do), or a zero Task: the socket has closed,
// its namespace cannot be entered, or no process holds it. Sockets are found
// by sock_diag in their namespace (their inode; without sock_diag, by the
// tracer's walk of the namespace), then in /proc/PID/fd of PID and its
// descendants; those not found there (PID gone, its children taken over by
// init) in every process's, once for all. On the tracer's goroutine only.
func (t *Tracer) FindHolders(qs []HolderQuery) []Task {
	out := make([]Task, len(qs))
	inodes := make([]uint64, len(qs))
	byNetNS := map[uint32][]int{}
	for i := range qs {
		if qs[i].PID != 0 {
			byNetNS[qs[i].NetNS] = append(byNetNS[qs[i].NetNS], i)
		}
	}
	var known []nsFile // every namespace's file, listed once if needed
	for netns, idx := range byNetNS {
		path := netnsPathFor(netns, qs[idx[0]].PID)
		if path == "" {
			// (a process may hold sockets of a namespace it is not in)
			if known == nil {
				known = netnsPaths()
			}
			for _, f := range known {
				if f.inode == netns {
					path = f.path
				}
			}
		}
		if path == "" {
			continue
		}
		if err := inNetNS(path, func() error { return diagInodesOf(qs, idx, inodes) }); err != nil {
			// (no inet_diag module, and none can be loaded)
			_ = t.walkInodes(path, qs, idx, inodes)
		}
	}
	fds := map[uint32]map[uint64]bool{} // socket inodes held, by PID, read once
	held := func(pid uint32, ino uint64) bool {
		s, ok := fds[pid]
		if !ok {
			s = socketInodesOf(pid)
			fds[pid] = s
		}
		return s[ino]
	}
	family := map[uint32][]uint32{} // the process and its descendants, by PID
	for i, q := range qs {
		if inodes[i] == 0 {
			continue
		}
		procs, ok := family[q.PID]
		if !ok {
			procs = descendants(q.PID)
			family[q.PID] = procs
		}
		for _, pid := range procs { // (ascending)
			if held(pid, inodes[i]) {
				out[i] = Task{PID: pid, TID: pid, Comm: commOf(pid)}
				break
			}
		}
	}
	var all *holders
	for i := range qs {
		if inodes[i] == 0 || out[i].PID != 0 {
			continue
		}
		if all == nil {
			h := socketOwners()
			all = &h
		}
		if task, ok := all.of(inodes[i]); ok {
			out[i] = task
		}
	}
	return out
}

// netnsPathFor names a file of network namespace netns: the calling
// process's, or pid's when it is there.
func netnsPathFor(netns, pid uint32) string {
	for _, path := range []string{"/proc/self/ns/net", fmt.Sprintf("/proc/%d/ns/net", pid)} {
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil && uint32(st.Ino) == netns {
			return path
		}
	}
	return ""
}

// diagInodesOf is diagInodes; the tests take sock_diag away.
var diagInodesOf = diagInodes

// diagInodes lists the calling thread's namespace's sockets in the states
// of the queries idx, and fills inodes of those it finds.
func diagInodes(qs []HolderQuery, idx []int, inodes []uint64) error {
	want := map[endpointKey]int{}
	var states uint32
	for _, i := range idx {
		want[endpointKeyOf(&Socket{Endpoints: qs[i].Endpoints})] = i
		states |= 1 << qs[i].State
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := diagDump(fd, family, states, func(m []byte) {
			if len(m) < inetDiagMsgLen || m[2] == diagTimerTW {
				return
			}
			var s Socket
			if !diagEndpoints(m, &s) {
				return
			}
			if i, ok := want[endpointKeyOf(&s)]; ok && State(m[1]) == qs[i].State {
				inodes[i] = uint64(binary.NativeEndian.Uint32(m[68:]))
			}
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// walkInodes finds the inodes of the queries idx by the tracer's walk of the
// namespace at path (every socket: only where sock_diag cannot be had).
func (t *Tracer) walkInodes(path string, qs []HolderQuery, idx []int, inodes []uint64) error {
	want := map[endpointKey]int{}
	for _, i := range idx {
		want[endpointKeyOf(&Socket{Endpoints: qs[i].Endpoints})] = i
	}
	prog := t.coll.Programs[tcpstateProgIterTcp]
	if prog == nil {
		return errors.New("iterator program not loaded")
	}
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return err
	}
	defer it.Close()
	_, err = scanNetNS(it, path, t.info.HZ, ScanOptions{}, nil, func(s *Socket) {
		if i, ok := want[endpointKeyOf(s)]; ok && !s.Timewait && s.State == qs[i].State {
			inodes[i] = s.Inode
		}
	})
	return err
}

// socketInodesOf lists the socket inodes pid holds open.
func socketInodesOf(pid uint32) map[uint64]bool {
	out := map[uint64]bool{}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, fd := range fds {
		l, err := os.Readlink(dir + "/" + fd.Name())
		if err != nil {
			continue
		}
		if s, ok := strings.CutPrefix(l, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				out[ino] = true
			}
		}
	}
	return out
}

// descendants lists pid and the processes below it, ascending (at most
// maxDescendants), from each thread's children file (CONFIG_PROC_CHILDREN;
// without it, pid alone).
func descendants(pid uint32) []uint32 {
	out := []uint32{pid}
	for i := 0; i < len(out) && len(out) < maxDescendants; i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		for _, task := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", out[i], task.Name()))
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.ParseUint(f, 10, 32); err == nil && len(out) < maxDescendants {
					out = append(out, uint32(c))
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

func commOf(pid uint32) Comm {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return CommFrom(strings.TrimSuffix(string(b), "\n"))
}
