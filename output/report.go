// SPDX-License-Identifier: Apache-2.0

package output

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// Hist is a log-scale duration histogram: about 2% relative precision in
// bounded memory, whatever the number of samples.
type Hist struct {
	counts  map[int]uint64
	buckets [len(bucketLabels)]uint64 // exact counts in the ranges of bucketLabels
	n       uint64
	max     time.Duration
}

const histBase = 1.02

func histIndex(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int(math.Log(float64(d)) / math.Log(histBase))
}

// Add records one duration.
func (h *Hist) Add(d time.Duration) {
	if h.counts == nil {
		h.counts = map[int]uint64{}
	}
	h.counts[histIndex(d)]++
	i, _ := slices.BinarySearch(bucketEdges, d+1)
	h.buckets[i]++
	h.n++
	h.max = max(h.max, d)
}

// Quantile returns the q-quantile (0 < q <= 1) within the histogram's precision.
func (h *Hist) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	keys := make([]int, 0, len(h.counts))
	for k := range h.counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	rank := uint64(math.Ceil(q * float64(h.n)))
	var seen uint64
	for _, k := range keys {
		seen += h.counts[k]
		if seen >= rank {
			if k == 0 {
				return 0
			}
			d := time.Duration(math.Pow(histBase, float64(k)+0.5))
			return min(d, h.max)
		}
	}
	return h.max
}

// Buckets counts samples in the report's coarse ranges (see bucketLabels):
// a range includes its lower edge.
func (h *Hist) Buckets() []uint64 { return h.buckets[:] }

var bucketEdges = []time.Duration{time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond, time.Second,
	10 * time.Second, time.Minute, 10 * time.Minute}

// bucketLabels name the ranges of Buckets.
var bucketLabels = [...]string{"<1ms", "1-10ms", "10-100ms", "0.1-1s", "1-10s", "10-60s", "1-10m", ">10m"}

// Linger is one connection that sat long in CLOSE_WAIT or FIN_WAIT2.
type Linger struct {
	Cookie   uint64
	State    tracer.State
	Duration time.Duration
	Min      bool // began before the capture: at least this long
	Open     bool // still in that state when the capture ended
	Local    netip.AddrPort
	Remote   netip.AddrPort
	Owner    tracer.Owner
}

// lingerColumns lay out the lingering connections of a report (no header
// line: the section's title says it).
var lingerColumns = []column{{"", 1}, {"STATE", 10}, {"DURATION", -8}, {"LOCAL", 24}, {"REMOTE", 24}, {"PID", -6}, {"COMM", 0}}

type procKey struct {
	pid  uint32
	comm tracer.Comm
}

// Report aggregates events (after the timeline) and finished connections.
// It is a tracer.Sink.
type Report struct {
	Start, End  uint64 // what the captures cover (Covers), events included
	Events      uint64
	Transitions map[string]uint64
	Durations   map[tracer.State]*Hist
	Lingers     []Linger
	CloseWait   map[procKey]uint64
	TimeWaitL   map[uint16]uint64         // by local port
	TimeWaitR   map[netip.AddrPort]uint64 // port 0: the clients of a local service (timewaitRemote)
	Keepalive   map[string]uint64         // event kind -> count
	KAByProc    map[procKey]uint64
	Lost        []tracer.Event
	LostTotal   uint64
	Unseen      uint64 // transitions whose steps between were not seen (tracer.Event.Unseen)
	Reasons     map[string]uint64
	// Time is the report over time (report --html).
	Time TimeLine
	// Notes: what reading the captures warned about (a truncated file, a
	// damaged block), for the page to say too.
	Notes []string
}

// NewReport returns an empty report.
func NewReport() *Report {
	return &Report{Transitions: map[string]uint64{}, Durations: map[tracer.State]*Hist{}, CloseWait: map[procKey]uint64{},
		TimeWaitL: map[uint16]uint64{}, TimeWaitR: map[netip.AddrPort]uint64{}, Keepalive: map[string]uint64{},
		KAByProc: map[procKey]uint64{}, Reasons: map[string]uint64{}}
}

// Covers says that the captures cover t though no event came then: a
// capture's start, a sysctl snapshot (a recorder writes one as it ends). A
// capture with few events or none is not dated by them alone.
func (r *Report) Covers(t uint64) {
	if t == 0 {
		return
	}
	if r.Start == 0 || t < r.Start {
		r.Start = t
	}
	r.End = max(r.End, t)
}

