// SPDX-License-Identifier: Apache-2.0

package tui

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/tracer"
)

func key(s string) tea.KeyMsg {
	switch s {
	case "tab":
		return tea.KeyMsg{Type: tea.KeyTab}
	case "enter":
		return tea.KeyMsg{Type: tea.KeyEnter}
	case "esc":
		return tea.KeyMsg{Type: tea.KeyEsc}
	case " ":
		return tea.KeyMsg{Type: tea.KeySpace, Runes: []rune{' '}}
	case "pgdown":
		return tea.KeyMsg{Type: tea.KeyPgDown}
	}
	return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)}
}

func press(m Model, keys ...string) Model {
	for _, k := range keys {
		nm, _ := m.Update(key(k))
		m = nm.(Model)
	}
	return m
}

// leak is 40 CLOSE_WAIT sockets of one process, 40 FIN_WAIT2 ends, and a
// TIME_WAIT to another remote.
func leak() Snapshot {
	var rows []output.Socket
	srv := netip.MustParseAddrPort("127.0.0.1:8080")
	for i := range 40 {
		cl := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(40000+i))
		owner := tracer.Owner{Task: tracer.Task{PID: 4242, TID: 4242, Comm: tracer.CommFrom("leaky")}, From: tracer.OwnerConnect}
		rows = append(rows,
			output.Socket{Cookie: uint64(i), State: tracer.CloseWait, Age: time.Duration(40-i) * time.Second, Owner: owner,
				Endpoints: tracer.Endpoints{Local: cl, Remote: srv}},
			output.Socket{Cookie: uint64(100 + i), State: tracer.FinWait2, Timewait: true, Age: time.Duration(40-i) * time.Second,
				Endpoints: tracer.Endpoints{Local: srv, Remote: cl}, Service: true})
	}
	rows = append(rows, output.Socket{Cookie: 999, State: tracer.TimeWait, Age: 5 * time.Second,
		Endpoints: tracer.Endpoints{Local: netip.MustParseAddrPort("10.0.0.1:50000"), Remote: netip.MustParseAddrPort("10.0.0.9:443")}})
	return Snapshot{Now: uint64(time.Hour), Rows: rows, Events: 123, Lost: 4}
}

func view(t *testing.T, m Model, w, h int) []string {
	t.Helper()
	nm, _ := m.Update(tea.WindowSizeMsg{Width: w, Height: h})
	lines := strings.Split(nm.(Model).View(), "\n")
	if len(lines) != h {
		t.Fatalf("%d lines on a %d-line screen:\n%s", len(lines), h, strings.Join(lines, "\n"))
	}
	for i, l := range lines {
		if n := len([]rune(l)); n > w {
			t.Errorf("line %d is %d columns on a %d-column screen: %q", i, n, w, l)
		}
	}
	return lines
}

func TestFitsAndHeaderStays(t *testing.T) {
	m := New(Options{Host: "web1", Location: time.UTC, NoColor: true})
	nm, _ := m.Update(leak())
	m = nm.(Model)
	for _, size := range [][2]int{{100, 30}, {60, 10}, {150, 50}, {20, 5}} {
		lines := view(t, m, size[0], size[1])
		if !strings.HasPrefix(lines[0], "tcpstate watch  web1") {
			t.Errorf("%v: first line %q", size, lines[0])
		}
		if size[1] >= 10 && !strings.Contains(strings.Join(lines, "\n"), "more") {
			t.Errorf("%v: no \"N more\" with 81 rows:\n%s", size, strings.Join(lines, "\n"))
		}
		if !strings.HasPrefix(lines[len(lines)-1], "q quit") {
			t.Errorf("%v: last line %q, want the help bar", size, lines[len(lines)-1])
		}
	}
	lines := view(t, m, 150, 30)
	if !strings.Contains(lines[0], "40 CLOSE_WAIT, 40 FIN_WAIT2, 1 TIME_WAIT") || !strings.Contains(lines[1], "LOST 4 EVENTS") {
		t.Errorf("header:\n%s\n%s", lines[0], lines[1])
	}
	// Lingering sockets are marked without colour.
	if !strings.HasPrefix(lines[3], "! CLOSE_WAIT") && !strings.HasPrefix(lines[3], "! FIN_WAIT2") {
		t.Errorf("oldest row %q: want the lingering mark", lines[3])
	}
}

