// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"net/netip"
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
	// failRemotes: the remotes failed connects are counted under, at most
	// TopRemotes, with when each last failed (boot ns); a new one takes the
	// place of one idle for failIdle, else goes under metrics.Other.
	failRemotes map[string]uint64

	requests chan chan *metrics.Snapshot
	mu       sync.Mutex
	last     *metrics.Snapshot
	alive    atomic.Int64 // UnixNano of the tracer goroutine's last Idle
	holders  holderCheck
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
	// FindHolders: tracer.FindHolders, to name the process holding a
	// socket in the process groups its listener's owner is named for (nil:
	// not looked for).
	FindHolders func([]tracer.HolderQuery) []tracer.Task
}

// NewServe returns a Serve; feed its Sink.
func NewServe(o ServeOptions) *Serve {
	s := &Serve{filter: o.Filter, resolver: o.Resolver, opts: o, failRemotes: map[string]uint64{},
		requests: make(chan chan *metrics.Snapshot, 64), holders: holderCheck{find: o.FindHolders, states: closingStates}}
	s.filter.States = 0
	s.counters.ResetsSent = map[uint16]uint64{}
	s.counters.FailedConnects = map[metrics.FailKey]uint64{}
	// The walks after a loss take the TIME_WAIT sockets too: the gauges
	// count them, and only a walk of them tells a FIN_WAIT2 gone on to
	// TIME_WAIT from one still there. A churning host has 100k of them:
	// the walks are spaced by twenty times their cost (resync). A timewait
	// connection older than its state can last is left out of the
	// snapshots in any case (timewaitLimit).
	rs := &resync{rescan: o.Rescan, withTimewait: true, next: s}
	s.tl = timeline.New(rs, timeline.Options{MaxConns: o.MaxConns, CompactTimewait: true})
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
			c.FailedConnects[metrics.FailKey{Remote: s.failRemote(e), Reason: e.Reason}]++
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

// failIdle: a remote whose connects have not failed for this long gives its
// place among the failed-connect remotes to a new one (its series end).
const failIdle = 10 * time.Minute

// failRemote is the remote label e's failed connect is counted under.
func (s *Serve) failRemote(e *tracer.Event) string {
	remote := e.Remote.String()
	if _, ok := s.failRemotes[remote]; ok || len(s.failRemotes) < s.opts.TopRemotes {
		s.failRemotes[remote] = e.Time
		return remote
	}
	for r, last := range s.failRemotes {
		if e.Time-last >= uint64(failIdle) && e.Time > last {
			delete(s.failRemotes, r)
			for k := range s.counters.FailedConnects {
				if k.Remote == r {
					delete(s.counters.FailedConnects, k)
				}
			}
			s.failRemotes[remote] = e.Time
			return remote
		}
	}
	return metrics.Other
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
	s.holders.run(s.tl, now)
	snap := &metrics.Snapshot{Counters: s.counters.Clone(), Info: s.opts.Info}
	snap.FinTimeout, snap.LocalPorts = ownSysctls()
	finTimeout := snap.FinTimeout
	if finTimeout <= 0 {
		finTimeout = timewaitLen
	}
	type pk struct {
		state tracer.State
		metrics.Attribution
	}
	// remotes by address and port; port 0: the clients of a local service,
	// by address (output.Socket.RemoteGroup), formatted for the top N only
	type rk struct {
		addr [16]byte // (no pointer, unlike netip.Addr's zone: hashed as bytes)
		port uint16
		v4   bool
	}
	type lk struct {
		netns uint32
		port  uint16
	}
	listening := map[lk]bool{} // a look-up per TIME_WAIT socket otherwise
	procs := map[pk]*metrics.ProcessGroup{}
	remotes := map[rk]*metrics.RemoteGroup{}
	s.tl.Conns(func(c *timeline.Conn) bool {
		if c.State >= metrics.States || !timeline.Match(&s.filter, c, false) {
			return true
		}
		age := c.Age(now)
		if c.Timewait && age > timewaitLimit(c.State, finTimeout) {
			return true // its end was lost: no timewait socket lasts this long
		}
		age = max(age, c.AgeMax(now))
		snap.Sockets[c.State]++
		snap.Oldest[c.State] = max(snap.Oldest[c.State], age)
		switch {
		case c.State == tracer.TimeWait:
			ends := c.Endpoints()
			ra := ends.Remote.Addr()
			k := rk{ra.As16(), ends.Remote.Port(), ra.Is4()}
			l := lk{ends.NetNS, ends.Local.Port()}
			on, ok := listening[l]
			if !ok {
				on = s.tl.Listening(l.netns, l.port)
				listening[l] = on
			}
			if output.ClientOfService(ends.Local, ends.Remote, on) {
				k.port = 0
			}
			g := remotes[k]
			if g == nil {
				g = &metrics.RemoteGroup{}
				remotes[k] = g
			}
			g.Count++
			g.Oldest = max(g.Oldest, age)
		case closingStates.Has(c.State) && !c.Timewait:
			k := pk{state: c.State, Attribution: s.attribution(&c.Owner)}
			g := procs[k]
			if g == nil {
				g = &metrics.ProcessGroup{State: c.State, Attribution: k.Attribution}
				procs[k] = g
			}
			g.Count++
			g.Oldest = max(g.Oldest, age)
		}
		return true
	})
	var pl []metrics.ProcessGroup
	for _, g := range procs {
		pl = append(pl, *g)
	}
	snap.Processes = metrics.TopProcesses(pl, s.opts.TopProcs)
	var rl []metrics.RemoteGroup
	for k, g := range remotes {
		g.Key = k
		rl = append(rl, *g)
	}
	snap.TimewaitRemotes = metrics.TopRemotes(rl, s.opts.TopRemotes)
	for i := range snap.TimewaitRemotes {
		if g := &snap.TimewaitRemotes[i]; g.Remote == "" {
			k := g.Key.(rk)
			addr := netip.AddrFrom16(k.addr)
			if k.v4 {
				addr = addr.Unmap()
			}
			if k.port == 0 {
				g.Remote = output.ClientsAt(addr)
			} else {
				g.Remote = netip.AddrPortFrom(addr, k.port).String()
			}
		}
	}
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

// timewaitLen is how long TIME_WAIT lasts in Linux (TCP_TIMEWAIT_LEN, not
// tunable); timewaitSlack covers a timer that fires late on a busy host.
const (
	timewaitLen   = 60 * time.Second
	timewaitSlack = 5 * time.Second
)

// timewaitLimit is the most a connection in a timewait socket can have been
// in state: TIME_WAIT lasts TCP_TIMEWAIT_LEN, an orphaned FIN_WAIT2 at most
// tcp_fin_timeout; a connection a walk after a loss found no full socket
// for (FIN_WAIT1, CLOSING) is through both by their sum.
func timewaitLimit(state tracer.State, finTimeout time.Duration) time.Duration {
	switch state {
	case tracer.TimeWait:
		return timewaitLen + timewaitSlack
	case tracer.FinWait2:
		return finTimeout + timewaitSlack
	}
	return finTimeout + timewaitLen + timewaitSlack
}

// closingStates: the states a process's sockets pile up in (a timewait
// socket belongs to no process).
const closingStates = tracer.StateSet(1<<tracer.CloseWait | 1<<tracer.FinWait1 | 1<<tracer.FinWait2 |
	1<<tracer.Closing | 1<<tracer.LastAck)

func (s *Serve) attribution(o *tracer.Owner) metrics.Attribution {
	if !o.Known() {
		return metrics.Attribution{Comm: metrics.Unknown}
	}
	info := s.resolver.Lookup(o.PID, o.Cgroup)
	return metrics.Attribution{Comm: o.Comm.String(), ContainerID: info.ContainerID, PodUID: info.PodUID, Unit: info.Unit}
}
