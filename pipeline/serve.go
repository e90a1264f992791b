// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpstate/tcpstate/internal/cgroup"
	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/output/metrics"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// Serve keeps what `tcpstate serve` exports. It is the timeline's sink: it
// counts the events on the tracer's goroutine, which alone owns the table,
// and takes a snapshot there when a scrape asks for one (Current).
type Serve struct {
	tl       *timeline.Timeline
	filter   tracer.Filter
	resolver *cgroup.Resolver
	opts     ServeOptions
	counters metrics.Counters
	// failRemotes: the remotes failed connects are counted under (the
	// first MaxRemotes seen; later ones go under metrics.Other).
	failRemotes map[string]bool

	requests chan chan *metrics.Snapshot
	mu       sync.Mutex
	last     *metrics.Snapshot
	alive    atomic.Int64 // UnixNano of the tracer goroutine's last Idle
}

// ServeOptions configure Serve.
type ServeOptions struct {
	Filter     tracer.Filter // its States are ignored
	MaxConns   int
	Rescan     Rescan
	TopProcs   int // process groups per state
	TopRemotes int // TIME_WAIT remotes, and failed-connect remotes
	Resolver   *cgroup.Resolver
	// Stats and HookCosts read the kernel's counters (HookCosts nil: kernel
	// BPF statistics are off).
	Stats     func() (tracer.Stats, error)
	HookCosts func() (map[string]tracer.HookCost, error)
	Info      tracer.KernelInfo
}

// NewServe returns a Serve; feed its Sink.
func NewServe(o ServeOptions) *Serve {
	s := &Serve{filter: o.Filter, resolver: o.Resolver, opts: o, failRemotes: map[string]bool{},
		requests: make(chan chan *metrics.Snapshot, 64)}
	s.filter.States = 0
	s.counters.ResetsSent = map[uint16]uint64{}
	s.counters.FailedConnects = map[metrics.FailKey]uint64{}
	rs := &resync{rescan: o.Rescan, withTimewait: true, next: s}
	s.tl = timeline.New(rs, timeline.Options{MaxConns: o.MaxConns})
	rs.tl = s.tl
	return s
}

// Sink is where the source feeds events.
func (s *Serve) Sink() tracer.Sink { return s.tl }

// SeedSocket puts a socket of the start-up walk in the table.
func (s *Serve) SeedSocket(sock *tracer.Socket) { s.tl.SeedSocket(sock) }

// Evicted is how many connections did not fit the table so far.
func (s *Serve) Evicted() uint64 { return s.tl.Stats().Evicted }

// Event counts e.
func (s *Serve) Event(e *tracer.Event) error {
	if e.Type == tracer.EventLost || !s.filter.Match(e) {
		return nil
	}
	c := &s.counters
	switch e.Type {
	case tracer.EventState:
		if e.Old < metrics.States && e.New < metrics.States {
			c.Transitions[e.Old][e.New]++
			if e.HasDuration && !e.DurationMin {
				c.Durations[e.Old].Observe(e.Duration)
			}
		}
		if e.New != tracer.Close {
			break
		}
		if int(e.Reason) < len(c.Closes) {
			c.Closes[e.Reason]++
		}
		if e.Reason == tracer.ReasonRSTSent {
			c.ResetsSent[e.RstReason]++
		}
		if e.Old == tracer.SynSent {
			remote := e.Remote.String()
			if !s.failRemotes[remote] {
				if len(s.failRemotes) >= s.opts.TopRemotes {
					remote = metrics.Other
				} else {
					s.failRemotes[remote] = true
				}
			}
			c.FailedConnects[metrics.FailKey{Remote: remote, Reason: e.Reason}]++
		}
	case tracer.EventKeepalive:
		switch e.Keepalive.Event {
		case tracer.KeepaliveProbe:
			c.KeepaliveProbes++
		case tracer.KeepaliveTimeout:
			c.KeepaliveTimeouts++
		}
	}
	return nil
}

// Idle answers the scrapes waiting for a snapshot.
func (s *Serve) Idle() error {
	s.alive.Store(time.Now().UnixNano())
	var snap *metrics.Snapshot
	for {
		select {
		case reply := <-s.requests:
			if snap == nil {
				snap = s.Snapshot(tracer.BootNow())
			}
			reply <- snap
		default:
			return nil
		}
	}
}

