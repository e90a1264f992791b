// SPDX-License-Identifier: Apache-2.0

// Package tracer loads tcpstate's BPF programs, attaches them to the kernel's
// TCP tracepoints and decodes what they report into Events.
package tracer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

// DefaultRingBufferSize holds about 47,000 events (176 bytes each with the
// ring buffer's header). Its pages count twice in the tracer's RSS: the
// kernel maps the data area twice, back to back, for records that wrap. Half
// of it lost events: 10,000 keepalive timers armed together fire together,
// about 30,000 events in one timer tick.
const DefaultRingBufferSize = 8 << 20

// Config configures a Tracer.
type Config struct {
	// Filter is run in the kernel as far as it can be; apply Filter.Match to
	// what the tracer delivers for the rest.
	Filter Filter
	// RingBufferSize in bytes: a power of two, at least one page. 0: DefaultRingBufferSize.
	RingBufferSize int
	// KernelBTF is the kernel's BTF file; "" for /sys/kernel/btf/vmlinux.
	KernelBTF string
	// TimewaitEntries bounds the connections followed in timewait sockets
	// (LRU: the oldest are forgotten first). 0: DefaultTimewaitEntries.
	TimewaitEntries int
	// WakeupBytes: the kernel wakes the reader when this much is waiting in
	// the ring buffer; the reader also reads every 100 ms. Negative: at
	// every event. 0: a quarter of the ring buffer (2 MiB, 12,000 events,
	// by default): under load the reader then reads every 100 ms or so and
	// not for every few hundred events (each wake-up, a context switch, cost
	// more than the events it brought; the reader's CPU fell by two thirds).
	WakeupBytes int
}

// DefaultTimewaitEntries follows 65,536 timewait sockets (4.5 MiB of kernel memory).
const DefaultTimewaitEntries = 65536

// DefaultSocketEntries bounds the table of sockets the kernel side keeps
// where tracing programs cannot use socket storage (before Linux 5.11):
// about 100 bytes each, LRU.
const DefaultSocketEntries = 131072

// KernelInfo is what the tracer learnt about the kernel, needed to read
// events later (also from a capture, on another machine).
type KernelInfo struct {
	HZ         uint32            // jiffies per second (CONFIG_HZ)
	HZFrom     string            // where HZ comes from: the kernel config, measured, assumed
	RstReasons map[uint16]string // enum sk_rst_reason: TCP_ABORT_ON_CLOSE, ...
}

// Stats are the kernel side's counters, summed over CPUs.
type Stats struct {
	// Seen: events the kernel side produced: delivered + Filtered + Lost.
	// A socket in a namespace Filter.NetNS excludes makes none, nor do
	// the keepalive and timewait timers of a connection the endpoint
	// filters exclude (their work is not done).
	Seen      uint64
	Filtered  uint64 // dropped by the in-kernel filter
	Lost      uint64 // lost because the ring buffer was full
	NoStorage uint64 // socket storage unavailable: owner and duration unknown
	// TimewaitUntracked: timewait sockets that ended without the tracer
	// knowing their start (older than the tracer, or evicted from its table);
	// those the endpoint filters leave out are not counted.
	TimewaitUntracked uint64
	// Skipped: state changes the kernel did not let tcpstate see: its
	// recursion guard skips a tracing program that is already running on the
	// CPU (a softirq's transition interrupting a system call's). Each is a
	// lost transition, reported as lost with the ring buffer's losses.
	// Linux 5.12+ counts them (Features: "recursion misses"). Only those
	// the second program on the tracepoint could not take over (Caught).
	Skipped uint64
	// Caught: state changes the kernel skipped for the first program on the
	// state tracepoint that the second one took over: not lost.
	Caught uint64
	// SkippedTimers: runs of the timer programs skipped the same way; a
	// TCP timer among them costs a timewait or keepalive event.
	SkippedTimers uint64
}

// AllLost is every event lost: ring buffer full, or skipped by the kernel.
func (s Stats) AllLost() uint64 { return s.Lost + s.Skipped }

// Sink receives what the tracer reads.
type Sink interface {
	// Event is called for each event, and for EventLost reports. e is reused
	// after the call returns.
	Event(e *Event) error
	// Idle is called when the ring buffer has been drained: flush output here.
	Idle() error
}

