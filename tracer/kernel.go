// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// kernelHZ reads CONFIG_HZ, the rate of jiffies, from the kernel's config
// (/boot/config-RELEASE, then /proc/config.gz). 0 when neither says.
func kernelHZ() uint32 {
	for _, path := range []string{"/boot/config-" + kernelRelease(), "/proc/config.gz"} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		var r io.Reader = f
		if strings.HasSuffix(path, ".gz") {
			gz, err := gzip.NewReader(f)
			if err != nil {
				f.Close()
				continue
			}
			r = gz
		}
		hz := configHZ(r)
		f.Close()
		if hz != 0 {
			return hz
		}
	}
	return 0
}

func configHZ(r io.Reader) uint32 {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CONFIG_HZ="); ok {
			n, err := strconv.ParseUint(v, 10, 32)
			if err == nil {
				return uint32(n)
			}
		}
	}
	return 0
}

// jiffiesSample is the kernel's jiffies, read between two readings of the
// monotonic clock (at is their midpoint, window their distance); ok false
// when no file gave it.
type jiffiesSample struct {
	jiffies uint64
	at      time.Time
	window  time.Duration
	ok      bool
}

// jiffiesFiles give jiffies in a line of their first lines: /proc/schedstat
// (CONFIG_SCHEDSTATS, world-readable, not masked in containers), then
// /proc/timer_list (root only; masked by container runtimes unless
// privileged).
var jiffiesFiles = []struct{ path, prefix string }{
	{"/proc/schedstat", "timestamp "},
	{"/proc/timer_list", "jiffies: "},
}

// maxJiffiesWindow bounds a sample's window: a read delayed longer (timer_list
// prints a CPU's high-resolution timers first; a preemption) is made again,
// up to ten times (a loaded machine can preempt three reads in a row).
const maxJiffiesWindow = 2 * time.Millisecond

// sampleJiffies reads jiffies from the first of jiffiesFiles that has them.
func sampleJiffies() jiffiesSample {
	var line [4096]byte
	for _, f := range jiffiesFiles {
		for range 10 {
			before := time.Now()
			j, ok := readJiffies(f.path, f.prefix, line[:])
			after := time.Now()
			if !ok {
				break
			}
			if w := after.Sub(before); w <= maxJiffiesWindow {
				return jiffiesSample{jiffies: j, at: before.Add(w / 2), window: w, ok: true}
			}
		}
	}
	return jiffiesSample{}
}

// readJiffies finds the first line of path that starts with prefix, in its
// first len(buf) bytes, and parses the number after it.
func readJiffies(path, prefix string, buf []byte) (uint64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	n, _ := io.ReadFull(f, buf)
	return parseJiffies(buf[:n], prefix)
}

