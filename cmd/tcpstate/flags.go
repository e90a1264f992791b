// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/internal/cgroup"
	"github.com/tcpstate/tcpstate/pipeline"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// filterFlags are the connection filters every command shares.
type filterFlags struct {
	ports, lports, rports []string
	addrs                 []string
	ipv4, ipv6            bool
	states                []string
	pids                  []string
	comm                  string
	netns                 string
	cgroup, container     string
	warnings              []string       // from filter(): not errors (warn prints them)
	fs                    *pflag.FlagSet // to tell a flag given empty from one not given
}

func (f *filterFlags) register(fs *pflag.FlagSet) {
	f.fs = fs
	fs.StringSliceVar(&f.ports, "port", nil, "only connections with this local or remote `port` (list, or repeat the flag)")
	fs.StringSliceVar(&f.lports, "lport", nil, "only connections with this local `port`")
	fs.StringSliceVar(&f.rports, "rport", nil, "only connections with this remote `port`")
	fs.StringSliceVar(&f.addrs, "addr", nil, "only connections with a local or remote address in this `IP|CIDR` (list)")
	fs.BoolVarP(&f.ipv4, "ipv4", "4", false, "only IPv4 (IPv4-mapped IPv6 counts as IPv4)")
	fs.BoolVarP(&f.ipv6, "ipv6", "6", false, "only IPv6")
	fs.StringSliceVar(&f.states, "state", nil, "only transitions from or to this `state` (list): "+
		strings.Join(tracer.StateNames(), ", ")+"; also close-wait, FIN_WAIT_2, ESTAB, ...")
	fs.StringSliceVar(&f.pids, "pid", nil, "only sockets owned by this process `ID` (list)")
	fs.StringVar(&f.comm, "comm", "", "only sockets owned by a task of this `name` (exact, as in /proc/PID/comm)")
	fs.StringVar(&f.netns, "netns", "", "only this network namespace: inode `number`, a path such as /proc/PID/ns/net, or a name from 'ip netns'")
}

// warn prints what filter noticed that is not an error, and, for the
// commands that trace this host live, filters that name nothing on it now: a
// process that does not run (its sockets may outlive it: not an error), a
// namespace inode no namespace has (only a socket may still hold one). flt is
// what filter made of the flags.
func (f *filterFlags) warn(stderr io.Writer, flt *tracer.Filter) {
	for _, w := range f.warnings {
		fmt.Fprintf(stderr, "tcpstate: warning: %s\n", w)
	}
	var gone []string
	for _, pid := range flt.PIDs {
		// (kill 0 tells "no such process" apart from "not ours to see",
		// as /proc mounted hidepid does not)
		if unix.Kill(int(pid), 0) == unix.ESRCH {
			gone = append(gone, strconv.FormatUint(uint64(pid), 10))
		}
	}
	if len(gone) > 0 {
		fmt.Fprintf(stderr, "tcpstate: warning: --pid %s: no such process runs now: only sockets it left behind match\n", strings.Join(gone, ","))
	}
	if n, err := strconv.ParseUint(f.netns, 10, 32); err == nil && n > 0 {
		if found, unreadable := tracer.NetNSExists(uint32(n)); !found {
			var but string
			switch len(unreadable) {
			case 0:
			case 1:
				but = fmt.Sprintf(" (PID %d could not be read: it may be that process's)", unreadable[0])
			default:
				pids := fmt.Sprint(unreadable[:min(len(unreadable), 3)])
				if len(unreadable) > 3 {
					pids = strings.TrimSuffix(pids, "]") + " ...]"
				}
				but = fmt.Sprintf(" (%d processes could not be read, PIDs %s: it may be one of theirs)", len(unreadable), pids)
			}
			fmt.Fprintf(stderr, "tcpstate: warning: --netns %d: no process runs in, mounts or holds open a network namespace with this inode%s: only sockets still in such a namespace can match\n", n, but)
		}
	}
}