// hook is a program and the raw tracepoint it attaches to.
type hook struct {
	prog       string
	tracepoint string
	optional   string // what degrades without it; "" when required
	needs      string // kernel function whose address the program compares with
	// second: a second program on the tracepoint, run after the first
	// (not a variant of it)
	second bool
	// args: the program reads this many tracepoint arguments; a kernel
	// whose tracepoint has another number needs another variant (0: any).
	args int
}

const (
	noAcceptor  = "accepted sockets are attributed to their listener's process (needs Linux 6.3+)"
	noTimewait  = "TIME_WAIT and orphaned FIN_WAIT2 are not followed: a closed connection ends at its full socket's CLOSE"
	noReset     = "close reasons cannot tell a reset from an orderly close"
	noKeepalive = "keepalive timers are not followed"
)

// hooks are tried in order; of two variants for one tracepoint, the first
// that fits the kernel is attached.
var hooks = []hook{
	{prog: tcpstateProgHandleSetState, tracepoint: "inet_sock_set_state"},
	// Takes the state changes the kernel skipped for handle_set_state; the
	// kernel runs a tracepoint's programs in the order they were attached.
	{prog: tcpstateProgCatchSetState, tracepoint: "inet_sock_set_state", second: true},
	{prog: tcpstateProgHandleSend, tracepoint: "sock_send_length", optional: noAcceptor},
	{prog: tcpstateProgHandleRecv, tracepoint: "sock_recv_length", optional: noAcceptor},
	{prog: tcpstateProgHandleRstIn, tracepoint: "tcp_receive_reset", optional: noReset},
	// The reset reason is tcp_send_reset's third argument from Linux 6.10.
	{prog: tcpstateProgHandleRstOut, tracepoint: "tcp_send_reset", optional: noReset, args: 3},
	{prog: tcpstateProgHandleRstOutOld, tracepoint: "tcp_send_reset", optional: noReset, args: 2},
	{prog: tcpstateProgHandleTimerStart, tracepoint: "timer_start", optional: noTimewait, needs: "tw_timer_handler"},
	{prog: tcpstateProgHandleTimerExpire, tracepoint: "timer_expire_entry", optional: noTimewait, needs: "tw_timer_handler"},
	{prog: tcpstateProgHandleTimerCancel, tracepoint: "timer_cancel", optional: noTimewait, needs: "tw_timer_handler"},
	{prog: tcpstateProgHandleTimerExit, tracepoint: "timer_expire_exit", optional: noKeepalive, needs: "tcp_keepalive_timer"},
}

// probes are programs loaded alone to learn what tracing programs may do
// here; they are never attached.
var probes = []string{tcpstateProgProbeSkStorage, tcpstateProgProbeCookie}

// Tracer is attached to the kernel from New until Close.
type Tracer struct {
	info     KernelInfo
	netns    uint32 // Filter.NetNS: the only namespace walked, if set
	coll     *ebpf.Collection
	links    []link.Link
	fw2      *link.Iter // walks timewait sockets in FIN_WAIT2; nil without timewait hooks
	fw2Walks atomic.Uint64
	reader   *ringbuf.Reader
	stats    *ebpf.Map
	warnings []string
	features []Feature

	lostSeen uint64 // lost count already reported

	// mu guards percpu, shared by Run's loss reports and Stats, which is
	// read from other goroutines (serve's scrapes, main's last line), and
	// the maps and programs they read against Close: a closed one fails
	// with EBADF, or reads whatever file took its number since.
	mu     sync.Mutex
	percpu []uint64
	closed bool
}

// ErrClosed: the tracer was closed (Stats, HookCosts).
var ErrClosed = errors.New("tracer closed")

