// SPDX-License-Identifier: Apache-2.0

package output

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// Socket is one row of a watch snapshot.
type Socket struct {
	Cookie     uint64
	NetNS      uint32
	Family     tracer.Family
	Local      netip.AddrPort
	Remote     netip.AddrPort
	State      tracer.State
	Timewait   bool
	Age        time.Duration
	SinceStart bool // the state began before the tracer; Age is estimated from kernel timestamps or a lower bound
	Owner      tracer.Task
	OwnerFrom  tracer.OwnerSource
}

// WatchOptions configure snapshots.
type WatchOptions struct {
	Clock    tracer.Clock
	Location *time.Location // text: time zone of the title; nil for local
	Top      int            // text: rows of the socket table (0: all)
	Clear    bool           // text: clear the terminal before each snapshot
	JSON     bool
}

// Watch renders snapshots of lingering sockets.
type Watch struct {
	opts WatchOptions
	w    *bufio.Writer
}

// NewWatch returns a snapshot renderer writing to w.
func NewWatch(w io.Writer, opts WatchOptions) *Watch {
	if opts.Location == nil {
		opts.Location = time.Local
	}
	return &Watch{opts: opts, w: bufio.NewWriterSize(w, 64<<10)}
}

// Group counts sockets in one state held by one process, or to one remote.
type Group struct {
	State  tracer.State
	Count  int
	Oldest time.Duration
	Owner  tracer.Task
	Known  bool   // Owner is known (process groups)
	Remote string // remote groups: address:port, or address:* for clients on ephemeral ports
}

// Groups summarises rows per state and process, and per state and remote.
func Groups(rows []Socket) (byProcess, byRemote []Group) {
	type pk struct {
		state tracer.State
		pid   uint32
		known bool
	}
	type rk struct {
		state  tracer.State
		remote string
	}
	procs, remotes := map[pk]*Group{}, map[rk]*Group{}
	for _, r := range rows {
		known := r.OwnerFrom != tracer.OwnerUnknown
		p := procs[pk{r.State, r.Owner.PID, known}]
		if p == nil {
			p = &Group{State: r.State, Owner: r.Owner, Known: known}
			procs[pk{r.State, r.Owner.PID, known}] = p
		}
		remote := r.Remote.String()
		if r.Remote.Port() >= 32768 && r.Local.Port() < 32768 {
			// The peer is a client on an ephemeral port: group by its address.
			remote = r.Remote.Addr().String() + ":*"
		}
		q := remotes[rk{r.State, remote}]
		if q == nil {
			q = &Group{State: r.State, Remote: remote}
			remotes[rk{r.State, remote}] = q
		}
		for _, g := range []*Group{p, q} {
			g.Count++
			g.Oldest = max(g.Oldest, r.Age)
		}
	}
	sorted := func(m []*Group) []Group {
		out := make([]Group, 0, len(m))
		for _, g := range m {
			out = append(out, *g)
		}
		slices.SortFunc(out, func(a, b Group) int {
			return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(b.Oldest, a.Oldest), cmp.Compare(a.Remote, b.Remote))
		})
		return out
	}
	var pl, rl []*Group
	for _, g := range procs {
		pl = append(pl, g)
	}
	for _, g := range remotes {
		rl = append(rl, g)
	}
	return sorted(pl), sorted(rl)
}

// SortByAge orders rows oldest first.
func SortByAge(rows []Socket) {
	slices.SortFunc(rows, func(a, b Socket) int {
		return cmp.Or(cmp.Compare(b.Age, a.Age), cmp.Compare(a.Cookie, b.Cookie))
	})
}

// Render writes one snapshot taken at now (CLOCK_BOOTTIME ns). rows must be
// sorted (SortByAge). lost is the running count of events lost.
func (w *Watch) Render(now uint64, rows []Socket, lost uint64) error {
	if w.opts.JSON {
		return w.renderJSON(now, rows)
	}
	if w.opts.Clear {
		w.w.WriteString("\x1b[H\x1b[2J")
	}
	counts := map[tracer.State]int{}
	for _, r := range rows {
		counts[r.State]++
	}
	fmt.Fprintf(w.w, "tcpstate watch  %s  %d sockets", w.opts.Clock.Wall(now).In(w.opts.Location).Format("15:04:05"), len(rows))
	for st := tracer.Established; st <= tracer.NewSynRecv; st++ {
		if counts[st] > 0 {
			fmt.Fprintf(w.w, ", %d %s", counts[st], st)
		}
	}
	if lost > 0 {
		fmt.Fprintf(w.w, "  (%d events lost)", lost)
	}
	w.w.WriteString("\n\n")

	var b []byte
	var num [24]byte
	var name [64]byte
	b = append(b, header([]column{{"STATE", 12}, {"AGE", -7}, {"PID", -7}, {"COMM", 15}, {"LOCAL", 21}, {"REMOTE", 0}})...)
	shown := rows
	if w.opts.Top > 0 && len(shown) > w.opts.Top {
		shown = shown[:w.opts.Top]
	}
	for _, r := range shown {
		st := append(name[:0], r.State.String()...)
		if r.Timewait {
			st = append(st, "/tw"...)
		}
		b = padRight(b, st, 12)
		b = append(b, ' ')
		age := num[:0]
		if r.SinceStart {
			age = append(age, '~')
		}
		b = padLeft(b, AppendDuration(age, r.Age), 7)
		b = append(b, ' ')
		b = appendOwnerColumns(b, r.Owner, r.OwnerFrom != tracer.OwnerUnknown)
		b = append(b, ' ')
		b = appendEndpoint(b, r.Local, 21)
		b = append(b, ' ')
		b = r.Remote.AppendTo(b)
		b = append(b, '\n')
	}
	if len(shown) < len(rows) {
		b = fmt.Appendf(b, "... %d more\n", len(rows)-len(shown))
	}
	w.w.Write(b)

	byProc, byRemote := Groups(rows)
	b = b[:0]
	b = append(b, "\nBY PROCESS\n"...)
	b = append(b, header([]column{{"STATE", 12}, {"COUNT", -7}, {"OLDEST", -7}, {"PID", -7}, {"COMM", 0}})...)
	for _, g := range byProc {
		b = padRight(b, []byte(g.State.String()), 12)
		b = append(b, ' ')
		b = padLeft(b, strconv.AppendInt(num[:0], int64(g.Count), 10), 7)
		b = append(b, ' ')
		b = padLeft(b, AppendDuration(num[:0], g.Oldest), 7)
		b = append(b, ' ')
		b = appendOwnerColumns(b, g.Owner, g.Known)
		b = endLine(b)
	}
	b = append(b, "\nBY REMOTE\n"...)
	b = append(b, header([]column{{"STATE", 12}, {"COUNT", -7}, {"OLDEST", -7}, {"REMOTE", 0}})...)
	for _, g := range byRemote {
		b = padRight(b, []byte(g.State.String()), 12)
		b = append(b, ' ')
		b = padLeft(b, strconv.AppendInt(num[:0], int64(g.Count), 10), 7)
		b = append(b, ' ')
		b = padLeft(b, AppendDuration(num[:0], g.Oldest), 7)
		b = append(b, ' ')
		b = append(b, g.Remote...)
		b = append(b, '\n')
	}
	if !w.opts.Clear {
		b = append(b, '\n')
	}
	w.w.Write(b)
	return w.w.Flush()
}

