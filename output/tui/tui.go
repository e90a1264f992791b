// SPDX-License-Identifier: Apache-2.0

// Package tui is watch on a terminal: a full-screen view, like top, that
// always fits the window. It is a Bubble Tea model (model, update, view):
// snapshots arrive as messages, keys change the sort, the filters and the
// view, and View renders to a string that tests can read without a terminal.
package tui

import (
	"bytes"
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/tracer"
)

// Snapshot is one refresh of the view: the rows of output.Snapshot, taken at
// Now (CLOCK_BOOTTIME ns), and the running counts.
type Snapshot struct {
	Now    uint64
	Rows   []output.Socket
	Events uint64 // events seen since start
	Lost   uint64 // lost since start
}

// Options configure the view.
type Options struct {
	Clock    tracer.Clock
	Location *time.Location
	Host     string
	// Linger: sockets in a closing state at least this long are marked
	// (colour and "!"). 0: 10 s.
	Linger time.Duration
	// NoColor: marks only, no colour (NO_COLOR is set, or the terminal
	// has none).
	NoColor bool
	// NetNSName names a network namespace by inode ("" for none: the
	// inode is shown), for the NETNS column when sockets span namespaces.
	NetNSName func(inode uint32) string
	// Release, if set, is handed a snapshot's rows once the view no longer
	// holds them (a newer snapshot replaced it, or it came while paused),
	// on the view's goroutine: they can be filled again. A snapshot must
	// then never come in the rows of the one the view shows (they would be
	// handed back while still drawn): the sender makes each in rows it was
	// handed back, or new ones.
	Release func(rows []output.Socket)
}

type sortKey int

const (
	byAge sortKey = iota
	byState
	byProcess
	byRemote
)

var sortNames = [...]string{"age", "state", "process", "remote"}

type viewKind int

const (
	viewSockets viewKind = iota
	viewProcesses
	viewRemotes
)

var viewNames = [...]string{"sockets", "processes", "remotes"}

// Model is the view's state.
type Model struct {
	opts          Options
	width, height int
	snap          Snapshot
	have          bool
	sort          sortKey
	view          viewKind
	state         tracer.State // only this state; StateUnknown: all
	query         string       // only rows whose process or endpoints contain it
	typing        bool         // the query is being typed
	paused        bool
	offset        int // rows scrolled past
	styles        styles
	gen           uint64 // snapshots taken: what derived was made from
	derived       *derived
}

// derived is what the view draws from the snapshot, made again only when
// the snapshot, the sort or a filter changes: not for a key that scrolls
// (100,000 rows take tens of milliseconds to filter and sort).
type derived struct {
	gen              uint64
	sort             sortKey
	state            tracer.State
	query            string
	rows             []output.Socket // the rows that pass the filters, in order
	counts           map[tracer.State]int
	grouped          bool // byProc and byRemote are made (a group view was shown)
	byProc, byRemote []output.Group
}

type styles struct {
	header, status, linger, help, title lipgloss.Style
}

// New returns the model of an empty view.
func New(o Options) Model {
	if o.Location == nil {
		o.Location = time.Local
	}
	if o.Linger <= 0 {
		o.Linger = 10 * time.Second
	}
	if os.Getenv("NO_COLOR") != "" {
		o.NoColor = true
	}
	m := Model{opts: o, width: 80, height: 24}
	if !o.NoColor {
		m.styles = styles{
			header: lipgloss.NewStyle().Bold(true),
			status: lipgloss.NewStyle().Foreground(lipgloss.Color("6")),
			linger: lipgloss.NewStyle().Foreground(lipgloss.Color("1")).Bold(true),
			help:   lipgloss.NewStyle().Reverse(true),
			title:  lipgloss.NewStyle().Bold(true).Underline(true),
		}
	}
	return m
}

// Init starts nothing: snapshots come from the tracer.
func (m Model) Init() tea.Cmd { return nil }

// Update takes a snapshot, a resize or a key.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	mm, cmd := m.update(msg)
	if nm, ok := mm.(Model); ok {
		nm.derived = nm.derive()
		return nm, cmd
	}
	return mm, cmd
}

func (m Model) release(rows []output.Socket) {
	if m.opts.Release != nil && rows != nil {
		m.opts.Release(rows)
	}
}

// derive is what the view draws, made again if the last is stale.
func (m Model) derive() *derived {
	d := m.derived
	if d == nil || d.gen != m.gen || d.sort != m.sort || d.state != m.state || d.query != m.query {
		d = &derived{gen: m.gen, sort: m.sort, state: m.state, query: m.query, rows: m.rows(), counts: map[tracer.State]int{}}
		for i := range m.snap.Rows {
			d.counts[m.snap.Rows[i].State]++
		}
	}
	if m.view != viewSockets && !d.grouped {
		g := *d
		g.byProc, g.byRemote = output.Groups(d.rows)
		m.sortGroups(g.byProc)
		m.sortGroups(g.byRemote)
		g.grouped = true
		d = &g
	}
	return d
}

