// SPDX-License-Identifier: Apache-2.0

// Package metrics exports what tcpstate serve knows in the Prometheus
// exposition format, through client_golang: a Collector that turns one
// consistent Snapshot (taken by the tracer's goroutine, which alone owns the
// table) into constant metrics at each scrape.
//
// Every label set is bounded by design: states (13), close reasons (10),
// transitions (13 x 13), kernel reset reasons (the kernel's enum, about 40),
// tracepoints (8), and the top-N groups (processes per state, TIME_WAIT
// remotes, failed-connect remotes), whose rest is summed under "[other]".
package metrics

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// Other is the label value of what the top-N groups leave out; Unknown that
// of an owner tcpstate does not know.
const (
	Other   = "[other]"
	Unknown = "[unknown]"
)

// States indexes per-state arrays by tracer.State.
const States = 16

// DurationBuckets are the upper bounds, in seconds, of the time-in-state
// histogram: 100 us to an hour, so that histogram_quantile answers from a
// loopback handshake to a CLOSE_WAIT leak. 61 and 65: TIME_WAIT and an
// orphaned FIN_WAIT2 last 60 s and a little more (timer slack), most of a
// churning host's closes; without them p99 read 119 s.
var DurationBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 30, 60, 61, 65, 120, 300, 600, 1800, 3600,
}

// Histogram counts durations per bucket (not cumulative; the last counts
// those above every bound).
type Histogram struct {
	Counts [26]uint64
	Count  uint64
	Sum    float64 // seconds
}

// Observe adds one duration.
func (h *Histogram) Observe(d time.Duration) {
	s := d.Seconds()
	i, _ := slices.BinarySearch(DurationBuckets, s)
	h.Counts[i]++
	h.Count++
	h.Sum += s
}

// ProcessGroup is the sockets one process (by name and container) holds in
// one state.
type ProcessGroup struct {
	State tracer.State
	Attribution
	Count  int
	Oldest time.Duration
}

// Attribution names who holds sockets: the task name and where it runs.
type Attribution struct {
	Comm        string // Unknown, or Other for the rest of a top N
	ContainerID string
	PodUID      string
	Unit        string // systemd service
}

// RemoteGroup is the sockets in one state to one remote endpoint.
type RemoteGroup struct {
	Remote string // address:port, address:* for the clients of a local service, or Other
	Count  int
	Oldest time.Duration
	Key    any // the caller's, to name the groups it keeps after TopRemotes (Remote "")
}

// FailKey is a failed connect's remote and why it failed.
type FailKey struct {
	Remote string // address:port, or Other
	Reason tracer.Reason
}

// Counters are what serve counts from the events since it started.
type Counters struct {
	Transitions       [States][States]uint64 // [old][new]
	Durations         [States]Histogram      // time in a state, by the state, when the tracer saw it begin and end
	Closes            [16]uint64             // by tracer.Reason
	ResetsSent        map[uint16]uint64      // by the kernel's reset reason
	KeepaliveProbes   uint64
	KeepaliveTimeouts uint64
	FailedConnects    map[FailKey]uint64
}

// Clone copies c (its maps too).
func (c *Counters) Clone() Counters {
	out := *c
	out.ResetsSent = make(map[uint16]uint64, len(c.ResetsSent))
	for k, v := range c.ResetsSent {
		out.ResetsSent[k] = v
	}
	out.FailedConnects = make(map[FailKey]uint64, len(c.FailedConnects))
	for k, v := range c.FailedConnects {
		out.FailedConnects[k] = v
	}
	return out
}

// Snapshot is everything one scrape reports, taken at once.
type Snapshot struct {
	Sockets         [States]int           // in the table, by state
	Oldest          [States]time.Duration // the most the oldest socket in each state can have been there
	Processes       []ProcessGroup        // top N per state
	TimewaitRemotes []RemoteGroup         // top N
	Counters
	Tracer    tracer.Stats
	TracerErr error
	Timeline  timeline.Stats
	HookCosts map[string]tracer.HookCost // nil: kernel statistics off
	Info      tracer.KernelInfo
	// The sysctls of tcpstate's own network namespace the alerts compare
	// with (0: not read).
	FinTimeout time.Duration // net.ipv4.tcp_fin_timeout
	LocalPorts int           // ports in net.ipv4.ip_local_port_range
}

// TopProcesses keeps, per state, the n biggest groups and sums the rest
// into one group of comm Other.
func TopProcesses(groups []ProcessGroup, n int) []ProcessGroup {
	slices.SortFunc(groups, func(a, b ProcessGroup) int {
		return cmp.Or(cmp.Compare(a.State, b.State), cmp.Compare(b.Count, a.Count), cmp.Compare(b.Oldest, a.Oldest),
			cmp.Compare(a.Comm, b.Comm), cmp.Compare(a.ContainerID, b.ContainerID), cmp.Compare(a.Unit, b.Unit))
	})
	var out []ProcessGroup
	kept := 0
	for i, g := range groups {
		if i > 0 && g.State != groups[i-1].State {
			kept = 0
		}
		if kept < n {
			out = append(out, g)
			kept++
			continue
		}
		if last := &out[len(out)-1]; last.Comm == Other && last.State == g.State {
			last.Count += g.Count
			last.Oldest = max(last.Oldest, g.Oldest)
		} else {
			out = append(out, ProcessGroup{State: g.State, Attribution: Attribution{Comm: Other}, Count: g.Count, Oldest: g.Oldest})
		}
	}
	return out
}