// Event takes one event.
func (r *Report) Event(e *tracer.Event) error {
	r.Covers(e.Time)
	r.Events++
	r.Time.event(e)
	switch e.Type {
	case tracer.EventLost:
		r.Lost = append(r.Lost, *e)
		r.LostTotal += e.Lost
	case tracer.EventKeepalive:
		r.Keepalive[e.Keepalive.Event.String()]++
		if e.Keepalive.Event == tracer.KeepaliveProbe && e.Owner.Known() {
			r.KAByProc[procKey{e.Owner.PID, e.Owner.Comm}]++
		}
	case tracer.EventState:
		r.Transitions[e.Old.String()+" -> "+e.New.String()]++
		if e.Unseen {
			r.Unseen++
		}
		if e.New == tracer.Close && e.Reason != tracer.ReasonNone {
			r.Reasons[e.Reason.String()]++
		}
		if e.HasDuration && !e.DurationMin {
			h := r.Durations[e.Old]
			if h == nil {
				h = &Hist{}
				r.Durations[e.Old] = h
			}
			h.Add(e.Duration)
		}
		if e.HasDuration && (e.Old == tracer.CloseWait || e.Old == tracer.FinWait2) {
			r.addLinger(Linger{Cookie: e.Cookie, State: e.Old, Duration: e.Duration, Min: e.DurationMin,
				Local: e.Local, Remote: e.Remote, Owner: e.Owner})
		}
		if e.New == tracer.CloseWait && e.Owner.Known() {
			r.CloseWait[procKey{e.Owner.PID, e.Owner.Comm}]++
		}
		if e.New == tracer.TimeWait {
			r.TimeWaitL[e.Local.Port()]++
			r.TimeWaitR[timewaitRemote(e.Local, e.Remote)]++
		}
	}
	return nil
}

const topN = 10

func (r *Report) addLinger(l Linger) {
	r.Lingers = append(r.Lingers, l)
	if len(r.Lingers) > 4*topN {
		r.trimLingers()
	}
}

func (r *Report) trimLingers() {
	slices.SortFunc(r.Lingers, func(a, b Linger) int { return cmp.Compare(b.Duration, a.Duration) })
	r.Lingers = r.Lingers[:min(len(r.Lingers), topN)]
}

// Idle does nothing.
func (r *Report) Idle() error { return nil }

// Finish adds the connections still lingering at the end (from the
// timeline) that keep accepts.
func (r *Report) Finish(tl *timeline.Timeline, keep func(*timeline.Conn) bool) {
	tl.Conns(func(c *timeline.Conn) bool {
		if (c.State == tracer.CloseWait || c.State == tracer.FinWait2) && keep(c) {
			r.keepGantt(c)
			r.addLinger(Linger{Cookie: c.Cookie, State: c.State, Duration: c.Age(r.End), Min: c.SinceStart, Open: true,
				Local: c.Endpoints().Local, Remote: c.Endpoints().Remote, Owner: c.Owner})
			if c.State == tracer.CloseWait && c.Owner.Known() && c.SinceStart {
				// Seen only by the start-up walk: count its holder too.
				r.CloseWait[procKey{c.Owner.PID, c.Owner.Comm}]++
			}
		}
		return true
	})
	r.trimLingers()
}

type countRow[K any] struct {
	Key   K
	Count uint64
}

func top[K comparable](m map[K]uint64, n int, less func(a, b K) int) []countRow[K] {
	rows := make([]countRow[K], 0, len(m))
	for k, c := range m {
		rows = append(rows, countRow[K]{k, c})
	}
	slices.SortFunc(rows, func(a, b countRow[K]) int { return cmp.Or(cmp.Compare(b.Count, a.Count), less(a.Key, b.Key)) })
	return rows[:min(len(rows), n)]
}

func procLess(a, b procKey) int { return cmp.Compare(a.pid, b.pid) }