// New checks privileges and kernel support, loads the programs configured by
// cfg and attaches them. Close releases everything.
func New(cfg Config) (*Tracer, error) {
	if err := cfg.Filter.Validate(); err != nil {
		return nil, err
	}
	size := cfg.RingBufferSize
	if size == 0 {
		size = DefaultRingBufferSize
	}
	if page := os.Getpagesize(); size < page || size&(size-1) != 0 {
		return nil, fmt.Errorf("ring buffer size %d: want a power of two of at least %d bytes", size, page)
	}
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	jiffies0 := sampleJiffies()
	if err := checkBTFFile(cfg.KernelBTF); err != nil {
		return nil, err
	}
	// One decoding of the kernel's types for everything loaded here (the
	// probes, the collection, their attach targets): each load decoded them
	// anew, four times in all.
	btfCache := btf.NewCache()
	kernelTypes, err := loadKernelTypes(cfg.KernelBTF, btfCache)
	if err != nil {
		return nil, err
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raising RLIMIT_MEMLOCK: %w", err)
	}
	if err := checkKernel(); err != nil {
		return nil, err
	}

	spec, err := loadTcpstate()
	if err != nil {
		return nil, fmt.Errorf("reading BPF object: %w", err)
	}
	// The object's maps and constants by their generated names: a name
	// changed on one side fails here, at start, never silently.
	var obj struct {
		tcpstateMapSpecs
		tcpstateVariableSpecs
	}
	if err := spec.Assign(&obj); err != nil {
		return nil, fmt.Errorf("reading BPF object: %w", err)
	}
	t := &Tracer{info: KernelInfo{RstReasons: resetReasons(kernelTypes)}, netns: cfg.Filter.NetNS}
	t.warnings = append(t.warnings, privilegeWarnings()...)
	// The rate of jiffies, which timer expiries are in: the kernel's config
	// says it, checked against jiffies measured across the loading so far
	// when that took long enough. Without a config (a container), only the
	// measurement says it: it waits for it.
	config := kernelHZ()
	if d := minHZSpan + maxJiffiesWindow - time.Since(jiffies0.at); config == 0 && jiffies0.ok && d > 0 {
		time.Sleep(d)
	}
	hz, from, warning := resolveHZ(config, measuredHZ(jiffies0, sampleJiffies()))
	if warning != "" {
		t.warnings = append(t.warnings, warning)
	}
	t.info.HZ, t.info.HZFrom = hz, from
	fw2Lead := fw2SilentLead(t.info.HZ)
	if t.info.HZ == 0 {
		t.info.HZ, t.info.HZFrom = 250, "assumed: not known"
		t.warnings = append(t.warnings, "CONFIG_HZ not known (no /boot/config-*, no /proc/config.gz; no jiffies in /proc/schedstat or /proc/timer_list to measure it): assuming 250 for timer expiries")
	}
	if !hasTracepoint(kernelTypes, "inet_sock_set_state") {
		return nil, fmt.Errorf("%w: inet_sock_set_state (tcpstate needs Linux 5.10 or later with BTF)", ErrMissingHook)
	}
	caps := probeKernel(spec, kernelTypes, btfCache)
	syms, err := Kallsyms("tw_timer_handler", "tcp_keepalive_timer")
	if err != nil {
		syms = map[string]uint64{}
	}
	var attach []hook
	warned := map[string]bool{}
	attached := map[string]bool{}
	for _, h := range hooks {
		missing := ""
		switch {
		case attached[h.tracepoint] && !h.second:
			delete(spec.Programs, h.prog) // another variant fits
			continue
		case !hasTracepoint(kernelTypes, h.tracepoint):
			missing = "no tracepoint " + h.tracepoint
		case h.args != 0 && tracepointArgs(kernelTypes, h.tracepoint) != h.args:
			delete(spec.Programs, h.prog) // the next variant may fit
			continue
		case h.needs != "" && syms[h.needs] == 0:
			missing = "address of " + h.needs + " unknown (/proc/kallsyms shows zeros: no CAP_SYSLOG, or kernel.kptr_restrict=2)"
		}
		if missing == "" {
			attach = append(attach, h)
			attached[h.tracepoint] = true
			continue
		}
		if h.optional == "" {
			return nil, fmt.Errorf("%w: %s (tcpstate needs Linux 5.10 or later with BTF)", ErrMissingHook, h.tracepoint)
		}
		delete(spec.Programs, h.prog)
		if !warned[h.optional] {
			warned[h.optional] = true
			t.warnings = append(t.warnings, missing+": "+h.optional)
		}
	}
	for _, p := range probes {
		delete(spec.Programs, p)
	}
	t.features = kernelFeatures(kernelTypes, caps, attached)
	for _, f := range t.features {
		if !f.OK && f.Warn != "" {
			t.warnings = append(t.warnings, f.Warn)
		}
	}
	vars := &obj.tcpstateVariableSpecs
	if err := setVariables(
		setting{vars.TwTimerFn, syms["tw_timer_handler"]},
		setting{vars.KaTimerFn, syms["tcp_keepalive_timer"]},
		setting{vars.Hz, t.info.HZ},
		setting{vars.Fw2SilentLead, fw2Lead},
		setting{vars.HaveSkStorage, caps.skStorage},
		setting{vars.HaveCookie, caps.cookie},
	); err != nil {
		return nil, err
	}
	obj.Events.MaxEntries = uint32(size)
	wake := cfg.WakeupBytes
	switch {
	case wake == 0:
		wake = size / 4
	case wake < 0:
		wake = 0
	}
	if err := setVariables(setting{vars.WakeupBytes, uint64(wake)}); err != nil {
		return nil, err
	}
	twEntries := cfg.TimewaitEntries
	if twEntries <= 0 {
		twEntries = DefaultTimewaitEntries
	}
	obj.TwInfos.MaxEntries = uint32(twEntries)
	obj.TwFinWait2.MaxEntries = uint32(twEntries)
	if !caps.skStorage {
		obj.SkInfoMap.MaxEntries = DefaultSocketEntries
	}
	if err := configureFilter(vars, &cfg.Filter); err != nil {
		return nil, err
	}

	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{KernelTypes: kernelTypes},
		Cache:    btfCache,
	})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading BPF programs on Linux %s: %+v", kernelRelease(), ve)
		}
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("loading BPF programs: %w (%w: is kernel lockdown in confidentiality mode, or BPF disabled by sysctl kernel.unprivileged_bpf_disabled?)", err, ErrPrivileges)
		}
		return nil, fmt.Errorf("loading BPF programs: %w", err)
	}
	t.coll = coll
	t.stats = coll.Maps[tcpstateMapStats]
	if err := fillFilterMaps(coll, &cfg.Filter); err != nil {
		t.Close()
		return nil, err
	}
	for _, h := range attach {
		l, err := link.AttachTracing(link.TracingOptions{Program: coll.Programs[h.prog], AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("attaching to tracepoint %s: %w", h.tracepoint, err)
		}
		t.links = append(t.links, l)
	}
	walk := Feature{Name: "timewait walk",
		Detail:  "a FIN_WAIT2 that turns TIME_WAIT in its timewait socket is reported within 100 ms (BPF map iterator, Linux 5.9)",
		Missing: "a FIN_WAIT2 that turns TIME_WAIT without moving its timer is reported when the timer next acts (up to 60 s late)"}
	if attached["timer_start"] {
		t.fw2, err = link.AttachIter(link.IterOptions{Program: coll.Programs[tcpstateProgIterFinWait2], Map: coll.Maps[tcpstateMapTwFinWait2]})
		if err != nil {
			t.warnings = append(t.warnings, fmt.Sprintf("walking timewait sockets in FIN_WAIT2: %v: %s", err, walk.Missing))
		}
		walk.OK = t.fw2 != nil
	}
	t.features = append(t.features, walk)
	t.reader, err = ringbuf.NewReader(coll.Maps[tcpstateMapEvents])
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("opening ring buffer: %w", err)
	}
	return t, nil
}