// anyProcess tells whether a running process would own sockets that match.
func anyProcess(match func(*tracer.Owner) bool) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return true // (cannot tell: no warning)
	}
	for _, ent := range ents {
		pid, err := strconv.ParseUint(ent.Name(), 10, 32)
		if err == nil && match(&tracer.Owner{Task: tracer.Task{PID: uint32(pid)}, From: tracer.OwnerProc}) {
			return true
		}
	}
	return false
}

func isDir(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}

// registerPlace adds --cgroup and --container, for the commands that look
// owners up live (a capture's processes are not this host's; the kernel
// cannot filter on them, so record cannot either).
func (f *filterFlags) registerPlace(fs *pflag.FlagSet) {
	fs.StringVar(&f.cgroup, "cgroup", "", "only sockets owned by a process in this cgroup v2 `path` or below it, as /proc/PID/cgroup names it (/system.slice/nginx.service)")
	fs.StringVar(&f.container, "container", "", "only sockets owned by a process of this container (`id` or a prefix of 4+ digits) or Kubernetes pod (UID)")
}

// filter turns the flags into a tracer.Filter, naming the value that is wrong.
// A filter given with nothing in it (--port ”, --state ,) is an error, never
// the absence of the filter.
func (f *filterFlags) filter() (tracer.Filter, error) {
	var flt tracer.Filter
	var err error
	for _, name := range []string{"port", "lport", "rport", "addr", "state", "pid", "comm", "netns", "cgroup", "container"} {
		if f.fs == nil || !f.fs.Changed(name) {
			continue
		}
		v := f.fs.Lookup(name).Value
		empty := v.String() == ""
		if sv, ok := v.(pflag.SliceValue); ok {
			empty = true
			for _, s := range sv.GetSlice() {
				if strings.Trim(s, " ,") != "" {
					empty = false
				}
			}
		}
		if empty {
			return flt, usagef("--%s: empty value (leave the flag out to keep every connection)", name)
		}
	}
	for _, p := range []struct {
		name string
		in   []string
		out  *[]uint16
	}{{"port", f.ports, &flt.Ports}, {"lport", f.lports, &flt.LPorts}, {"rport", f.rports, &flt.RPorts}} {
		for _, v := range p.in {
			ports, err := tracer.ParsePorts(v)
			if err != nil {
				return flt, usagef("--%s: %v", p.name, err)
			}
			*p.out = append(*p.out, ports...)
		}
	}
	for _, v := range f.addrs {
		pfx, err := tracer.ParsePrefix(v)
		if err != nil {
			return flt, usagef("--addr: %v", err)
		}
		flt.Addrs = append(flt.Addrs, pfx)
	}
	switch {
	case f.ipv4 && f.ipv6:
		return flt, usagef("-4/--ipv4 and -6/--ipv6 exclude each other")
	case f.ipv4:
		flt.Family = tracer.IPv4
	case f.ipv6:
		flt.Family = tracer.IPv6
	}
	for _, v := range f.states {
		set, err := tracer.ParseStates(v)
		if err != nil {
			return flt, usagef("--state: %v", err)
		}
		flt.States |= set
	}
	for _, v := range f.pids {
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err != nil || n == 0 {
			return flt, usagef("--pid: invalid process ID %q", v)
		}
		if n > pidMaxLimit {
			return flt, usagef("--pid: %d: no process ID is above %d (Linux's PID_MAX_LIMIT)", n, pidMaxLimit)
		}
		flt.PIDs = append(flt.PIDs, uint32(n))
	}
	flt.Comm = f.comm
	if f.netns != "" {
		if flt.NetNS, err = resolveNetNS(f.netns); err != nil {
			return flt, usagef("--netns: %v", err)
		}
	}
	if f.cgroup != "" || f.container != "" {
		if flt.Owners, err = ownerFilter(f.cgroup, f.container); err != nil {
			return flt, err
		}
	}
	f.warnings = nil
	if f.cgroup != "" {
		// Not an error: the group may come with a container started later.
		switch mnt := cgroup.Mount(); {
		case mnt == "":
			f.warnings = append(f.warnings, "--cgroup: this host has no cgroup v2 hierarchy mounted: no socket will match")
		case !isDir(filepath.Join(mnt, f.cgroup)):
			f.warnings = append(f.warnings, fmt.Sprintf("--cgroup %s: no such group under %s (yet): no socket matches until it exists", f.cgroup, mnt))
		}
	}
	if f.container != "" && !anyProcess(flt.Owners) {
		f.warnings = append(f.warnings, fmt.Sprintf("--container %s: no process of such a container or pod runs now: no socket matches until one does", f.container))
	}
	if err := flt.Validate(); err != nil {
		return flt, usageError{err}
	}
	return flt, nil
}