func TestKeys(t *testing.T) {
	m := New(Options{Host: "web1", Location: time.UTC, NoColor: true})
	nm, _ := m.Update(leak())
	m = nm.(Model)
	first := func(m Model) string { return view(t, m, 120, 20)[3] }

	if row := first(press(m, "s")); !strings.Contains(row, "FIN_WAIT2") {
		t.Errorf("sort by state: first row %q, want FIN_WAIT2 (state 5 before CLOSE_WAIT 8)", row)
	}
	if row := first(press(m, "r")); !strings.Contains(row, "10.0.0.9:443") {
		t.Errorf("sort by remote: first row %q, want the remote 10.0.0.9:443 first", row)
	}
	if row := first(press(m, "p")); !strings.Contains(row, "leaky") {
		t.Errorf("sort by process: first row %q", row)
	}
	f := press(m, "f")
	if row := first(f); !strings.Contains(row, "FIN_WAIT2") || !strings.Contains(view(t, f, 120, 20)[1], "state: FIN_WAIT2") {
		t.Errorf("state filter: %q", row)
	}
	q := press(m, "/", "4", "0", "0", "3", "9", "enter")
	lines := view(t, q, 120, 20)
	if !strings.Contains(lines[1], "filter: 40039") || !strings.Contains(lines[3], ":40039") || strings.Contains(lines[5], ":4") {
		t.Errorf("typed filter:\n%s", strings.Join(lines, "\n"))
	}
	g := press(m, "tab")
	if lines := view(t, g, 120, 20); !strings.Contains(lines[1], "view: processes") || !strings.Contains(strings.Join(lines, "\n"), "40     40.0s    4242 leaky") {
		t.Errorf("process view:\n%s", strings.Join(lines, "\n"))
	}
	if lines := view(t, press(m, "tab", "tab"), 120, 20); !strings.Contains(strings.Join(lines, "\n"), "127.0.0.1:*") {
		t.Errorf("remote view:\n%s", strings.Join(lines, "\n"))
	}
	// Paused: a new snapshot is not shown.
	p := press(m, " ")
	nm, _ = p.Update(Snapshot{Now: uint64(2 * time.Hour)})
	if lines := view(t, nm.(Model), 120, 20); !strings.Contains(lines[1], "PAUSED") || !strings.Contains(lines[0], "81 sockets") {
		t.Errorf("paused:\n%s", strings.Join(lines, "\n"))
	}
	if _, cmd := m.Update(key("q")); cmd == nil {
		t.Errorf("q does not quit")
	} else if _, ok := cmd().(tea.QuitMsg); !ok {
		t.Errorf("q: %T", cmd())
	}
	// esc goes back (filters off), it does not quit.
	e := press(q, "esc")
	if _, cmd := q.Update(key("esc")); cmd != nil {
		t.Errorf("esc quits")
	}
	if lines := view(t, e, 120, 20); strings.Contains(lines[1], "filter") || !strings.Contains(lines[len(lines)-2], "more") {
		t.Errorf("after esc:\n%s", strings.Join(lines, "\n"))
	}
	// Keys that came in one read count one by one: "ff" is f twice.
	if got, want := view(t, m.press2("ff"), 120, 20)[1], view(t, press(m, "f", "f"), 120, 20)[1]; got != want {
		t.Errorf("ff: %q, want %q", got, want)
	}
}

func (m Model) press2(runes string) Model {
	nm, _ := m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(runes)})
	return nm.(Model)
}

// Every row can be reached: down, page down, end; the table says what is
// above and below.
func TestScroll(t *testing.T) {
	m := New(Options{Host: "web1", Location: time.UTC, NoColor: true})
	nm, _ := m.Update(leak())
	m = nm.(Model)
	top := view(t, m, 120, 20)
	down := view(t, press(m, "j"), 120, 20)
	if top[4] != down[3] {
		t.Errorf("one down: row 2 %q should be first, got %q", top[4], down[3])
	}
	end := view(t, press(m, "G"), 120, 20)
	if !strings.Contains(end[len(end)-2], "0 more below") || !strings.Contains(end[len(end)-2], "above") {
		t.Errorf("at the end: %q", end[len(end)-2])
	}
	seen := map[string]bool{}
	sized, _ := m.Update(tea.WindowSizeMsg{Width: 120, Height: 20})
	mm := sized.(Model)
	for range 10 {
		for _, l := range view(t, mm, 120, 20)[3:18] { // the 15 rows of a 20-line screen
			seen[l] = true
		}
		mm = press(mm, "pgdown")
	}
	if n := len(seen); n < 81 {
		t.Errorf("paging down showed %d distinct rows of 81", n)
	}
}