// Warnings lists what works less well on this kernel, one sentence each.
func (t *Tracer) Warnings() []string { return t.warnings }

// Features says what works on this kernel and what does not.
func (t *Tracer) Features() []Feature { return t.features }

// setting is a value for a `volatile const` of the BPF object.
type setting struct {
	v     *ebpf.VariableSpec
	value any
}

// setVariables sets constants of the BPF object before loading.
func setVariables(settings ...setting) error {
	for _, s := range settings {
		if err := s.v.Set(s.value); err != nil {
			return fmt.Errorf("configuring BPF programs: setting %s: %w", s.v.Name, err)
		}
	}
	return nil
}

// Info is what the tracer learnt about the kernel.
func (t *Tracer) Info() KernelInfo { return t.info }

// Close detaches and frees everything.
func (t *Tracer) Close() error {
	var errs []error
	// The reader first: a Run under way ends (ErrClosed), with its last
	// loss report if it gets there before the maps close.
	if t.reader != nil {
		errs = append(errs, t.reader.Close())
	}
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	if t.fw2 != nil {
		errs = append(errs, t.fw2.Close())
	}
	errs = append(errs, t.detach())
	if t.coll != nil {
		t.coll.Close()
	}
	return errors.Join(errs...)
}

// detach stops the programs; the maps stay (their counters then hold still).
func (t *Tracer) detach() error {
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	return errors.Join(errs...)
}