// TopRemotes keeps the n biggest groups and sums the rest under Other.
func TopRemotes(groups []RemoteGroup, n int) []RemoteGroup {
	slices.SortFunc(groups, func(a, b RemoteGroup) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(b.Oldest, a.Oldest), cmp.Compare(a.Remote, b.Remote))
	})
	if len(groups) <= n {
		return groups
	}
	rest := RemoteGroup{Remote: Other}
	for _, g := range groups[n:] {
		rest.Count += g.Count
		rest.Oldest = max(rest.Oldest, g.Oldest)
	}
	return append(groups[:n:n], rest)
}

// StateLabel is a state as node_exporter's tcpstat spells it: close_wait.
func StateLabel(s tracer.State) string { return strings.ToLower(s.String()) }

// Collector is a prometheus.Collector over the snapshot get returns.
type Collector struct {
	get     func() *Snapshot
	version string
}

// NewCollector collects the snapshot get returns at each scrape.
func NewCollector(get func() *Snapshot, version string) *Collector {
	return &Collector{get: get, version: version}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("tcpstate_"+name, help, labels, nil)
}

var (
	descSockets = desc("sockets", "Sockets tcpstate knows in each TCP state now (those older than tcpstate found by its start-up walk).", "state")
	descOldest  = desc("oldest_socket_age_seconds", "The most the oldest socket in each state can have been in it: for sockets older than tcpstate, kernel timestamps bound it in CLOSE_WAIT, FIN_WAIT2 and TIME_WAIT and estimate it in FIN_WAIT1, LAST_ACK and CLOSING; in other states they count from tcpstate's start.", "state")
	descProc    = desc("process_sockets", "Sockets held in a closing state (close_wait, fin_wait1, fin_wait2, closing, last_ack) by a process, by name and where it runs; the top processes per state, the rest summed as comm=\"[other]\".",
		"state", "comm", "container_id", "pod_uid", "unit")
	descProcOldest = desc("process_oldest_socket_age_seconds", "Age of the oldest socket of tcpstate_process_sockets' group.",
		"state", "comm", "container_id", "pod_uid", "unit")
	descTWRemote       = desc("timewait_sockets", "Sockets in TIME_WAIT to a remote endpoint (address:*: the clients of a local service); the top remotes, the rest summed as remote=\"[other]\".", "remote")
	descTransitions    = desc("transitions_total", "State transitions seen.", "from", "to")
	descDuration       = desc("state_duration_seconds", "Time spent in a state, for the states tcpstate saw begin and end.", "state")
	descCloses         = desc("closes_total", "Connections that reached CLOSE, by why: fin, rst_received, rst_sent, timeout, refused, closed, error, timewait_expired, fin_timeout, timewait_killed.", "reason")
	descResets         = desc("resets_sent_total", "Connections this host reset, by the kernel's reset reason (Linux 6.10+; \"unknown\" before).", "reason")
	descKAProbes       = desc("keepalive_probes_total", "Keepalive probes sent.")
	descKATimeouts     = desc("keepalive_timeouts_total", "Connections killed by keepalive (every probe unanswered).")
	descFailed         = desc("failed_connects_total", "Connects that ended in SYN_SENT, by remote (the first remotes seen, the rest as \"[other]\") and reason.", "remote", "reason")
	descEvents         = desc("events_total", "Events the kernel side produced (delivered, filtered in the kernel, or lost).")
	descFiltered       = desc("events_filtered_total", "Events dropped by the in-kernel filter.")
	descLost           = desc("events_lost_total", "Events lost: ring_buffer (full), recursion (state changes the kernel's recursion guard skipped).", "cause")
	descTimersSkipped  = desc("timer_runs_skipped_total", "Runs of the timer hooks the kernel skipped (a TIME_WAIT or keepalive event lost if one was a TCP timer).")
	descTracked        = desc("tracked_connections", "Connections in tcpstate's table.")
	descEvicted        = desc("evicted_connections_total", "Connections dropped from a full table (raise --max-connections).")
	descGone           = desc("resync_gone_connections_total", "Connections a walk after a loss no longer found (their end was lost).")
	descUnseen         = desc("unseen_transitions_total", "Transitions whose steps between were not seen: a timewait socket found in a state its connection was not seen to reach.")
	descUntracked      = desc("timewait_untracked_total", "Timewait sockets that ended without tcpstate knowing their start.")
	descProgRuns       = desc("bpf_program_runs_total", "Runs of tcpstate's BPF programs, by tracepoint (with kernel BPF statistics on: --bpf-stats).", "tracepoint")
	descProgTime       = desc("bpf_program_run_seconds_total", "Time in tcpstate's BPF programs, by tracepoint (with kernel BPF statistics on: --bpf-stats).", "tracepoint")
	descFinTimeout     = desc("tcp_fin_timeout_seconds", "net.ipv4.tcp_fin_timeout in tcpstate's network namespace: how long an orphaned FIN_WAIT2 may last.")
	descLocalPorts     = desc("local_ports", "Ports in net.ipv4.ip_local_port_range in tcpstate's network namespace: how many connections to one remote endpoint can exist at once.")
	descBuild          = desc("build_info", "tcpstate's version and the kernel it runs on.", "version", "kernel")
	descScrapeErr      = desc("scrape_error", "1 when the kernel's counters could not be read for this scrape.")
	allDescs           = []*prometheus.Desc{descSockets, descOldest, descProc, descProcOldest, descTWRemote, descTransitions, descDuration, descCloses, descResets, descKAProbes, descKATimeouts, descFailed, descEvents, descFiltered, descLost, descTimersSkipped, descTracked, descEvicted, descGone, descUnseen, descUntracked, descProgRuns, descProgTime, descBuild, descScrapeErr, descFinTimeout, descLocalPorts}
	kernelRelease      string
	closeReasonsLabels = func() map[tracer.Reason]string {
		m := map[tracer.Reason]string{}
		for r := tracer.ReasonFIN; r <= tracer.ReasonTWKilled; r++ {
			m[r] = r.String()
		}
		return m
	}()
)