// resolver tells where the processes that own sockets run: their cgroup,
// container, pod and systemd service.
var resolver = cgroup.NewResolver(8192)

// lookUpOwner has the resolver learn where the owner of a socket of the
// start-up walk runs, while it runs: its sockets may outlive it.
func lookUpOwner(s *tracer.Socket) {
	if s.Owner.Known() {
		resolver.Lookup(s.Owner.PID, s.Owner.Cgroup)
	}
}

// ownerFilter is the user-space filter of --cgroup and --container.
func ownerFilter(path, container string) (func(*tracer.Owner) bool, error) {
	path = strings.TrimSpace(path)
	if path != "" && !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	path = strings.TrimSuffix(path, "/")
	container = strings.ToLower(strings.TrimSpace(container))
	if container != "" && len(container) < 4 {
		return nil, usagef("--container %q: give at least 4 digits of the id or of the pod's UID", container)
	}
	return func(o *tracer.Owner) bool {
		info := resolver.Lookup(o.PID, o.Cgroup)
		if !info.Known() {
			return false
		}
		if path != "" && info.Path != path && !strings.HasPrefix(info.Path, path+"/") {
			return false
		}
		if container != "" && !strings.HasPrefix(info.ContainerID, container) && !strings.HasPrefix(info.PodUID, container) {
			return false
		}
		return true
	}, nil
}

// resolveNetNS accepts an inode number, a namespace file, or an 'ip netns' name.
func resolveNetNS(v string) (uint32, error) {
	if n, err := strconv.ParseUint(v, 10, 32); err == nil && n > 0 {
		return uint32(n), nil
	}
	path := v
	if !strings.Contains(v, "/") {
		path = filepath.Join("/run/netns", v)
	}
	fi, err := os.Stat(path)
	var fs unix.Statfs_t
	if err != nil || unix.Statfs(path, &fs) != nil || fs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("%q is not a namespace inode number, a namespace file or a name under /run/netns", v)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("%q: cannot read its inode", v)
	}
	return uint32(st.Ino), nil
}

// netnsNames names the namespaces mounted under /run/netns ('ip netns'), by
// inode, and the one tcpstate runs in "host"; others go by their inode. An
// inode it has no name for has it look again (a namespace made since), at
// most once a second. Safe for concurrent use.
func netnsNames() func(uint32) string {
	var (
		mu     sync.Mutex
		names  map[uint32]string
		looked time.Time
	)
	read := func() {
		names = map[uint32]string{}
		looked = time.Now()
		if fi, err := os.Stat("/proc/self/ns/net"); err == nil {
			names[uint32(fi.Sys().(*syscall.Stat_t).Ino)] = "host"
		}
		if ents, err := os.ReadDir("/run/netns"); err == nil {
			for _, e := range ents {
				if fi, err := os.Stat(filepath.Join("/run/netns", e.Name())); err == nil {
					names[uint32(fi.Sys().(*syscall.Stat_t).Ino)] = e.Name()
				}
			}
		}
	}
	read()
	return func(inode uint32) string {
		mu.Lock()
		defer mu.Unlock()
		n, ok := names[inode]
		if !ok && inode != 0 && time.Since(looked) >= time.Second {
			read()
			n = names[inode]
		}
		return n
	}
}

// sizeValue is a byte size flag: 4096, 64K, 8M, 1G.
type sizeValue int

