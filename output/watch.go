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
	"unicode/utf8"

	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// Socket is one row of a watch snapshot.
type Socket struct {
	Cookie uint64
	tracer.Endpoints
	Age time.Duration
	// AgeMax: with SinceStart, the most the socket can have been in its
	// state, where the kernel bounds it (Age is then the least); 0: no bound.
	AgeMax     time.Duration
	Owner      tracer.Owner
	State      tracer.State
	Timewait   bool
	SinceStart bool // the state began before the tracer; Age is estimated from kernel timestamps or a lower bound
	// Service: the local port is listening, so the remote is a client.
	Service bool
	// (the small fields last, together: 144 bytes, not 160; a snapshot
	// holds one for every socket it lists)
}

// Oldest is the most the socket can have been in its state: how it ranks, so
// that an old socket never passes for a new one.
func (r *Socket) Oldest() time.Duration {
	if r.AgeMax-r.Age <= ageExact {
		return r.Age // as its row shows it
	}
	return r.AgeMax
}

// Closed reports whether Owner is the process that closed the socket rather
// than one that holds it: a timewait socket belongs to no process.
func (r *Socket) Closed() bool {
	return r.Timewait && r.Owner.Known()
}

// RemoteGroup names the remote end as the per-remote groups count it:
// address:port, or address:* when the peer is a client of a local service
// (our port listens or, lacking a listener, the peer's port is ephemeral
// and ours is not), whose clients are grouped by address.
func (r *Socket) RemoteGroup() string {
	if ClientOfService(r.Local, r.Remote, r.Service) {
		return ClientsAt(r.Remote.Addr())
	}
	return r.Remote.String()
}

// ClientsAt names the group of a service's clients at addr, any port:
// 10.0.0.7:*, [::1]:*.
func ClientsAt(addr netip.Addr) string {
	s := netip.AddrPortFrom(addr, 0).String()
	return s[:len(s)-1] + "*"
}

// ClientOfService tells whether the peer at remote is a client of a local
// service at local: local's port listens, or lacking a known listener, the
// peer's port is ephemeral and ours is not.
func ClientOfService(local, remote netip.AddrPort, listening bool) bool {
	return listening || remote.Port() >= 32768 && local.Port() < 32768
}

// appendAge appends the age column: exact, a range the kernel's timestamps
// bound ("300ms..13.2s"), or an estimate ("~5.00s").
func appendAge(b []byte, r *Socket) []byte {
	switch {
	case !r.SinceStart:
		return AppendDuration(b, r.Age)
	case r.AgeMax == 0:
		return AppendDuration(append(b, '~'), r.Age)
	case r.AgeMax-r.Age <= ageExact:
		return AppendDuration(b, r.Age)
	}
	return AppendDuration(append(AppendDuration(b, r.Age), ".."...), r.AgeMax)
}

// AppendAge appends a row's age as the AGE column shows it.
func AppendAge(b []byte, r *Socket) []byte { return appendAge(b, r) }

// ageExact is how close two bounds of an age must be to print as one value:
// a few jiffies (10 ms at the lowest HZ).
const ageExact = 20 * time.Millisecond

// WatchOptions configure snapshots.
type WatchOptions struct {
	Clock    tracer.Clock
	Location *time.Location // text: time zone of the title; nil for local
	Top      int            // text: rows of the socket table (0: all)
	Clear    bool           // text: clear the terminal before each snapshot
	JSON     bool
	// NetNSName names a network namespace by inode for the text table (nil:
	// the inode), shown when the sockets in view span namespaces.
	NetNSName func(inode uint32) string
	// Attribute adds where each owner runs to the JSON objects; nil: not shown.
	Attribute Attribute
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
	Owner  tracer.Owner // process groups
	Closed bool         // Owner closed these timewait sockets (Socket.Closed)
	Remote string       // remote groups: address:port, or address:* for the clients of a local service
	NetNS  uint32       // remote groups: the namespace the remote is seen from
}