func (m Model) update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case Snapshot:
		if !m.paused || !m.have {
			old := m.snap.Rows
			m.snap, m.have = msg, true
			m.gen++
			m.release(old) // (derived is made again for the new rows: no other reference)
		} else {
			m.release(msg.Rows)
		}
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case tea.KeyMsg:
		if !m.typing && msg.Type == tea.KeyRunes && len(msg.Runes) > 1 {
			// Keys that arrived in one read (a laggy link): one at a time.
			var cmd tea.Cmd
			var mm tea.Model = m
			for _, r := range msg.Runes {
				if mm, cmd = mm.(Model).update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}}); cmd != nil {
					return mm, cmd
				}
			}
			return mm, nil
		}
		if m.typing {
			switch msg.Type {
			case tea.KeyEnter:
				m.typing = false
			case tea.KeyEsc:
				m.typing, m.query = false, ""
			case tea.KeyBackspace:
				if m.query != "" {
					_, n := utf8.DecodeLastRuneInString(m.query)
					m.query = m.query[:len(m.query)-n]
				}
			case tea.KeyCtrlC:
				return m, tea.Quit
			case tea.KeyRunes, tea.KeySpace:
				m.query += string(msg.Runes)
			}
			return m, nil
		}
		page := max(m.height-5, 1)
		switch msg.String() {
		case "q", "ctrl+c":
			return m, tea.Quit
		case "esc":
			// back: the filters off, to the top (q quits)
			m.query, m.state, m.offset = "", tracer.StateUnknown, 0
		case "a":
			m.sort = byAge
		case "s":
			m.sort = byState
		case "p":
			m.sort = byProcess
		case "r":
			m.sort = byRemote
		case "tab":
			m.view, m.offset = (m.view+1)%3, 0
		case "shift+tab":
			m.view, m.offset = (m.view+2)%3, 0
		case "f":
			m.state, m.offset = m.nextState(), 0
		case "/":
			m.typing, m.offset = true, 0
		case " ", "P":
			m.paused = !m.paused
		case "down", "j":
			m.offset++
		case "up", "k":
			m.offset--
		case "pgdown", "ctrl+f":
			m.offset += page
		case "pgup", "ctrl+b":
			m.offset -= page
		case "home", "g":
			m.offset = 0
		case "end", "G":
			m.offset = 1 << 30
		}
		m.offset = max(m.offset, 0) // (the view clamps the far end)
	}
	return m, nil
}

// headerOrder lists the states in the header: those that pile up first,
// so that a narrow window keeps them.
var headerOrder = []tracer.State{tracer.CloseWait, tracer.FinWait2, tracer.FinWait1, tracer.LastAck, tracer.Closing,
	tracer.TimeWait, tracer.Established, tracer.SynSent, tracer.SynRecv, tracer.Listen, tracer.NewSynRecv, tracer.Close}

// sortGroups orders the group views by the sort key: age is the oldest,
// else the key, then the count.
func (m Model) sortGroups(gs []output.Group) {
	byCount := func(a, b output.Group) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(b.Oldest, a.Oldest))
	}
	slices.SortStableFunc(gs, func(a, b output.Group) int {
		switch m.sort {
		case byAge:
			return cmp.Or(cmp.Compare(b.Oldest, a.Oldest), byCount(a, b))
		case byState:
			return cmp.Or(cmp.Compare(a.State, b.State), byCount(a, b))
		case byProcess:
			return cmp.Or(bytes.Compare(a.Owner.Comm[:], b.Owner.Comm[:]), cmp.Compare(a.Owner.PID, b.Owner.PID), byCount(a, b))
		case byRemote:
			return cmp.Or(cmp.Compare(a.Remote, b.Remote), byCount(a, b))
		}
		return byCount(a, b)
	})
}

// nextState cycles the state filter through the states in view, then all.
func (m Model) nextState() tracer.State {
	var present []tracer.State
	for _, r := range m.snap.Rows {
		if !slices.Contains(present, r.State) {
			present = append(present, r.State)
		}
	}
	slices.Sort(present)
	for _, s := range present {
		if s > m.state {
			return s
		}
	}
	return tracer.StateUnknown
}

// lingering: a closing state held at least the threshold.
func (m Model) lingering(r *output.Socket) bool {
	switch r.State {
	case tracer.CloseWait, tracer.FinWait1, tracer.FinWait2, tracer.Closing, tracer.LastAck:
		return r.Oldest() >= m.opts.Linger
	}
	return false
}

