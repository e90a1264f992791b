// SPDX-License-Identifier: Apache-2.0

package output

import (
	"cmp"
	"math"
	"slices"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// Over time, a report keeps buckets of one step each: the most sockets in
// each state within the step, and what happened in it. A capture of any
// length stays at most maxBuckets buckets: when full, neighbours merge and
// the step doubles.
const (
	firstStep  = time.Second
	maxBuckets = 720
	// trackedProcs bounds the processes whose CLOSE_WAIT is followed over
	// time; later ones are summed as one.
	trackedProcs = 32
	// ganttConns: the connections that lingered longest, kept with every
	// state of their life.
	ganttConns = 12
)

// Bucket is one step of a report's time line.
type Bucket struct {
	// States: the sockets in each state (tracer.State) at the busiest
	// moment of the step (most sockets in all): counts that existed
	// together, to stack. Peak: the most in each state, at any moment.
	States     [16]int32
	Peak       [16]int32
	busiest    int32
	Closes     [16]uint32 // connections that reached CLOSE, by tracer.Reason
	ResetsSent uint32
	Probes     uint32 // keepalive probes sent
	Kills      uint32 // connections keepalive killed
	Lost       uint64
	CloseWait  []int32 // most CLOSE_WAIT sockets of each tracked process (Report.Procs order)
}

// SysctlChange is a namespace's setting changing during the capture.
type SysctlChange struct {
	Time     uint64
	NetNS    uint32
	Name     string
	Old, New string
}

// TimeLine is what a report keeps over time.
type TimeLine struct {
	Start   uint64        // CLOCK_BOOTTIME ns of bucket 0
	Step    time.Duration // each bucket's span
	Buckets []Bucket
	// Procs are the processes whose CLOSE_WAIT is followed (the last one,
	// with PID 0 and comm "other", sums the rest once there are too many).
	Procs   []procKey
	Sysctls []SysctlChange
	Gantt   []*timeline.Conn // the connections that lingered longest, with their spans (copies)
	// ResetReasons counts the resets this host sent, by the kernel's reason.
	ResetReasons map[uint16]uint64

	cur     [16]int32
	procCur map[procKey]int32
	procIdx map[procKey]int
	idxCur  []int32 // CLOSE_WAIT sockets of each Procs entry now
	lastNS  map[uint32]map[string]string
}

func (tl *TimeLine) init(t uint64) {
	if tl.Step == 0 {
		tl.Start, tl.Step = t, firstStep
		tl.procCur, tl.procIdx = map[procKey]int32{}, map[procKey]int{}
	}
}

// bucket returns the bucket of time t, opening buckets up to it (they
// start with the counts of the moment) and merging when there are too many.
func (tl *TimeLine) bucket(t uint64) *Bucket {
	tl.init(t)
	if t < tl.Start {
		t = tl.Start // (events of a capture are in order; a walk may precede)
	}
	i := int((t - tl.Start) / uint64(tl.Step))
	for i >= maxBuckets {
		tl.merge()
		i = int((t - tl.Start) / uint64(tl.Step))
	}
	for len(tl.Buckets) <= i {
		b := Bucket{States: tl.cur, Peak: tl.cur, busiest: total(&tl.cur), CloseWait: make([]int32, len(tl.Procs))}
		copy(b.CloseWait, tl.idxCur)
		tl.Buckets = append(tl.Buckets, b)
	}
	return &tl.Buckets[i]
}

// merge halves the buckets: each pair becomes one of twice the step.
func (tl *TimeLine) merge() {
	out := tl.Buckets[:0]
	for i := 0; i < len(tl.Buckets); i += 2 {
		a := tl.Buckets[i]
		if i+1 < len(tl.Buckets) {
			b := &tl.Buckets[i+1]
			if b.busiest > a.busiest {
				a.States, a.busiest = b.States, b.busiest
			}
			for s := range a.Peak {
				a.Peak[s] = max(a.Peak[s], b.Peak[s])
				a.Closes[s] += b.Closes[s]
			}
			a.ResetsSent += b.ResetsSent
			a.Probes += b.Probes
			a.Kills += b.Kills
			a.Lost += b.Lost
			for j := range a.CloseWait {
				if j < len(b.CloseWait) {
					a.CloseWait[j] = max(a.CloseWait[j], b.CloseWait[j])
				}
			}
		}
		out = append(out, a)
	}
	tl.Buckets = out
	tl.Step *= 2
}

// move counts a socket leaving old for new at time t (StateUnknown: none);
// a count never goes below zero (a socket older than the capture that the
// walk did not report, a TIME_WAIT one, leaves a state it was not counted in).
func (tl *TimeLine) move(t uint64, old, new tracer.State) {
	if old < 16 && old != tracer.StateUnknown && tl.cur[old] > 0 {
		tl.cur[old]--
	}
	if new < 16 && new != tracer.StateUnknown && new != tracer.Close {
		tl.cur[new]++
	}
	b := tl.bucket(t)
	for _, s := range []tracer.State{old, new} {
		if s < 16 {
			b.Peak[s] = max(b.Peak[s], tl.cur[s])
		}
	}
	if n := total(&tl.cur); n > b.busiest {
		b.States, b.busiest = tl.cur, n
	}
}

// total is the sockets in every state but LISTEN.
func total(c *[16]int32) int32 {
	var n int32
	for s, v := range c {
		if tracer.State(s) != tracer.Listen {
			n += v
		}
	}
	return n
}

// moveProc follows a process's CLOSE_WAIT sockets (d = +1 or -1).
func (tl *TimeLine) moveProc(t uint64, k procKey, d int32) {
	tl.init(t)
	j, ok := tl.procIdx[k]
	if !ok {
		if d < 0 {
			return // not followed: entered before the capture, unseen
		}
		if len(tl.Procs) < trackedProcs {
			j = len(tl.Procs)
			tl.Procs = append(tl.Procs, k)
		} else {
			other := procKey{comm: tracer.CommFrom("other")}
			if oj, ok := tl.procIdx[other]; ok {
				j = oj
			} else {
				j = len(tl.Procs) - 1 // the last tracked one becomes "other"
				delete(tl.procIdx, tl.Procs[j])
				tl.Procs[j] = other
				tl.procIdx[other] = j
			}
			tl.procIdx[k] = j
		}
		tl.procIdx[k] = j
		for i := range tl.Buckets {
			for len(tl.Buckets[i].CloseWait) < len(tl.Procs) {
				tl.Buckets[i].CloseWait = append(tl.Buckets[i].CloseWait, 0)
			}
		}
	}
	if d < 0 && tl.procCur[k] == 0 {
		return
	}
	tl.procCur[k] += d
	for len(tl.idxCur) < len(tl.Procs) {
		tl.idxCur = append(tl.idxCur, 0)
	}
	tl.idxCur[j] += d
	n := tl.idxCur[j]
	b := tl.bucket(t)
	for len(b.CloseWait) < len(tl.Procs) {
		b.CloseWait = append(b.CloseWait, 0)
	}
	b.CloseWait[j] = max(b.CloseWait[j], n)
}

// event adds e to the time line.
func (tl *TimeLine) event(e *tracer.Event) {
	switch e.Type {
	case tracer.EventLost:
		tl.bucket(e.Time).Lost += e.Lost
	case tracer.EventKeepalive:
		switch e.Keepalive.Event {
		case tracer.KeepaliveProbe:
			tl.bucket(e.Time).Probes++
		case tracer.KeepaliveTimeout:
			tl.bucket(e.Time).Kills++
		}
	case tracer.EventState:
		tl.move(e.Time, e.Old, e.New)
		if e.New == tracer.Close && int(e.Reason) < 16 {
			b := tl.bucket(e.Time)
			b.Closes[e.Reason]++
			if e.Reason == tracer.ReasonRSTSent {
				b.ResetsSent++
				if tl.ResetReasons == nil {
					tl.ResetReasons = map[uint16]uint64{}
				}
				tl.ResetReasons[e.RstReason]++
			}
		}
		if e.Owner.Known() {
			k := procKey{e.Owner.PID, e.Owner.Comm}
			if e.New == tracer.CloseWait {
				tl.moveProc(e.Time, k, 1)
			} else if e.Old == tracer.CloseWait {
				tl.moveProc(e.Time, k, -1)
			}
		}
	}
}

// Seed counts the sockets of a capture's walk (those keep accepts).
func (r *Report) Seed(socks []tracer.Socket, keep func(*tracer.Socket) bool) {
	for i := range socks {
		s := &socks[i]
		if !keep(s) {
			continue
		}
		t := s.Scanned
		if t == 0 {
			continue
		}
		r.Time.move(t, tracer.StateUnknown, s.State)
		if s.State == tracer.CloseWait && s.Owner.Known() {
			r.Time.moveProc(t, procKey{s.Owner.PID, s.Owner.Comm}, 1)
		}
	}
}

// SysctlSnapshot records the settings that changed since the last one.
func (r *Report) SysctlSnapshot(t uint64, nss map[uint32]map[string]string) {
	tl := &r.Time
	if tl.lastNS == nil {
		tl.lastNS = map[uint32]map[string]string{}
	}
	for ns, vals := range nss {
		last := tl.lastNS[ns]
		if last != nil {
			names := make([]string, 0, len(vals))
			for name := range vals {
				names = append(names, name)
			}
			slices.Sort(names)
			for _, name := range names {
				if old, ok := last[name]; ok && old != vals[name] {
					tl.Sysctls = append(tl.Sysctls, SysctlChange{Time: t, NetNS: ns, Name: name, Old: old, New: vals[name]})
				}
			}
		}
		tl.lastNS[ns] = vals
	}
}

// SysctlBaseline sets the values later snapshots are compared with (a
// capture's header): a new file starts over, as a namespace's inode may
// have been reused in between.
func (r *Report) SysctlBaseline(nss map[uint32]map[string]string) {
	r.Time.lastNS = nss
}

// FinishedConn keeps c if it lingered among the longest (timeline
// Options.OnFinish, with Spans).
func (r *Report) FinishedConn(c *timeline.Conn) error {
	r.keepGantt(c)
	return nil
}

// lingered is the longest c spent in CLOSE_WAIT or FIN_WAIT2.
func lingered(c *timeline.Conn, end uint64) time.Duration {
	var d time.Duration
	spans := c.Spans()
	for i, s := range spans {
		if s.State != tracer.CloseWait && s.State != tracer.FinWait2 {
			continue
		}
		if s.Known || s.Min {
			d = max(d, s.Duration)
		} else if i == len(spans)-1 && s.Start > 0 && end > s.Start {
			d = max(d, time.Duration(end-s.Start)) // still there
		}
	}
	if c.State == tracer.CloseWait || c.State == tracer.FinWait2 {
		d = max(d, c.Age(end))
	}
	return d
}

func (r *Report) keepGantt(c *timeline.Conn) {
	d := lingered(c, r.End)
	if d == 0 {
		return
	}
	tl := &r.Time
	if len(tl.Gantt) == ganttConns && lingered(tl.Gantt[len(tl.Gantt)-1], r.End) >= d {
		return
	}
	cc := *c
	cc.SetSpans(slices.Clone(c.Spans()))
	if len(cc.Spans()) == 0 && c.Since > 0 {
		// Found by the walk and never moved: one open span, since the walk's
		// estimate (a lower bound).
		cc.SetSpans([]timeline.Span{{State: c.State, Start: c.Since, Timewait: c.Timewait}})
	}
	tl.Gantt = append(tl.Gantt, &cc)
	slices.SortStableFunc(tl.Gantt, func(a, b *timeline.Conn) int { return cmp.Compare(lingered(b, r.End), lingered(a, r.End)) })
	if len(tl.Gantt) > ganttConns {
		tl.Gantt = tl.Gantt[:ganttConns]
	}
}

// Proc names the i-th followed process (Procs): its PID (0 for the sum of
// the rest) and task name.
func (tl *TimeLine) Proc(i int) (pid uint32, comm string) {
	return tl.Procs[i].pid, tl.Procs[i].comm.String()
}

// N is how many durations h holds; Max the longest.
func (h *Hist) N() uint64          { return h.n }
func (h *Hist) Max() time.Duration { return h.max }

// Bins groups h's durations into bins of a tenth of a decade (1, 1.26, 1.58,
// 2, ... 10 x): the lower edge of each bin with a sample, and its count.
func (h *Hist) Bins() (lower []time.Duration, counts []uint64) {
	byBin := map[int]uint64{}
	for k, n := range h.counts {
		d := math.Pow(histBase, float64(k)+0.5)
		byBin[int(math.Floor(10*math.Log10(d)))] += n
	}
	keys := make([]int, 0, len(byBin))
	for k := range byBin {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		lower = append(lower, time.Duration(math.Pow(10, float64(k)/10)))
		counts = append(counts, byBin[k])
	}
	return lower, counts
}