func (s *sizeValue) String() string {
	v := int(*s)
	switch {
	case v >= 1<<30 && v%(1<<30) == 0:
		return strconv.Itoa(v>>30) + "G"
	case v >= 1<<20 && v%(1<<20) == 0:
		return strconv.Itoa(v>>20) + "M"
	case v >= 1<<10 && v%(1<<10) == 0:
		return strconv.Itoa(v>>10) + "K"
	}
	return strconv.Itoa(v)
}

func (s *sizeValue) Set(in string) error {
	v := strings.ToUpper(strings.TrimSpace(in))
	v = strings.TrimSuffix(strings.TrimSuffix(v, "IB"), "B")
	mult := 1
	switch {
	case strings.HasSuffix(v, "K"):
		mult, v = 1<<10, strings.TrimSuffix(v, "K")
	case strings.HasSuffix(v, "M"):
		mult, v = 1<<20, strings.TrimSuffix(v, "M")
	case strings.HasSuffix(v, "G"):
		mult, v = 1<<30, strings.TrimSuffix(v, "G")
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n == 0 || n*uint64(mult) > 1<<30 {
		return fmt.Errorf("invalid size %q (want e.g. 4096, 256K, 8M; at most 1G)", in)
	}
	*s = sizeValue(int(n) * mult)
	return nil
}

func (s *sizeValue) Type() string { return "size" }

// enumValue is a string flag with a fixed set of values.
type enumValue struct {
	value   string
	allowed []string
}

func newEnum(def string, allowed ...string) *enumValue {
	return &enumValue{value: def, allowed: allowed}
}

func (e *enumValue) String() string { return e.value }
func (e *enumValue) Type() string   { return strings.Join(e.allowed, "|") }
func (e *enumValue) Set(v string) error {
	for _, a := range e.allowed {
		if v == a {
			e.value = v
			return nil
		}
	}
	return fmt.Errorf("invalid value %q (one of %s)", v, strings.Join(e.allowed, ", "))
}

// durationValue is a time.Duration flag that also takes a bare number of seconds.
type durationValue time.Duration

func (d *durationValue) String() string { return time.Duration(*d).String() }
func (d *durationValue) Type() string   { return "duration" }
func (d *durationValue) Set(in string) error {
	v := strings.TrimSpace(in)
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		v = strconv.FormatFloat(secs, 'f', -1, 64) + "s"
	}
	dur, err := time.ParseDuration(v)
	if err != nil || dur < 0 {
		return fmt.Errorf("invalid duration %q (want e.g. 30s, 5m, 1h30m, or seconds)", in)
	}
	*d = durationValue(dur)
	return nil
}

// Upper bounds of the table sizes: kernel memory for timewait sockets (about
// 130 bytes each in two maps), user memory for connections.
const (
	maxTimewaitEntries = 1 << 22
	maxConnections     = 10_000_000
)

// pidMaxLimit is the highest PID Linux hands out (PID_MAX_LIMIT, 64-bit).
const pidMaxLimit = 1 << 22

// tracerFlags size and locate what the tracer loads.
type tracerFlags struct {
	ringbuf   sizeValue
	btf       string
	maxConns  int
	twEntries int
}

func (f *tracerFlags) register(fs *pflag.FlagSet) {
	f.ringbuf = tracer.DefaultRingBufferSize
	fs.Var(&f.ringbuf, "ringbuf-size", "kernel ring buffer `size` (power of two, e.g. 256K, 8M); more absorbs bursts")
	fs.IntVar(&f.maxConns, "max-connections", timeline.DefaultMaxConns, "connections kept in memory; beyond, the least recently active are evicted (counted)")
	fs.IntVar(&f.twEntries, "max-timewait", tracer.DefaultTimewaitEntries, "timewait sockets followed in the kernel (LRU)")
	fs.StringVar(&f.btf, "btf", "", "kernel BTF `file`, for kernels that do not publish /sys/kernel/btf/vmlinux")
}