// endLine ends a line without the padding of its last column.
func endLine(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == ' ' {
		b = b[:len(b)-1]
	}
	return append(b, '\n')
}

func appendOwnerColumns(b []byte, owner tracer.Task, known bool) []byte {
	if !known {
		return append(b, "      - -              "...)
	}
	var num [16]byte
	var name [64]byte
	b = padLeft(b, strconv.AppendUint(num[:0], uint64(owner.PID), 10), 7)
	b = append(b, ' ')
	return padRight(b, appendPrintable(name[:0], owner.Comm.Bytes()), 15)
}

// renderJSON writes one "socket" object per row, then "group" objects.
func (w *Watch) renderJSON(now uint64, rows []Socket) error {
	ts := w.opts.Clock.Wall(now).AppendFormat(nil, "2006-01-02T15:04:05.000000000Z07:00")
	var b []byte
	for _, r := range rows {
		b = append(b[:0], `{"time":"`...)
		b = append(b, ts...)
		b = append(b, `","type":"socket","cookie":`...)
		b = strconv.AppendUint(b, r.Cookie, 10)
		b = append(b, `,"state":"`...)
		b = append(b, r.State.String()...)
		b = append(b, `","age_ns":`...)
		b = strconv.AppendInt(b, int64(r.Age), 10)
		b = append(b, `,"since_start":`...)
		b = strconv.AppendBool(b, r.SinceStart)
		if r.Timewait {
			b = append(b, `,"timewait":true`...)
		}
		b = appendEndpoints(b, r.NetNS, r.Family, r.Local, r.Remote)
		b = appendOwner(b, &r.Owner, r.OwnerFrom)
		b = append(b, "}\n"...)
		w.w.Write(b)
	}
	byProc, byRemote := Groups(rows)
	for _, set := range []struct {
		by     string
		groups []Group
	}{{"process", byProc}, {"remote", byRemote}} {
		for _, g := range set.groups {
			b = append(b[:0], `{"time":"`...)
			b = append(b, ts...)
			b = append(b, `","type":"group","by":"`...)
			b = append(b, set.by...)
			b = append(b, `","state":"`...)
			b = append(b, g.State.String()...)
			b = append(b, `","count":`...)
			b = strconv.AppendInt(b, int64(g.Count), 10)
			b = append(b, `,"oldest_age_ns":`...)
			b = strconv.AppendInt(b, int64(g.Oldest), 10)
			if set.by == "remote" {
				b = append(b, `,"remote":`...)
				b = appendJSONString(b, []byte(g.Remote))
			} else if g.Known {
				b = append(b, `,"pid":`...)
				b = strconv.AppendUint(b, uint64(g.Owner.PID), 10)
				b = append(b, `,"comm":`...)
				b = appendJSONString(b, g.Owner.Comm.Bytes())
			}
			b = append(b, "}\n"...)
			w.w.Write(b)
		}
	}
	return w.w.Flush()
}

// LingerStates are the states watch shows by default: where sockets pile up.
var LingerStates = tracer.StateSet(1<<tracer.CloseWait | 1<<tracer.FinWait1 | 1<<tracer.FinWait2 |
	1<<tracer.Closing | 1<<tracer.LastAck | 1<<tracer.TimeWait)

// Snapshot lists the connections of tl in states, passing f, that have been
// in their state at least linger at time now, oldest first.
func Snapshot(tl *timeline.Timeline, now uint64, f *tracer.Filter, states tracer.StateSet, linger time.Duration) []Socket {
	var rows []Socket
	tl.Conns(func(c *timeline.Conn) bool {
		if !states.Has(c.State) || !timeline.Match(f, c, false) || c.Age(now) < linger {
			return true
		}
		rows = append(rows, Socket{
			Cookie: c.Cookie, NetNS: c.NetNS, Family: c.Family, Local: c.Local, Remote: c.Remote,
			State: c.State, Timewait: c.Timewait, Age: c.Age(now), SinceStart: c.SinceStart,
			Owner: c.Owner, OwnerFrom: c.OwnerFrom,
		})
		return true
	})
	SortByAge(rows)
	return rows
}