// lostCheckInterval is how often the lost counter is read while events flow,
// and how long the reader waits for events before reading anyway (the
// kernel wakes it only for batches, see Config.WakeupBytes).
const lostCheckInterval = 100 * time.Millisecond

// Run reads events until ctx ends, handing each to sink. When ctx ends it
// delivers what is still in the ring buffer, then returns nil. Drops are
// delivered as EventLost events as soon as they are seen.
func (t *Tracer) Run(ctx context.Context, sink Sink) error {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			// Flush makes the reader return what it holds, then ErrFlushed.
			_ = t.reader.Flush()
		case <-stop:
		}
	}()

	var (
		rec       ringbuf.Record
		ev        Event
		lastCheck = time.Now()
		deadline  time.Time
		n         uint
		// drain: read what is in the ring buffer without waiting. The
		// walk of periodic puts events there and wakes nobody.
		drain bool
	)
	for {
		// Wake by the next check at the latest, however events trickle in.
		next := lastCheck.Add(lostCheckInterval)
		if drain {
			next = lastCheck
		}
		if next != deadline { // (it takes a lock: not for every event)
			deadline = next
			t.reader.SetDeadline(deadline)
		}
		err := t.reader.ReadInto(&rec)
		switch {
		case drain && errors.Is(err, os.ErrDeadlineExceeded):
			drain = false
			if err := sink.Idle(); err != nil {
				return err
			}
		case err == nil:
			if err := Decode(rec.RawSample, &ev, t.info.HZ); err != nil {
				return err
			}
			if err := sink.Event(&ev); err != nil {
				return err
			}
			// Every 100 ms while events flow: checked every 256 events
			// under load, and whenever the buffer is drained.
			if n++; (n%256 == 0 || rec.Remaining == 0) && time.Since(lastCheck) >= lostCheckInterval {
				lastCheck = time.Now()
				if err := t.periodic(sink, &ev); errors.Is(err, ErrClosed) {
					return sink.Idle()
				} else if err != nil {
					return err
				}
				drain = true
			}
			if rec.Remaining == 0 {
				if err := sink.Idle(); err != nil {
					return err
				}
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			lastCheck = time.Now()
			if err := t.periodic(sink, &ev); errors.Is(err, ErrClosed) {
				return sink.Idle()
			} else if err != nil {
				return err
			}
			drain = true
		case errors.Is(err, ringbuf.ErrFlushed), errors.Is(err, ringbuf.ErrClosed):
			if err := t.reportLost(sink, &ev); err != nil && !errors.Is(err, ErrClosed) {
				return err
			}
			return sink.Idle()
		default:
			return fmt.Errorf("reading ring buffer: %w", err)
		}
	}
}

// periodic is the reader's work every lostCheckInterval: report losses, and
// walk the timewait sockets still in FIN_WAIT2.
func (t *Tracer) periodic(sink Sink, ev *Event) error {
	if err := t.reportLost(sink, ev); err != nil {
		return err
	}
	return t.walkFinWait2()
}