// Alive is how long ago the tracer's goroutine last went idle (it does at
// least ten times a second while it runs).
func (s *Serve) Alive() time.Duration {
	return time.Since(time.Unix(0, s.alive.Load()))
}

// snapshotWait bounds how long a scrape waits for a fresh snapshot; after
// it, the last one is served.
const snapshotWait = 2 * time.Second

// Current is a snapshot taken now by the tracer's goroutine, or, when that
// does not answer in time, the last one taken (nil before the first).
func (s *Serve) Current() *metrics.Snapshot {
	reply := make(chan *metrics.Snapshot, 1)
	select {
	case s.requests <- reply:
		select {
		case snap := <-reply:
			return snap
		case <-time.After(snapshotWait):
		}
	default:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Snapshot takes a snapshot of the table and the counters at now. Only on
// the tracer's goroutine (or before it runs).
func (s *Serve) Snapshot(now uint64) *metrics.Snapshot {
	snap := &metrics.Snapshot{Counters: s.counters.Clone(), Info: s.opts.Info}
	type pk struct {
		state tracer.State
		metrics.Attribution
	}
	procs := map[pk]*metrics.ProcessGroup{}
	remotes := map[string]*metrics.RemoteGroup{}
	all := tracer.StateSet(^uint32(0))
	output.EachSocket(s.tl, now, &s.filter, all, 0, func(r *output.Socket) {
		if r.State >= metrics.States {
			return
		}
		age := r.Oldest()
		snap.Sockets[r.State]++
		snap.Oldest[r.State] = max(snap.Oldest[r.State], age)
		switch {
		case r.State == tracer.TimeWait:
			key := r.RemoteGroup()
			g := remotes[key]
			if g == nil {
				g = &metrics.RemoteGroup{Remote: key}
				remotes[key] = g
			}
			g.Count++
			g.Oldest = max(g.Oldest, age)
		case closingStates.Has(r.State) && !r.Timewait:
			k := pk{state: r.State, Attribution: s.attribution(&r.Owner)}
			g := procs[k]
			if g == nil {
				g = &metrics.ProcessGroup{State: r.State, Attribution: k.Attribution}
				procs[k] = g
			}
			g.Count++
			g.Oldest = max(g.Oldest, age)
		}
	})
	var pl []metrics.ProcessGroup
	for _, g := range procs {
		pl = append(pl, *g)
	}
	snap.Processes = metrics.TopProcesses(pl, s.opts.TopProcs)
	var rl []metrics.RemoteGroup
	for _, g := range remotes {
		rl = append(rl, *g)
	}
	snap.TimewaitRemotes = metrics.TopRemotes(rl, s.opts.TopRemotes)
	snap.Timeline = s.tl.Stats()
	if s.opts.Stats != nil {
		snap.Tracer, snap.TracerErr = s.opts.Stats()
	}
	if s.opts.HookCosts != nil {
		if hc, err := s.opts.HookCosts(); err == nil {
			snap.HookCosts = hc
		} else if snap.TracerErr == nil {
			snap.TracerErr = err
		}
	}
	snap.FinTimeout, snap.LocalPorts = ownSysctls()
	s.mu.Lock()
	s.last = snap
	s.mu.Unlock()
	return snap
}

// ownSysctls reads tcp_fin_timeout and the size of ip_local_port_range in
// tcpstate's own network namespace (zero when unreadable).
func ownSysctls() (finTimeout time.Duration, localPorts int) {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_fin_timeout"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			finTimeout = time.Duration(n) * time.Second
		}
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			lo, err1 := strconv.Atoi(f[0])
			hi, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && hi >= lo {
				localPorts = hi - lo + 1
			}
		}
	}
	return finTimeout, localPorts
}

// closingStates: the states a process's sockets pile up in (a timewait
// socket belongs to no process).
const closingStates = tracer.StateSet(1<<tracer.CloseWait | 1<<tracer.FinWait1 | 1<<tracer.FinWait2 |
	1<<tracer.Closing | 1<<tracer.LastAck)

func (s *Serve) attribution(o *tracer.Owner) metrics.Attribution {
	if !o.Known() {
		return metrics.Attribution{Comm: metrics.Unknown}
	}
	info := s.resolver.Lookup(o.PID)
	return metrics.Attribution{Comm: o.Comm.String(), ContainerID: info.ContainerID, PodUID: info.PodUID, Unit: info.Unit}
}