func parseJiffies(b []byte, prefix string) (uint64, bool) {
	text := string(b)
	for {
		line, rest, found := strings.Cut(text, "\n")
		if !found {
			return 0, false // the end, or cut short: not a whole line
		}
		text = rest
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
}

// minHZSpan is how far apart two samples must be for measuredHZ: 250 and 300
// are then 37.5 and 45 jiffies apart.
const minHZSpan = 150 * time.Millisecond

// hzCandidates are the CONFIG_HZ choices of x86 and arm64 kernels.
var hzCandidates = []uint32{100, 250, 300, 1000}

// measuredHZ is the CONFIG_HZ that jiffies advanced at between two samples:
// the one candidate whose expected count of jiffies is within the
// samples' error (each up to a tick late, and read somewhere in its
// window). 0 when none or more than one fits, or the samples are too close.
func measuredHZ(a, b jiffiesSample) uint32 {
	span := b.at.Sub(a.at)
	if !a.ok || !b.ok || span < minHZSpan || b.jiffies < a.jiffies {
		return 0
	}
	got := float64(b.jiffies - a.jiffies)
	found := uint32(0)
	for _, hz := range hzCandidates {
		want := float64(hz) * span.Seconds()
		slack := 1.5 + float64(hz)*(a.window+b.window).Seconds()/2
		if got < want-slack || got > want+slack {
			continue
		}
		if found != 0 {
			return 0
		}
		found = hz
	}
	return found
}

// resolveHZ chooses between CONFIG_HZ from the kernel's config (0: not
// found) and the rate measured (0: none): the measurement when they differ
// (a config file of another build of the same release), with a warning.
// from says which; hz 0 when neither is known.
func resolveHZ(config, measured uint32) (hz uint32, from, warning string) {
	switch {
	case config == 0 && measured == 0:
		return 0, "", ""
	case measured == 0:
		return config, "the kernel config", ""
	case measured == config:
		return config, "the kernel config, and measured", ""
	case config == 0:
		return measured, "measured (no kernel config)", ""
	}
	return measured, fmt.Sprintf("measured (the kernel config says %d)", config),
		fmt.Sprintf("the kernel config says CONFIG_HZ=%d, but jiffies advance %d a second: using %d", config, measured, measured)
}

// fw2SilentLead is, in jiffies at hz, how long before a timewait FIN_WAIT2
// timer's expiry the watch for a silent turn to TIME_WAIT ends (bpf
// fw2_silent_lead): one bucket's width after the peer's FIN stops being able
// to make one.
//
// The FIN re-arms the timer for TCP_TIMEWAIT_LEN (60 s) with
// mod_timer_pending(). Only when the new expiry falls in the timer's current
// wheel bucket (same level, same slot: kernel/time/timer.c, __mod_timer() and
// calc_wheel_index()) does the kernel just rewrite timer->expires; in any
// other bucket it re-queues the timer, and timer_start fires. The same bucket
// needs the two expiries less than the level's granularity apart (the level
// that holds 60 s: at HZ=250 level 3, 512 jiffies). The new expiry is the
// FIN's jiffies plus 60 s, so a silent turn needs the FIN before the old
// expiry less 60 s plus one granularity, whatever the first timeout was (up
// to 60 s, or more: 3.5 RTO, or tcp_fin_timeout above 120 s). The lead ends
// the watch a second granularity later. 0 (always watched) when hz is not
// known: a wrong guess could end the watch too early.
func fw2SilentLead(hz uint32) uint64 {
	if hz == 0 {
		return 0
	}
	const (
		lvlBits  = 6 // LVL_BITS: 64 buckets a level
		lvlShift = 3 // LVL_CLK_SHIFT: each level 8 times coarser
	)
	timewaitLen := uint64(TimewaitLen/time.Second) * uint64(hz)
	// Level n holds the deltas from LVL_START(n) = (LVL_SIZE - 1) << ((n - 1)
	// * LVL_CLK_SHIFT) on. The delta is taken a little long: the base's clock
	// may lag jiffies by a few ticks, and a coarser level only widens the
	// margin.
	level := uint64(0)
	for level < 8 && timewaitLen+64 >= ((1<<lvlBits)-1)<<(level*lvlShift) {
		level++
	}
	gran := uint64(1) << (level * lvlShift)
	if 2*gran >= timewaitLen {
		return 0
	}
	return timewaitLen - 2*gran
}

// Kallsyms finds the addresses of the named kernel functions in
// /proc/kallsyms. A name that is missing, or hidden (kernel.kptr_restrict
// shows zeros), maps to 0.
func Kallsyms(names ...string) (map[string]uint64, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	out := make(map[string]uint64, len(names))
	sc := bufio.NewScanner(f)
	for sc.Scan() && len(out) < len(names) {
		// Bytes, not Text: a string for each of its 200,000 lines was 5 MB
		// of garbage at every start (want[string(b)] does not allocate).
		line := sc.Bytes()
		// "ffffffff82006870 t tw_timer_handler" (modules add "\t[mod]")
		sp := bytes.LastIndexByte(line, ' ')
		if sp < 0 || !want[string(line[sp+1:])] {
			continue
		}
		addr, _, _ := bytes.Cut(line, []byte(" "))
		v, err := strconv.ParseUint(string(addr), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("parsing /proc/kallsyms: %q", line)
		}
		out[string(line[sp+1:])] = v
	}
	return out, sc.Err()
}

// resetReasons names the kernel's enum sk_rst_reason values from its BTF:
// SK_RST_REASON_TCP_ABORT_ON_CLOSE becomes TCP_ABORT_ON_CLOSE.
func resetReasons(spec *btf.Spec) map[uint16]string {
	var enum *btf.Enum
	if err := spec.TypeByName("sk_rst_reason", &enum); err != nil {
		return nil
	}
	names := make(map[uint16]string, len(enum.Values))
	for _, v := range enum.Values {
		names[uint16(v.Value)] = strings.TrimPrefix(v.Name, "SK_RST_REASON_")
	}
	return names
}

// tracepointArgs is the number of arguments the kernel passes to the raw
// tracepoint name's programs, from the BTF of its btf_trace_ typedef; -1
// when unknown.
func tracepointArgs(spec *btf.Spec, name string) int {
	var td *btf.Typedef
	if spec.TypeByName("btf_trace_"+name, &td) != nil {
		return -1
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return -1
	}
	fp, ok := ptr.Target.(*btf.FuncProto)
	if !ok || len(fp.Params) == 0 {
		return -1
	}
	return len(fp.Params) - 1 // the first is the tracepoint's own data
}

// kernelCaps is what tracing programs may do on this kernel.
type kernelCaps struct {
	skStorage bool // bpf_sk_storage_get (Linux 5.11)
	cookie    bool // bpf_get_socket_cookie (Linux 5.12)
}

// probeKernel loads each probe program alone (never attached): the kernel's
// verifier says whether the helper it calls is allowed here. This follows
// what the kernel does, not its version number, so backports count.
func probeKernel(spec *ebpf.CollectionSpec, kernelTypes *btf.Spec, cache *btf.Cache) kernelCaps {
	try := func(name string) bool {
		ps, ok := spec.Programs[name]
		if !ok {
			return false
		}
		one := spec.Copy()
		one.Programs = map[string]*ebpf.ProgramSpec{"prog": ps.Copy()}
		var objs struct {
			Prog *ebpf.Program `ebpf:"prog"`
		}
		err := one.LoadAndAssign(&objs, &ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{KernelTypes: kernelTypes}, Cache: cache})
		if err != nil {
			return false
		}
		objs.Prog.Close()
		return true
	}
	return kernelCaps{
		skStorage: try(tcpstateProgProbeSkStorage),
		cookie:    try(tcpstateProgProbeCookie),
	}
}