// walkFinWait2 runs iter_fin_wait2: the timewait sockets in FIN_WAIT2 that
// turned TIME_WAIT since the last walk report it into the ring buffer.
//
// The walk visits every bucket of the map, full or not (2 ms for 65,536, a
// fiftieth of a CPU at 10 a second), so it runs only while the map holds
// anything. Asking for its first key tells: the kernel scans the bucket
// heads without running a program. (Counting additions and removals in the
// kernel would be cheaper to read, but per-CPU counters lose increments to
// softirqs that interrupt the walk, and a count gone wrong stays wrong.)
func (t *Tracer) walkFinWait2() error {
	if t.fw2 == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	var key uint64
	if err := t.coll.Maps[tcpstateMapTwFinWait2].NextKey(nil, &key); errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("walking timewait sockets: %w", err)
	}
	t.fw2Walks.Add(1)
	rd, err := t.fw2.Open()
	if err != nil {
		return fmt.Errorf("walking timewait sockets: %w", err)
	}
	defer rd.Close()
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return fmt.Errorf("walking timewait sockets: %w", err)
	}
	return nil
}

// reportLost delivers an EventLost when the kernel's lost counter, or its
// count of skipped state changes, has grown.
func (t *Tracer) reportLost(sink Sink, ev *Event) error {
	lost, err := t.stat(uint32(tcpstateStatIndexSTAT_LOST))
	if err != nil {
		return err
	}
	skipped, _, err := t.skippedStateChanges()
	if err != nil {
		return err
	}
	lost += skipped
	if lost <= t.lostSeen {
		return nil
	}
	*ev = Event{Type: EventLost, Time: BootNow(), Lost: lost - t.lostSeen}
	t.lostSeen = lost
	return sink.Event(ev)
}

func (t *Tracer) stat(idx uint32) (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, ErrClosed
	}
	if err := t.stats.Lookup(idx, &t.percpu); err != nil {
		return 0, fmt.Errorf("reading counters: %w", err)
	}
	var sum uint64
	for _, v := range t.percpu {
		sum += v
	}
	return sum, nil
}

// skippedStateChanges is how many state changes the kernel skipped for
// handle_set_state and catch_set_state did not take over (lost), and how many
// it did (caught).
//
// The kernel counts a miss before catch_set_state runs for it, so the misses
// are read first: a change skipped between the two reads is then counted as
// caught before it is counted as missed, and the difference can only fall
// short (made up by a later report), never run over what was lost. Read the
// other way round, a burst of caught skips during the reads was reported as
// lost: 56 reported against 4 lost on arm64.
func (t *Tracer) skippedStateChanges() (lost, caught uint64, err error) {
	missed := t.skipped(tcpstateProgHandleSetState)
	caught, err = t.stat(uint32(tcpstateStatIndexSTAT_CAUGHT))
	if err != nil {
		return 0, 0, err
	}
	if missed < caught { // (the two counters are not read at one instant)
		return 0, caught, nil
	}
	return missed - caught, caught, nil
}

// skipped is how often the kernel skipped the named programs (0 where it
// does not count, before 5.12).
func (t *Tracer) skipped(progs ...string) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0
	}
	var n uint64
	for _, name := range progs {
		if p := t.coll.Programs[name]; p != nil {
			if st, err := p.Stats(); err == nil {
				n += st.RecursionMisses
			}
		}
	}
	return n
}

// Stats reads the kernel side's counters.
func (t *Tracer) Stats() (Stats, error) {
	var s Stats
	for _, f := range []struct {
		idx tcpstateStatIndex
		dst *uint64
	}{
		// Seen last: an event is counted seen before filtered or lost,
		// so that, read while programs run, filtered + lost + delivered
		// never exceed seen.
		{tcpstateStatIndexSTAT_FILTERED, &s.Filtered},
		{tcpstateStatIndexSTAT_LOST, &s.Lost},
		{tcpstateStatIndexSTAT_SEEN, &s.Seen},
		{tcpstateStatIndexSTAT_NOSTORAGE, &s.NoStorage},
		{tcpstateStatIndexSTAT_TW_UNTRACKED, &s.TimewaitUntracked},
	} {
		v, err := t.stat(uint32(f.idx))
		if err != nil {
			return s, err
		}
		*f.dst = v
	}
	var err error
	if s.Skipped, s.Caught, err = t.skippedStateChanges(); err != nil {
		return s, err
	}
	s.SkippedTimers = t.skipped(tcpstateProgHandleTimerStart, tcpstateProgHandleTimerExpire, tcpstateProgHandleTimerCancel, tcpstateProgHandleTimerExit)
	return s, nil
}