// Groups summarises rows per state and process, and per state and remote.
func Groups(rows []Socket) (byProcess, byRemote []Group) {
	type pk struct {
		state  tracer.State
		pid    uint32
		known  bool
		closed bool
	}
	// (a remote group is keyed by address and port, a service's clients by
	// address alone: named once a group, not once a row)
	type rk struct {
		state   tracer.State
		netns   uint32
		addr    netip.Addr
		port    uint16
		clients bool
	}
	procs, remotes := map[pk]*Group{}, map[rk]*Group{}
	for i := range rows {
		r := &rows[i]
		key := pk{r.State, r.Owner.PID, r.Owner.Known(), r.Closed()}
		p := procs[key]
		if p == nil {
			p = &Group{State: r.State, Owner: r.Owner, Closed: key.closed}
			procs[key] = p
		}
		rkey := rk{state: r.State, netns: r.NetNS, addr: r.Remote.Addr(), port: r.Remote.Port()}
		if ClientOfService(r.Local, r.Remote, r.Service) {
			rkey.port, rkey.clients = 0, true
		}
		q := remotes[rkey]
		if q == nil {
			q = &Group{State: r.State, NetNS: r.NetNS, Remote: r.RemoteGroup()}
			remotes[rkey] = q
		}
		for _, g := range []*Group{p, q} {
			g.Count++
			g.Oldest = max(g.Oldest, r.Oldest())
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

// SortByAge orders rows oldest first (Socket.Oldest).
func SortByAge(rows []Socket) {
	slices.SortFunc(rows, func(a, b Socket) int {
		return cmp.Or(cmp.Compare(b.Oldest(), a.Oldest()), cmp.Compare(b.Age, a.Age), cmp.Compare(a.Cookie, b.Cookie))
	})
}

// Render writes one snapshot taken at now (CLOCK_BOOTTIME ns). rows must be
// sorted (SortByAge). lost is the running count of events lost.
func (w *Watch) Render(now uint64, rows []Socket, lost uint64) error {
	if w.opts.JSON {
		return w.renderJSON(now, rows, lost)
	}
	if w.opts.Clear {
		w.w.WriteString("\x1b[H\x1b[2J")
	}
	counts := map[tracer.State]int{}
	for _, r := range rows {
		counts[r.State]++
	}
	fmt.Fprintf(w.w, "tcpstate watch  %s  %s", w.opts.Clock.Wall(now).In(w.opts.Location).Format("15:04:05"), Count(len(rows), "socket"))
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
	var num [48]byte
	var name [64]byte
	shown := rows
	if w.opts.Top > 0 && len(shown) > w.opts.Top {
		shown = shown[:w.opts.Top]
	}
	// The columns fit what they show: ranges of ages are wider, and the
	// namespace is named only when more than one is in view.
	ageWidth, nsWidth, closed := 7, 0, false
	for i := range shown {
		ageWidth = max(ageWidth, len(appendAge(num[:0], &shown[i])))
		closed = closed || shown[i].Closed()
	}
	for i := range rows {
		if rows[i].NetNS != rows[0].NetNS {
			nsWidth = len("NETNS")
			break
		}
	}
	if nsWidth > 0 {
		for i := range shown {
			nsWidth = max(nsWidth, utf8.RuneCount(AppendNetNS(name[:0], w.opts.NetNSName, shown[i].NetNS)))
		}
	}
	cols := []column{{"STATE", 12}, {"AGE", -ageWidth}, {"PID", -7}, {"COMM", 15}}
	if nsWidth > 0 {
		cols = append(cols, column{"NETNS", nsWidth})
	}
	cols = append(cols, column{"LOCAL", 21}, column{"REMOTE", 0})
	b = append(b, header(cols)...)
	for i := range shown {
		r := &shown[i]
		line := row{b: b, cols: cols}
		st := append(name[:0], r.State.String()...)
		if r.Timewait {
			st = append(st, "/tw"...)
		}
		line.cell(st)
		line.cell(appendAge(num[:0], r))
		line.owner(&r.Owner, false, r.Closed())
		if nsWidth > 0 {
			line.cell(AppendNetNS(name[:0], w.opts.NetNSName, r.NetNS))
		}
		line.endpoint(r.Local)
		line.endpoint(r.Remote)
		b = append(line.b, '\n')
	}
	if len(shown) < len(rows) {
		b = fmt.Appendf(b, "... %d more\n", len(rows)-len(shown))
	}
	if closed {
		b = append(b, "(PID): the process that closed it; a timewait socket belongs to no process\n"...)
	}
	w.w.Write(b)

	byProc, byRemote := Groups(rows)
	b = b[:0]
	b = append(b, "\nBY PROCESS\n"...)
	cols = []column{{"STATE", 12}, {"COUNT", -7}, {"OLDEST", -7}, {"PID", -7}, {"COMM", 0}}
	b = append(b, header(cols)...)
	for _, g := range byProc {
		line := row{b: b, cols: cols}
		line.cell([]byte(g.State.String()))
		line.cell(strconv.AppendInt(num[:0], int64(g.Count), 10))
		line.cell(AppendDuration(num[:0], g.Oldest))
		line.owner(&g.Owner, false, g.Closed)
		b = endLine(line.b)
	}
	b = append(b, "\nBY REMOTE\n"...)
	cols = []column{{"STATE", 12}, {"COUNT", -7}, {"OLDEST", -7}}
	if nsWidth > 0 {
		for _, g := range byRemote {
			nsWidth = max(nsWidth, utf8.RuneCount(AppendNetNS(name[:0], w.opts.NetNSName, g.NetNS)))
		}
		cols = append(cols, column{"NETNS", nsWidth})
	}
	cols = append(cols, column{"REMOTE", 0})
	b = append(b, header(cols)...)
	for _, g := range byRemote {
		line := row{b: b, cols: cols}
		line.cell([]byte(g.State.String()))
		line.cell(strconv.AppendInt(num[:0], int64(g.Count), 10))
		line.cell(AppendDuration(num[:0], g.Oldest))
		if nsWidth > 0 {
			line.cell(AppendNetNS(name[:0], w.opts.NetNSName, g.NetNS))
		}
		line.cell([]byte(g.Remote))
		b = append(line.b, '\n')
	}
	if !w.opts.Clear {
		b = append(b, '\n')
	}
	w.w.Write(b)
	return w.w.Flush()
}

// AppendNetNS appends the name names gives a network namespace by inode, its
// control characters shown as '?', or the inode when it gives none (or names
// is nil).
func AppendNetNS(b []byte, names func(inode uint32) string, inode uint32) []byte {
	if names != nil {
		if n := names(inode); n != "" {
			// (a name is a file name: any bytes, an escape sequence too)
			return appendPrintable(b, []byte(n))
		}
	}
	return strconv.AppendUint(b, uint64(inode), 10)
}

// Count is "1 noun" or "n nouns".
func Count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// endLine ends a line without the padding of its last column.
func endLine(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == ' ' {
		b = b[:len(b)-1]
	}
	return append(b, '\n')
}

// renderJSON writes a "snapshot" object (so that an empty one still shows,
// with the events lost so far), then one "socket" object per row, then
// "group" objects.
func (w *Watch) renderJSON(now uint64, rows []Socket, lost uint64) error {
	ts := w.opts.Clock.Wall(now).AppendFormat(nil, "2006-01-02T15:04:05.000000000Z07:00")
	var b []byte
	b = append(b, `{"time":"`...)
	b = append(b, ts...)
	b = append(b, `","type":"snapshot","sockets":`...)
	b = strconv.AppendInt(b, int64(len(rows)), 10)
	b = append(b, `,"lost":`...)
	b = strconv.AppendUint(b, lost, 10)
	b = append(b, "}\n"...)
	w.w.Write(b)
	for _, r := range rows {
		b = append(b[:0], `{"time":"`...)
		b = append(b, ts...)
		b = append(b, `","type":"socket","cookie":`...)
		b = strconv.AppendUint(b, r.Cookie, 10)
		b = append(b, `,"state":"`...)
		b = append(b, r.State.String()...)
		b = append(b, `","age_ns":`...)
		b = strconv.AppendInt(b, int64(r.Age), 10)
		if r.AgeMax > 0 {
			b = append(b, `,"age_max_ns":`...)
			b = strconv.AppendInt(b, int64(r.AgeMax), 10)
		}
		b = append(b, `,"since_start":`...)
		b = strconv.AppendBool(b, r.SinceStart)
		if r.Timewait {
			b = append(b, `,"timewait":true`...)
		}
		b = appendEndpoints(b, r.NetNS, r.Family, r.Local, r.Remote)
		b = appendOwner(b, &r.Owner)
		b = appendPlaceJSON(b, w.opts.Attribute.place(&r.Owner))
		if r.Closed() {
			b = append(b, `,"owner_closed":true`...)
		}
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
				b = append(b, `,"netns":`...)
				b = strconv.AppendUint(b, uint64(g.NetNS), 10)
				b = append(b, `,"remote":`...)
				b = appendJSONString(b, []byte(g.Remote))
			} else if g.Owner.Known() {
				b = append(b, `,"pid":`...)
				b = strconv.AppendUint(b, uint64(g.Owner.PID), 10)
				b = append(b, `,"comm":`...)
				b = appendJSONString(b, g.Owner.Comm.Bytes())
				b = appendPlaceJSON(b, w.opts.Attribute.place(&g.Owner))
				if g.Closed {
					b = append(b, `,"owner_closed":true`...)
				}
			}
			b = append(b, "}\n"...)
			w.w.Write(b)
		}
	}
	return w.w.Flush()
}

// LingerStates are the states watch shows by default: where sockets pile up.
const LingerStates = tracer.StateSet(1<<tracer.CloseWait | 1<<tracer.FinWait1 | 1<<tracer.FinWait2 |
	1<<tracer.Closing | 1<<tracer.LastAck | 1<<tracer.TimeWait)

// AppendSnapshot lists, into rows[:0], the connections of tl in states,
// passing f, that have been in their state at least linger at time now,
// oldest first. A caller renders one snapshot after another in the same
// rows: 100,000 rows are 14 MB, and a slice grown by append to them
// allocates several times that on every render. rows is made anew when too
// small, or more than twice too large (after a spike).
func AppendSnapshot(rows []Socket, tl *timeline.Timeline, now uint64, f *tracer.Filter, states tracer.StateSet, linger time.Duration) []Socket {
	rows = rows[:0]
	if n := countSockets(tl, now, f, states, linger); cap(rows) < n || cap(rows) > 2*n+4096 {
		rows = make([]Socket, 0, n+n/8) // (room for the next few)
	}
	EachSocket(tl, now, f, states, linger, func(s *Socket) { rows = append(rows, *s) })
	SortByAge(rows)
	return rows
}

// EachSocket hands each row AppendSnapshot would list to each, in no order; the
// Socket is reused.
func EachSocket(tl *timeline.Timeline, now uint64, f *tracer.Filter, states tracer.StateSet, linger time.Duration, each func(*Socket)) {
	var s Socket
	tl.Conns(func(c *timeline.Conn) bool {
		if !listed(c, now, f, states, linger) {
			return true
		}
		ends := c.Endpoints()
		s = Socket{
			Cookie: c.Cookie, Endpoints: ends, State: c.State, Timewait: c.Timewait,
			Age: c.Age(now), SinceStart: c.SinceStart, AgeMax: c.AgeMax(now),
			Owner: c.Owner, Service: tl.Listening(ends.NetNS, ends.Local.Port()),
		}
		each(&s)
		return true
	})
}

// listed reports whether a snapshot lists c.
func listed(c *timeline.Conn, now uint64, f *tracer.Filter, states tracer.StateSet, linger time.Duration) bool {
	return states.Has(c.State) && timeline.Match(f, c, false) && c.Age(now) >= linger
}

// countSockets is how many rows EachSocket would hand over.
func countSockets(tl *timeline.Timeline, now uint64, f *tracer.Filter, states tracer.StateSet, linger time.Duration) int {
	n := 0
	tl.Conns(func(c *timeline.Conn) bool {
		if listed(c, now, f, states, linger) {
			n++
		}
		return true
	})
	return n
}