// hasMember reports whether the kernel's struct has the member.
func hasMember(spec *btf.Spec, typ, member string) bool {
	var st *btf.Struct
	if spec.TypeByName(typ, &st) != nil {
		return false
	}
	for _, m := range st.Members {
		if m.Name == member {
			return true
		}
	}
	return false
}

// Feature is something tcpstate does that depends on the kernel.
type Feature struct {
	Name   string // short name, as in README's kernel table
	OK     bool
	Detail string // what it gives, and since when Linux has it
	// Missing is what is lost where the kernel lacks it.
	Missing string
	// Warn is the warning line printed at start when the feature is
	// missing; "" when a hook's warning already says it.
	Warn string
}

// kernelFeatures lists what works here, given the probes and the hooks attached.
func kernelFeatures(kernelTypes *btf.Spec, caps kernelCaps, attached map[string]bool) []Feature {
	f := []Feature{
		{Name: "transitions", OK: true, Detail: "every state change of a TCP socket (inet_sock_set_state)"},
		{Name: "socket storage", OK: caps.skStorage, Detail: "per-socket state freed with the socket (bpf_sk_storage_get in tracing programs, Linux 5.11)",
			Missing: fmt.Sprintf("per-socket state in a table of %d sockets (LRU) keyed by address; accepted sockets named from their listener by tcpstate", DefaultSocketEntries)},
		{Name: "cookies", OK: caps.cookie, Detail: "connections identified by the kernel's socket cookie, as ss -e shows it (bpf_get_socket_cookie in tracing programs, Linux 5.12)",
			Missing: "connections get tcpstate's own ids (top bit set) unless the kernel had made a cookie"},
		{Name: "acceptor", OK: attached["sock_send_length"] && attached["sock_recv_length"], Detail: "an accepted socket is named after the process that accepted it (sock_send_length, sock_recv_length: Linux 6.3)",
			Missing: "an accepted socket stays attributed to its listener's process until the acceptor closes it"},
		{Name: "resets", OK: attached["tcp_receive_reset"] && attached["tcp_send_reset"], Detail: "close reasons tell resets from orderly closes (tcp_receive_reset, tcp_send_reset)",
			Missing: noReset},
		{Name: "reset reasons", OK: tracepointArgs(kernelTypes, "tcp_send_reset") >= 3, Detail: "the kernel's reason for each reset sent (tcp_send_reset's reason, Linux 6.10)",
			Missing: "resets sent are reported without the kernel's reason"},
		{Name: "timewait", OK: attached["timer_start"] && attached["timer_expire_entry"] && attached["timer_cancel"], Detail: "TIME_WAIT and orphaned FIN_WAIT2 followed in the timewait socket (timer tracepoints, tw_timer_handler)",
			Missing: noTimewait},
		{Name: "keepalive", OK: attached["timer_start"] && attached["timer_expire_entry"] && attached["timer_expire_exit"], Detail: "keepalive timers, probes and kills (timer tracepoints, tcp_keepalive_timer)",
			Missing: noKeepalive},
		{Name: "recursion misses", OK: hasMember(kernelTypes, "bpf_prog_info", "recursion_misses"), Detail: "events the kernel skipped (a program interrupted by itself) are counted (Linux 5.12)",
			Missing: "events lost to the kernel's recursion guard go uncounted"},
	}
	// Features no hook warning covers get a warning of their own.
	for i := range f {
		if lack, ok := map[string]string{
			"socket storage":   "no socket storage for tracing programs",
			"cookies":          "no socket cookies from tracing programs",
			"reset reasons":    "tcp_send_reset has no reason argument",
			"recursion misses": "the kernel does not count skipped program runs",
		}[f[i].Name]; ok {
			f[i].Warn = lack + " (" + linuxOf(f[i].Detail) + "): " + f[i].Missing
		}
	}
	if f[5].OK && !f[4].OK {
		f[5].OK, f[5].Warn = false, "" // no reset hooks at all: said by their warning
	}
	return f
}

// linuxOf picks "Linux N.M" out of a feature's detail.
func linuxOf(detail string) string {
	if i := strings.LastIndex(detail, "Linux "); i >= 0 {
		return strings.TrimRight(detail[i:], ")")
	}
	return "this kernel"
}