// Sockets from several namespaces get a NETNS column, named.
func TestNetNSColumn(t *testing.T) {
	s := leak()
	s.Rows[0].NetNS = 7
	m := New(Options{Host: "web1", Location: time.UTC, NoColor: true, NetNSName: func(n uint32) string {
		if n == 7 {
			return "blue"
		}
		return ""
	}})
	nm, _ := m.Update(s)
	lines := view(t, nm.(Model), 140, 20)
	if !strings.Contains(lines[2], "NETNS") || !strings.Contains(strings.Join(lines, "\n"), "blue") {
		t.Errorf("no NETNS column:\n%s", strings.Join(lines, "\n"))
	}
	f := press(nm.(Model), "/", "b", "l", "u", "e", "enter")
	// (one namespace left in view: no column, the row is netns 7's)
	if lines := view(t, f, 140, 20); !strings.Contains(lines[3], "127.0.0.1:40000 ") || strings.Contains(lines[4], "WAIT") {
		t.Errorf("filter by namespace name:\n%s", strings.Join(lines, "\n"))
	}
}

// BenchmarkView draws the screen over 100,000 sockets (a half-closed pile:
// servers in CLOSE_WAIT, clients in FIN_WAIT2) in each sort and view: after
// a key that scrolls, and after a new snapshot (the rows filtered and sorted
// again).
func BenchmarkView(b *testing.B) {
	rows := make([]output.Socket, 0, 100_000)
	lo := netip.MustParseAddr("127.0.0.1")
	for i := range 50_000 {
		srv := netip.AddrPortFrom(lo, uint16(8000+i%6))
		cl := netip.AddrPortFrom(lo, uint16(32768+i%28000))
		owner := tracer.Owner{Task: tracer.Task{PID: uint32(100 + i%6), Comm: tracer.CommFrom("server")}, From: tracer.OwnerListener}
		rows = append(rows,
			output.Socket{Cookie: uint64(2*i + 1), State: tracer.CloseWait, Age: time.Duration(i) * time.Millisecond, Owner: owner,
				Endpoints: tracer.Endpoints{Local: srv, Remote: cl}, Service: true},
			output.Socket{Cookie: uint64(2*i + 2), State: tracer.FinWait2, Age: time.Duration(i) * time.Millisecond,
				Endpoints: tracer.Endpoints{Local: cl, Remote: srv}})
	}
	output.SortByAge(rows)
	snap := Snapshot{Now: uint64(time.Hour), Rows: rows}
	for _, keys := range [][]string{{}, {"p"}, {"r"}, {"tab"}} {
		name := "age"
		if len(keys) > 0 {
			name = keys[0]
		}
		for _, next := range []struct {
			what string
			msg  tea.Msg
		}{{"scroll", key("j")}, {"snapshot", snap}} {
			b.Run(name+"/"+next.what, func(b *testing.B) {
				m := New(Options{Host: "web1", Location: time.UTC, NoColor: true})
				nm, _ := m.Update(tea.WindowSizeMsg{Width: 120, Height: 40})
				nm, _ = nm.Update(snap)
				m = press(nm.(Model), keys...)
				b.ReportAllocs()
				for b.Loop() {
					nm, _ := m.Update(next.msg)
					_ = nm.View()
				}
			})
		}
	}
}

// The view hands back a snapshot's rows once it lets go of them (replaced by
// a newer one, or arrived while paused), never the rows it shows.
func TestReleasesRowsItNoLongerHolds(t *testing.T) {
	var released [][]output.Socket
	m := New(Options{Host: "web1", Location: time.UTC, NoColor: true,
		Release: func(rows []output.Socket) { released = append(released, rows) }})
	snap := func(cookie uint64) Snapshot {
		return Snapshot{Now: uint64(time.Hour), Rows: []output.Socket{{Cookie: cookie, State: tracer.CloseWait}}}
	}
	first, second, third := snap(1), snap(2), snap(3)
	nm, _ := m.Update(first)
	if len(released) != 0 {
		t.Fatalf("the first snapshot released %v", released)
	}
	nm, _ = nm.Update(second)
	if len(released) != 1 || &released[0][0] != &first.Rows[0] {
		t.Fatalf("after the second snapshot, released %v; want the first's rows", released)
	}
	m = press(nm.(Model), " ") // paused: a new snapshot is not taken, and goes back at once
	nm, _ = m.Update(third)
	if len(released) != 2 || &released[1][0] != &third.Rows[0] {
		t.Fatalf("a snapshot while paused: released %v; want its own rows", released)
	}
	if got := nm.(Model).derive().rows; len(got) != 1 || got[0].Cookie != 2 {
		t.Errorf("paused, the view shows %v; want the second snapshot", got)
	}
}