// validate checks the values that need no kernel (also on replay, which
// uses --max-connections).
func (f *tracerFlags) validate() error {
	if size := int(f.ringbuf); size&(size-1) != 0 || size < os.Getpagesize() {
		return usagef("--ringbuf-size %q: must be a power of two of at least %d bytes", f.ringbuf.String(), os.Getpagesize())
	}
	if f.maxConns <= 0 {
		return usagef("--max-connections %d: must be positive", f.maxConns)
	}
	if f.twEntries <= 0 || f.twEntries > maxTimewaitEntries {
		return usagef("--max-timewait %d: must be between 1 and %d", f.twEntries, maxTimewaitEntries)
	}
	if f.maxConns > maxConnections {
		return usagef("--max-connections %d: at most %d (about 165 bytes each)", f.maxConns, maxConnections)
	}
	return nil
}

// start loads and attaches the tracer, printing its warnings.
func (f *tracerFlags) start(filter tracer.Filter, stderr io.Writer) (*tracer.Tracer, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	t, err := tracer.New(tracer.Config{Filter: filter, RingBufferSize: int(f.ringbuf), KernelBTF: f.btf, TimewaitEntries: f.twEntries})
	if err != nil {
		return nil, err
	}
	for _, w := range t.Warnings() {
		fmt.Fprintf(stderr, "tcpstate: warning: %s\n", w)
	}
	liveTracer.Store(t)
	return t, nil
}

// rescan walks t's sockets again, all of them or none (a namespace skipped
// would look like sockets gone), and keeps those where the filter looks.
func rescan(t *tracer.Tracer, filter tracer.Filter) pipeline.Rescan {
	where := whereOf(filter)
	return func(timeWait bool) ([]tracer.Socket, error) {
		socks, _, err := t.ScanAll(tracer.ScanOptions{TimeWait: timeWait})
		return pipeline.WalkedFor(socks, where), err
	}
}

// warnTableFull says, as a command starts, that its walk found more sockets
// than --max-connections holds (evicted of found), and what that costs it.
func warnTableFull(stderr io.Writer, evicted uint64, found, maxConns int, cost string) {
	if evicted > 0 {
		fmt.Fprintf(stderr, "tcpstate: warning: %d of the %d sockets found do not fit --max-connections %d%s\n", evicted, found, maxConns, cost)
	}
}

// seedWalk walks t's sockets and hands seed those where filter looks (the
// resolver learning their owners while they run); it returns how many. A
// serve or watch of one namespace or port keeps no other's.
func seedWalk(t *tracer.Tracer, filter tracer.Filter, opts tracer.ScanOptions, stderr io.Writer, seed func(*tracer.Socket)) int {
	found := 0
	wants := pipeline.WalkWants(whereOf(filter))
	pipeline.ScanEach(t, opts, stderr, func(s *tracer.Socket) {
		if wants(s) {
			found++
			lookUpOwner(s)
			seed(s)
		}
	})
	// What the walk leaves (its records, the owner map of /proc) is
	// collected now, before the table is put to use: else the collector's
	// next goal is twice the table and the walk, and the heap grows to it
	// (watch's first snapshot of 100,000 rows, serve's first scrapes).
	runtime.GC()
	return found
}

// whereOf is the part of a filter about where connections are (namespace,
// family, ports, addresses): not their states, which a socket may yet
// reach, nor their owner, which a walk learns otherwise than the events
// (a walk after a loss must not take a connection for gone because /proc
// names another holder).
func whereOf(f tracer.Filter) tracer.Filter {
	f.States, f.PIDs, f.Comm, f.Owners = 0, nil, "", nil
	return f
}

// parseFlags parses a command's flags: --help prints help (and returns
// pflag.ErrHelp), a bad flag is a usage error, and so are arguments unless
// args are allowed.
func parseFlags(fs *pflag.FlagSet, args []string, help func(*pflag.FlagSet) string, stdout io.Writer, allowArgs bool) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			fmt.Fprint(stdout, help(fs))
			return err
		}
		return usageError{err}
	}
	if !allowArgs && fs.NArg() > 0 {
		return usagef("%s takes no arguments (got %q)", fs.Name(), fs.Args())
	}
	return nil
}