// Render writes the report as text or JSON.
func (r *Report) Render(w io.Writer, clock tracer.Clock, loc *time.Location, asJSON bool) error {
	r.trimLingers()
	if loc == nil {
		loc = time.Local
	}
	if asJSON {
		return r.renderJSON(w, clock)
	}
	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }
	p("tcpstate report: %s to %s (%s), %d events, %d lost\n", clock.Wall(r.Start).In(loc).Format("2006-01-02 15:04:05"),
		clock.Wall(r.End).In(loc).Format("15:04:05"), time.Duration(r.End-r.Start).Round(time.Second), r.Events, r.LostTotal)
	if r.Unseen > 0 {
		p("%d transitions had steps between not seen (a timewait socket found in a state its connection was not seen to reach)\n", r.Unseen)
	}

	p("\nTRANSITIONS\n")
	for _, row := range top(r.Transitions, 1000, func(a, b string) int { return cmp.Compare(a, b) }) {
		p("%10d  %s\n", row.Count, row.Key)
	}
	if len(r.Reasons) > 0 {
		p("\nCLOSE REASONS\n")
		for _, row := range top(r.Reasons, 100, func(a, b string) int { return cmp.Compare(a, b) }) {
			p("%10d  %s\n", row.Count, row.Key)
		}
	}
	p("\nTIME IN STATE          COUNT      P50      P90      P99      MAX   ")
	for _, l := range bucketLabels {
		p("%9s", l)
	}
	p("\n")
	for _, st := range r.states() {
		h := r.Durations[st]
		var d [4][]byte
		for i, q := range []float64{0.5, 0.9, 0.99} {
			d[i] = AppendDuration(nil, h.Quantile(q))
		}
		d[3] = AppendDuration(nil, h.max)
		p("%-16s %11d %8s %8s %8s %8s   ", st, h.n, d[0], d[1], d[2], d[3])
		for _, c := range h.Buckets() {
			p("%9d", c)
		}
		p("\n")
	}
	if len(r.Lingers) > 0 {
		p("\nLONGEST IN CLOSE_WAIT / FIN_WAIT2 (\"+\" still there at the end, \">\" began before the capture)\n")
		for _, l := range r.Lingers {
			line := row{cols: lingerColumns}
			flag := " "
			if l.Open {
				flag = "+"
			}
			line.cell([]byte(flag))
			line.cell([]byte(l.State.String()))
			dur := AppendDuration(nil, l.Duration)
			if l.Min {
				dur = append([]byte(">"), dur...)
			}
			line.cell(dur)
			line.cell([]byte(l.Local.String()))
			line.cell([]byte(l.Remote.String()))
			line.owner(&l.Owner, false, false)
			p("%s\n", line.b)
		}
	}
	if len(r.CloseWait) > 0 {
		p("\nPROCESSES WITH THE MOST CLOSE_WAIT\n")
		for _, row := range top(r.CloseWait, topN, procLess) {
			p("%10d  %d %s\n", row.Count, row.Key.pid, appendPrintable(nil, row.Key.comm.Bytes()))
		}
	}
	if len(r.TimeWaitL) > 0 {
		p("\nTIME_WAIT BY LOCAL PORT\n")
		for _, row := range top(r.TimeWaitL, topN, func(a, b uint16) int { return cmp.Compare(a, b) }) {
			p("%10d  %d\n", row.Count, row.Key)
		}
		p("\nTIME_WAIT BY REMOTE (ADDRESS:* the clients of a local service; to any other, each needs a free local port: the default range has 28,232)\n")
		for _, row := range top(r.TimeWaitR, topN, func(a, b netip.AddrPort) int { return a.Compare(b) }) {
			p("%10d  %s\n", row.Count, remoteString(row.Key))
		}
	}
	if len(r.Keepalive) > 0 {
		p("\nKEEPALIVE\n")
		for _, row := range top(r.Keepalive, 100, func(a, b string) int { return cmp.Compare(a, b) }) {
			p("%10d  %s\n", row.Count, row.Key)
		}
		for _, row := range top(r.KAByProc, topN, procLess) {
			p("%10d  probes by %d %s\n", row.Count, row.Key.pid, appendPrintable(nil, row.Key.comm.Bytes()))
		}
	}
	if len(r.Lost) > 0 {
		p("\nLOST EVENTS (the kernel's ring buffer was full)\n")
		for _, l := range r.Lost {
			p("  %s  %d lost\n", clock.Wall(l.Time).In(loc).Format("15:04:05.000"), l.Lost)
		}
	}
	return bw.Flush()
}

// states lists the states with durations, the lingering ones first.
func (r *Report) states() []tracer.State {
	var out []tracer.State
	for _, st := range []tracer.State{tracer.CloseWait, tracer.FinWait2, tracer.TimeWait} {
		if r.Durations[st] != nil {
			out = append(out, st)
		}
	}
	for st := tracer.Established; st <= tracer.NewSynRecv; st++ {
		if r.Durations[st] != nil && !slices.Contains(out, st) {
			out = append(out, st)
		}
	}
	return out
}