// configureFilter sets the kernel filter's constants.
func configureFilter(vars *tcpstateVariableSpecs, f *Filter) error {
	var ports uint8
	if len(f.Ports) > 0 {
		ports |= portEither
	}
	if len(f.LPorts) > 0 {
		ports |= portLocal
	}
	if len(f.RPorts) > 0 {
		ports |= portRemote
	}
	var family uint16
	switch f.Family {
	case IPv4:
		family = afInet
	case IPv6:
		family = afInet6
	}
	var comm [16]byte
	copy(comm[:15], f.Comm)
	return setVariables(
		setting{vars.FilterFamily, family},
		setting{vars.FilterNetns, f.NetNS},
		setting{vars.FilterStates, uint32(f.States)},
		setting{vars.FilterPorts, ports},
		setting{vars.FilterAddrs, len(f.Addrs) > 0},
		setting{vars.FilterPids, len(f.PIDs) > 0},
		setting{vars.FilterComm, comm},
	)
}

const (
	portEither = uint8(tcpstatePortSidePORT_EITHER)
	portLocal  = uint8(tcpstatePortSidePORT_LOCAL)
	portRemote = uint8(tcpstatePortSidePORT_REMOTE)
)

// fillFilterMaps writes the filter's sets into the kernel.
func fillFilterMaps(coll *ebpf.Collection, f *Filter) error {
	ports := map[uint16]uint8{}
	for _, l := range []struct {
		ports []uint16
		bit   uint8
	}{{f.Ports, portEither}, {f.LPorts, portLocal}, {f.RPorts, portRemote}} {
		for _, p := range l.ports {
			ports[p] |= l.bit
		}
	}
	for p, bits := range ports {
		if err := coll.Maps[tcpstateMapFilterPortMap].Put(p, bits); err != nil {
			return fmt.Errorf("writing port filter: %w", err)
		}
	}
	for _, p := range f.Addrs {
		if err := coll.Maps[tcpstateMapFilterAddrMap].Put(addrKey(p), uint8(1)); err != nil {
			return fmt.Errorf("writing address filter: %w", err)
		}
	}
	for _, pid := range f.PIDs {
		if err := coll.Maps[tcpstateMapFilterPidMap].Put(pid, uint8(1)); err != nil {
			return fmt.Errorf("writing pid filter: %w", err)
		}
	}
	return nil
}

// addrKey is the LPM trie key of a prefix: IPv4 is stored v4-mapped.
func addrKey(p netip.Prefix) tcpstateAddrKey {
	a, bits := p.Addr(), p.Bits()
	if a.Is4() {
		a, bits = netip.AddrFrom16(a.As16()), bits+96
	}
	return tcpstateAddrKey{Prefixlen: uint32(bits), Addr: a.As16()}
}

// String summarises s for the end-of-run line.
func (s Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d seen in kernel, %d filtered in kernel, %d lost", s.Seen, s.Filtered, s.AllLost())
	if s.SkippedTimers > 0 {
		fmt.Fprintf(&b, ", %d timer hook runs skipped", s.SkippedTimers)
	}
	if s.NoStorage > 0 {
		fmt.Fprintf(&b, ", %d without socket storage", s.NoStorage)
	}
	return b.String()
}

// HookCost is how often a program ran and for how long, while kernel BPF
// statistics were enabled (ebpf.EnableStats).
type HookCost struct {
	Runs    uint64
	Runtime time.Duration
}

// PerRun is the average cost of one run.
func (h HookCost) PerRun() time.Duration {
	if h.Runs == 0 {
		return 0
	}
	return h.Runtime / time.Duration(h.Runs)
}

// HookCosts reads the kernel's counters of each attached program, by
// tracepoint name.
func (t *Tracer) HookCosts() (map[string]HookCost, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	out := map[string]HookCost{}
	for _, h := range hooks {
		p := t.coll.Programs[h.prog]
		if p == nil {
			continue
		}
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("reading statistics of %s: %w", h.prog, err)
		}
		// (a second program's runs are part of its tracepoint's cost)
		c := out[h.tracepoint]
		if !h.second {
			c.Runs = st.RunCount
		}
		c.Runtime += st.Runtime
		out[h.tracepoint] = c
	}
	return out, nil
}