// rows are the snapshot's rows that pass the filters, in the chosen order.
func (m Model) rows() []output.Socket {
	// oldest first, as output.SortByAge orders a snapshot
	byAgeCmp := func(a, b output.Socket) int {
		return cmp.Or(cmp.Compare(b.Oldest(), a.Oldest()), cmp.Compare(b.Age, a.Age), cmp.Compare(a.Cookie, b.Cookie))
	}
	if m.state == tracer.StateUnknown && m.query == "" && m.sort == byAge && slices.IsSortedFunc(m.snap.Rows, byAgeCmp) {
		return m.snap.Rows // (read only: no copy of 100,000 rows to hold beside it)
	}
	q := strings.ToLower(m.query)
	rows := make([]output.Socket, 0, len(m.snap.Rows))
	for _, r := range m.snap.Rows {
		if m.state != tracer.StateUnknown && r.State != m.state {
			continue
		}
		if q != "" && !strings.Contains(strings.ToLower(m.searchText(&r)), q) {
			continue
		}
		rows = append(rows, r)
	}
	switch m.sort {
	case byAge:
		slices.SortStableFunc(rows, byAgeCmp)
	case byState:
		slices.SortStableFunc(rows, func(a, b output.Socket) int { return cmp.Or(cmp.Compare(a.State, b.State), byAgeCmp(a, b)) })
	case byProcess:
		// known owners by name and pid, the sockets of no process last
		slices.SortStableFunc(rows, func(a, b output.Socket) int {
			return cmp.Or(cmp.Compare(unowned(a), unowned(b)), bytes.Compare(a.Owner.Comm[:], b.Owner.Comm[:]),
				cmp.Compare(a.Owner.PID, b.Owner.PID), byAgeCmp(a, b))
		})
	case byRemote:
		slices.SortStableFunc(rows, func(a, b output.Socket) int { return cmp.Or(a.Remote.Compare(b.Remote), byAgeCmp(a, b)) })
	}
	return rows
}

// unowned is 1 for a socket of no known process (they sort last).
func unowned(r output.Socket) int {
	if r.Owner.Known() {
		return 0
	}
	return 1
}

func (m Model) searchText(r *output.Socket) string {
	s := r.Local.String() + " " + r.Remote.String() + " " + r.State.String() + " " + m.netnsName(r.NetNS)
	if r.Owner.Known() {
		s += " " + strconv.FormatUint(uint64(r.Owner.PID), 10) + " " + r.Owner.Comm.String()
	}
	return s
}

// fit cuts s to width columns (runes: the view prints no wide characters).
func fit(s string, width int) string {
	if width <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return string(r[:width])
}

// View renders the screen: exactly m.height lines of at most m.width columns.
func (m Model) View() string {
	w, h := max(m.width, 1), max(m.height, 2)
	var lines []string
	add := func(s string, st lipgloss.Style) {
		if len(lines) < h {
			lines = append(lines, st.Render(fit(s, w)))
		}
	}

	// Header: never scrolls away.
	now := m.opts.Clock.Wall(m.snap.Now).In(m.opts.Location)
	d := m.derive() // (made by Update: this one, unless View comes first)
	counts := d.counts
	head := fmt.Sprintf("tcpstate watch  %s  %s  %s", m.opts.Host, now.Format("15:04:05"), output.Count(len(m.snap.Rows), "socket"))
	if !m.have {
		head = fmt.Sprintf("tcpstate watch  %s  waiting for the first snapshot...", m.opts.Host)
	}
	for _, st := range headerOrder {
		if counts[st] > 0 {
			head += fmt.Sprintf(", %d %s", counts[st], st)
		}
	}
	add(head, m.styles.header)
	status := fmt.Sprintf("events %d, lost %d   view: %s   sort: %s", m.snap.Events, m.snap.Lost, viewNames[m.view], sortNames[m.sort])
	if m.snap.Lost > 0 {
		status = fmt.Sprintf("⚠ LOST %d EVENTS   events %d   view: %s   sort: %s", m.snap.Lost, m.snap.Events, viewNames[m.view], sortNames[m.sort])
	}
	if m.state != tracer.StateUnknown {
		status += "   state: " + m.state.String()
	}
	if m.query != "" || m.typing {
		status += "   filter: " + m.query
		if m.typing {
			status += "_"
		}
	}
	if m.paused {
		status += "   PAUSED"
	}
	add(status, m.styles.status)

	help := "q quit  tab view  a/s/p/r sort age/state/process/remote  f state  / filter  ↑↓ pgup/pgdn scroll  space pause  esc reset"
	if m.paused {
		help = strings.Replace(help, "space pause", "space resume", 1)
	}
	if m.typing {
		help = "type to filter by process, pid, address or port; enter keep  esc clear"
	}
	body := h - len(lines) - 1 // the help bar takes the last line
	switch m.view {
	case viewSockets:
		m.socketTable(d.rows, body, add)
	case viewProcesses, viewRemotes:
		groups := d.byProc
		if m.view == viewRemotes {
			groups = d.byRemote
		}
		m.groupTable(groups, body, add)
	}
	for len(lines) < h-1 {
		lines = append(lines, "")
	}
	lines = append(lines, m.styles.help.Render(fit(help, w)))
	return strings.Join(lines, "\n")
}