// SetKernel names the kernel in tcpstate_build_info.
func SetKernel(release string) { kernelRelease = release }

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect sends the metrics of the current snapshot.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.get()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descBuild, 1, c.version, kernelRelease)
	for st := tracer.Established; st <= tracer.Closing; st++ {
		if st == tracer.Close {
			continue // a socket in CLOSE is gone from the table
		}
		gauge(descSockets, float64(s.Sockets[st]), StateLabel(st))
		gauge(descOldest, s.Oldest[st].Seconds(), StateLabel(st))
	}
	for _, g := range s.Processes {
		l := []string{StateLabel(g.State), g.Comm, g.ContainerID, g.PodUID, g.Unit}
		gauge(descProc, float64(g.Count), l...)
		gauge(descProcOldest, g.Oldest.Seconds(), l...)
	}
	for _, g := range s.TimewaitRemotes {
		gauge(descTWRemote, float64(g.Count), g.Remote)
	}
	for from := range s.Transitions {
		for to, n := range s.Transitions[from] {
			if n > 0 {
				counter(descTransitions, float64(n), StateLabel(tracer.State(from)), StateLabel(tracer.State(to)))
			}
		}
	}
	for st := tracer.Established; st <= tracer.Closing; st++ {
		h := &s.Durations[st]
		if st == tracer.Close {
			continue
		}
		buckets := make(map[float64]uint64, len(DurationBuckets))
		var cum uint64
		for i, le := range DurationBuckets {
			cum += h.Counts[i]
			buckets[le] = cum
		}
		ch <- prometheus.MustNewConstHistogram(descDuration, h.Count, h.Sum, buckets, StateLabel(st))
	}
	for r, name := range closeReasonsLabels {
		counter(descCloses, float64(s.Closes[r]), name)
	}
	for code, n := range s.ResetsSent {
		name, ok := s.Info.RstReasons[code]
		if !ok {
			name = "unknown"
		}
		counter(descResets, float64(n), strings.ToLower(name))
	}
	counter(descKAProbes, float64(s.KeepaliveProbes))
	counter(descKATimeouts, float64(s.KeepaliveTimeouts))
	for k, n := range s.FailedConnects {
		counter(descFailed, float64(n), k.Remote, k.Reason.String())
	}
	scrapeErr := 0.0
	if s.TracerErr != nil {
		scrapeErr = 1
	}
	gauge(descScrapeErr, scrapeErr)
	counter(descEvents, float64(s.Tracer.Seen))
	counter(descFiltered, float64(s.Tracer.Filtered))
	counter(descLost, float64(s.Tracer.Lost), "ring_buffer")
	counter(descLost, float64(s.Tracer.Skipped), "recursion")
	counter(descTimersSkipped, float64(s.Tracer.SkippedTimers))
	counter(descUntracked, float64(s.Tracer.TimewaitUntracked))
	gauge(descTracked, float64(s.Timeline.Conns))
	counter(descEvicted, float64(s.Timeline.Evicted))
	counter(descGone, float64(s.Timeline.Gone))
	counter(descUnseen, float64(s.Timeline.Unseen))
	if s.FinTimeout > 0 {
		gauge(descFinTimeout, s.FinTimeout.Seconds())
	}
	if s.LocalPorts > 0 {
		gauge(descLocalPorts, float64(s.LocalPorts))
	}
	for tp, hc := range s.HookCosts {
		counter(descProgRuns, float64(hc.Runs), tp)
		counter(descProgTime, hc.Runtime.Seconds(), tp)
	}
}