func (r *Report) renderJSON(w io.Writer, clock tracer.Clock) error {
	type stateJSON struct {
		State   string            `json:"state"`
		Count   uint64            `json:"count"`
		P50     int64             `json:"p50_ns"`
		P90     int64             `json:"p90_ns"`
		P99     int64             `json:"p99_ns"`
		Max     int64             `json:"max_ns"`
		Buckets map[string]uint64 `json:"histogram"`
	}
	type lingerJSON struct {
		Cookie   uint64 `json:"cookie"`
		State    string `json:"state"`
		Duration int64  `json:"duration_ns"`
		Min      bool   `json:"since_start,omitempty"`
		Open     bool   `json:"open,omitempty"`
		Local    string `json:"local"`
		Remote   string `json:"remote"`
		PID      uint32 `json:"pid,omitempty"`
		Comm     string `json:"comm,omitempty"`
	}
	type procJSON struct {
		PID   uint32 `json:"pid"`
		Comm  string `json:"comm"`
		Count uint64 `json:"count"`
	}
	type lostJSON struct {
		Time  time.Time `json:"time"`
		Count uint64    `json:"count"`
	}
	out := struct {
		Start       time.Time         `json:"start"`
		End         time.Time         `json:"end"`
		Events      uint64            `json:"events"`
		Lost        uint64            `json:"lost"`
		Unseen      uint64            `json:"unseen_transitions"`
		Transitions map[string]uint64 `json:"transitions"`
		Reasons     map[string]uint64 `json:"close_reasons"`
		States      []stateJSON       `json:"states"`
		Lingers     []lingerJSON      `json:"longest_lingering"`
		CloseWait   []procJSON        `json:"close_wait_by_process"`
		TimeWaitL   map[string]uint64 `json:"time_wait_by_local_port"`
		TimeWaitR   map[string]uint64 `json:"time_wait_by_remote"`
		Keepalive   map[string]uint64 `json:"keepalive"`
		KAByProc    []procJSON        `json:"keepalive_probes_by_process"`
		LostEvents  []lostJSON        `json:"lost_events"`
	}{
		Start: clock.Wall(r.Start), End: clock.Wall(r.End), Events: r.Events, Lost: r.LostTotal, Unseen: r.Unseen,
		Transitions: r.Transitions, Reasons: r.Reasons, Keepalive: r.Keepalive,
		States: []stateJSON{}, Lingers: []lingerJSON{}, CloseWait: []procJSON{}, KAByProc: []procJSON{}, LostEvents: []lostJSON{},
		TimeWaitL: map[string]uint64{}, TimeWaitR: map[string]uint64{},
	}
	for _, st := range r.states() {
		h := r.Durations[st]
		s := stateJSON{State: st.String(), Count: h.n, P50: int64(h.Quantile(.5)), P90: int64(h.Quantile(.9)),
			P99: int64(h.Quantile(.99)), Max: int64(h.max), Buckets: map[string]uint64{}}
		for i, c := range h.Buckets() {
			s.Buckets[bucketLabels[i]] = c
		}
		out.States = append(out.States, s)
	}
	for _, l := range r.Lingers {
		lj := lingerJSON{Cookie: l.Cookie, State: l.State.String(), Duration: int64(l.Duration), Min: l.Min, Open: l.Open,
			Local: l.Local.String(), Remote: l.Remote.String()}
		if l.Owner.Known() {
			lj.PID, lj.Comm = l.Owner.PID, l.Owner.Comm.String()
		}
		out.Lingers = append(out.Lingers, lj)
	}
	for _, row := range top(r.CloseWait, topN, procLess) {
		out.CloseWait = append(out.CloseWait, procJSON{row.Key.pid, row.Key.comm.String(), row.Count})
	}
	for _, row := range top(r.KAByProc, topN, procLess) {
		out.KAByProc = append(out.KAByProc, procJSON{row.Key.pid, row.Key.comm.String(), row.Count})
	}
	for k, c := range r.TimeWaitL {
		out.TimeWaitL[fmt.Sprint(k)] = c
	}
	for k, c := range r.TimeWaitR {
		out.TimeWaitR[remoteString(k)] = c
	}
	for _, l := range r.Lost {
		out.LostEvents = append(out.LostEvents, lostJSON{clock.Wall(l.Time), l.Lost})
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// timewaitRemote is how TIME_WAIT is counted by remote: by address and
// port, but the clients of a local service (a server that closed first) by
// address alone, port 0, as serve and watch group them: their ephemeral
// ports say nothing, and cost no port here.
func timewaitRemote(local, remote netip.AddrPort) netip.AddrPort {
	if ClientOfService(local, remote, false) {
		return netip.AddrPortFrom(remote.Addr(), 0)
	}
	return remote
}

// remoteString writes a timewaitRemote: "ADDRESS:*" for the clients.
func remoteString(ap netip.AddrPort) string {
	if ap.Port() == 0 {
		return ClientsAt(ap.Addr())
	}
	return ap.String()
}