// socketTable adds the header and the rows that fit in n lines, and "N
// more" when some do not.
func (m Model) socketTable(rows []output.Socket, n int, add func(string, lipgloss.Style)) {
	if n <= 0 {
		return
	}
	multiNS := false
	for i := range rows {
		if rows[i].NetNS != rows[0].NetNS {
			multiNS = true
			break
		}
	}
	nsCol := ""
	if multiNS {
		nsCol = fmt.Sprintf(" %-12s", "NETNS")
	}
	add(fmt.Sprintf("  %-12s %12s %7s %-15s%s %-21s %s", "STATE", "AGE", "PID", "COMM", nsCol, "LOCAL", "REMOTE"), m.styles.title)
	n--
	shown, above, below := window(rows, n, m.offset)
	var num [48]byte
	for i := range shown {
		r := &shown[i]
		mark, st := "  ", lipgloss.NewStyle()
		if m.lingering(r) {
			mark, st = "! ", m.styles.linger
		}
		state := r.State.String()
		if r.Timewait {
			state += "/tw"
		}
		pid, comm := "-", "-"
		if r.Owner.Known() {
			pid, comm = strconv.FormatUint(uint64(r.Owner.PID), 10), sanitize(r.Owner.Comm.String())
			if r.Closed() {
				pid = "(" + pid + ")"
			}
		}
		ns := ""
		if multiNS {
			ns = " " + fmt.Sprintf("%-12s", fit(m.netnsName(r.NetNS), 12))
		}
		add(fmt.Sprintf("%s%-12s %12s %7s %-15s%s %-21s %s", mark, state, output.AppendAge(num[:0], r), pid, fit(comm, 15),
			ns, endpoint(r.Local), endpoint(r.Remote)), st)
	}
	moreLine(above, below, add)
}

// window picks the rows that fit in n lines from offset on (clamped), one
// line kept for saying what is above and below when not all fit.
func window[T any](rows []T, n, offset int) (shown []T, above, below int) {
	if len(rows) <= n {
		return rows, 0, 0
	}
	fits := max(n-1, 0)
	off := min(offset, len(rows)-fits)
	return rows[off : off+fits], off, len(rows) - off - fits
}

// moreLine says what the table does not show.
func moreLine(above, below int, add func(string, lipgloss.Style)) {
	switch {
	case above == 0 && below == 0:
	case above == 0:
		add(fmt.Sprintf("  ... %d more (↓ pgdn scroll, f: one state, /: filter)", below), lipgloss.NewStyle())
	default:
		add(fmt.Sprintf("  ... %d more below, %d above (↑↓ pgup/pgdn, home/end)", below, above), lipgloss.NewStyle())
	}
}

func (m Model) netnsName(inode uint32) string {
	return string(output.AppendNetNS(nil, m.opts.NetNSName, inode))
}

// groupTable adds the per-process or per-remote groups that fit.
func (m Model) groupTable(groups []output.Group, n int, add func(string, lipgloss.Style)) {
	if n <= 0 {
		return
	}
	remote := m.view == viewRemotes
	if remote {
		add(fmt.Sprintf("  %-12s %7s %9s %s", "STATE", "COUNT", "OLDEST", "REMOTE"), m.styles.title)
	} else {
		add(fmt.Sprintf("  %-12s %7s %9s %7s %s", "STATE", "COUNT", "OLDEST", "PID", "COMM"), m.styles.title)
	}
	n--
	shown, above, below := window(groups, n, m.offset)
	for _, g := range shown {
		mark, st := "  ", lipgloss.NewStyle()
		probe := output.Socket{State: g.State, Age: g.Oldest}
		if m.lingering(&probe) {
			mark, st = "! ", m.styles.linger
		}
		oldest := string(output.AppendDuration(nil, g.Oldest))
		if remote {
			add(fmt.Sprintf("%s%-12s %7d %9s %s", mark, g.State, g.Count, oldest, g.Remote), st)
			continue
		}
		pid, comm := "-", "-"
		if g.Owner.Known() {
			pid, comm = strconv.FormatUint(uint64(g.Owner.PID), 10), sanitize(g.Owner.Comm.String())
			if g.Closed {
				pid = "(" + pid + ")"
			}
		}
		add(fmt.Sprintf("%s%-12s %7d %9s %7s %s", mark, g.State, g.Count, oldest, pid, comm), st)
	}
	moreLine(above, below, add)
}

func endpoint(a netip.AddrPort) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

// sanitize keeps a task name printable: anyone names their tasks.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
