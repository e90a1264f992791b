// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/tracer"
)

// v1 is a capture an earlier tcpstate wrote: the replay path needs no root.
const v1 = "../output/capture/testdata/v1.tcpcap"

func TestFilterPassesAndCounts(t *testing.T) {
	var out bytes.Buffer
	f := &Filter{Filter: &tracer.Filter{Family: tracer.IPv6}, Next: Render{output.NewJSON(&out, output.JSONOptions{})}}
	ep4 := tracer.Endpoints{Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:1"), Remote: netip.MustParseAddrPort("10.0.0.2:2")}
	ep6 := tracer.Endpoints{Family: tracer.IPv6, Local: netip.MustParseAddrPort("[::1]:1"), Remote: netip.MustParseAddrPort("[::1]:2")}
	for _, e := range []tracer.Event{
		{Type: tracer.EventState, Cookie: 1, Endpoints: ep4, Old: tracer.Established, New: tracer.FinWait1},
		{Type: tracer.EventState, Cookie: 2, Endpoints: ep6, Old: tracer.Established, New: tracer.CloseWait},
		{Type: tracer.EventLost, Lost: 17},
	} {
		if err := f.Event(&e); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Idle(); err != nil {
		t.Fatal(err)
	}
	if f.Shown != 1 || f.Lost != 17 {
		t.Errorf("shown %d lost %d, want 1 17", f.Shown, f.Lost)
	}
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Errorf("%d lines written, want the IPv6 event and the lost report:\n%s", n, out.String())
	}
}

// trace -r end to end, without root: the capture's walk names the owner, the
// event goes through timeline, filter and renderer, and stderr says so.
func TestReplayTrace(t *testing.T) {
	var out, diag bytes.Buffer
	if err := ReplayTrace(context.Background(), v1, TraceOptions{JSON: true, Out: &out, Diag: &diag}); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if got["old"] != "CLOSE_WAIT" || got["new"] != "LAST_ACK" || got["pid"] != 42.0 || got["comm"] != "leaky" {
		t.Errorf("replayed %v", got)
	}
	if !strings.Contains(diag.String(), "1 events read, 1 shown, 0 lost when recorded") {
		t.Errorf("stderr: %s", diag.String())
	}
	// A filter that rejects it.
	out.Reset()
	diag.Reset()
	if err := ReplayTrace(context.Background(), v1, TraceOptions{Filter: tracer.Filter{Ports: []uint16{9}}, Out: &out, Diag: &diag}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(diag.String(), "1 events read, 0 shown") {
		t.Errorf("filtered replay: stderr %s, stdout %s", diag.String(), out.String())
	}
}

// report end to end, without root.
func TestReport(t *testing.T) {
	var diag bytes.Buffer
	rep, clock, err := Report(context.Background(), []string{v1}, &tracer.Filter{}, &diag)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := rep.Render(&out, clock, nil, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"CLOSE_WAIT"`) {
		t.Errorf("report: %s", out.String())
	}
}

// A replay stops at once when its context ends (Ctrl-C during trace -r or
// report), and says it read the file in part.
func TestReplayStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, diag bytes.Buffer
	if err := ReplayTrace(ctx, v1, TraceOptions{Out: &out, Diag: &diag}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(diag.String(), "interrupted") || !strings.Contains(diag.String(), "0 events read") {
		t.Errorf("stderr: %s", diag.String())
	}
	if _, _, err := Report(ctx, []string{v1}, &tracer.Filter{}, &diag); !errors.Is(err, context.Canceled) {
		t.Errorf("report: %v, want canceled", err)
	}
}

// serve's TIME_WAIT per remote: by address and port, and the clients of a
// local service by address ("10.0.0.9:*"), in both families; a v4-mapped
// IPv6 peer is not the IPv4 one (its socket is another family).
func TestServeTimewaitRemotes(t *testing.T) {
	s := NewServe(ServeOptions{TopProcs: 10, TopRemotes: 20})
	cookie := uint64(0)
	tw := func(family tracer.Family, local, remote string) {
		cookie++
		e := tracer.Event{Type: tracer.EventState, Time: cookie * 1000, Cookie: cookie, Old: tracer.FinWait2, New: tracer.TimeWait, Timewait: true,
			Endpoints: tracer.Endpoints{Family: family, Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote)}}
		if err := s.Sink().Event(&e); err != nil {
			t.Fatal(err)
		}
	}
	tw(tracer.IPv4, "10.0.0.1:40001", "10.0.0.2:80")
	tw(tracer.IPv4, "10.0.0.1:40002", "10.0.0.2:80")
	tw(tracer.IPv4, "10.0.0.1:40003", "10.0.0.2:81")
	tw(tracer.IPv6, "[2001:db8::1]:40001", "[2001:db8::2]:443")
	tw(tracer.IPv6, "[::ffff:10.0.0.1]:40004", "[::ffff:10.0.0.2]:80")
	tw(tracer.IPv4, "10.0.0.1:8080", "10.0.0.9:50001") // clients of our :8080
	tw(tracer.IPv4, "10.0.0.1:8080", "10.0.0.9:50002")
	tw(tracer.IPv6, "[2001:db8::1]:8080", "[2001:db8::9]:50003")
	if err := s.tl.Flush(); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, g := range s.Snapshot(cookie*1000 + 1).TimewaitRemotes {
		got[g.Remote] = g.Count
	}
	want := map[string]int{"10.0.0.2:80": 2, "10.0.0.2:81": 1, "[2001:db8::2]:443": 1, "[::ffff:10.0.0.2]:80": 1,
		"10.0.0.9:*": 2, "[2001:db8::9]:*": 1}
	if !maps.Equal(got, want) {
		t.Errorf("TIME_WAIT remotes %v, want %v", got, want)
	}
}

// Failed connects are counted under at most TopRemotes remotes: a new one
// goes under "[other]" while they are all recent, and takes the place of one
// without failures for ten minutes (whose series end).
func TestServeFailedConnectRemotes(t *testing.T) {
	s := NewServe(ServeOptions{TopProcs: 10, TopRemotes: 2})
	refused := func(at time.Duration, remote string) {
		e := tracer.Event{Type: tracer.EventState, Time: uint64(at), Cookie: uint64(at), Old: tracer.SynSent, New: tracer.Close, Reason: tracer.ReasonRefused,
			Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort(remote)}}
		if err := s.Sink().Event(&e); err != nil {
			t.Fatal(err)
		}
		if err := s.tl.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	counts := func() map[string]uint64 {
		got := map[string]uint64{}
		for k, n := range s.counters.FailedConnects {
			got[k.Remote] += n
		}
		return got
	}
	refused(1*time.Second, "10.0.0.2:80")
	refused(2*time.Second, "10.0.0.3:80")
	refused(3*time.Second, "10.0.0.4:80") // both places taken, both recent
	refused(5*time.Minute, "10.0.0.3:80")
	if want := map[string]uint64{"10.0.0.2:80": 1, "10.0.0.3:80": 2, "[other]": 1}; !maps.Equal(counts(), want) {
		t.Errorf("failed connects %v, want %v", counts(), want)
	}
	refused(11*time.Minute, "10.0.0.5:80") // 10.0.0.2 has been quiet for 10 minutes
	if want := map[string]uint64{"10.0.0.3:80": 2, "10.0.0.5:80": 1, "[other]": 1}; !maps.Equal(counts(), want) {
		t.Errorf("failed connects %v, want %v", counts(), want)
	}
}

// A walk that takes most of --max-size is said: every file starts with it.
func TestRecordWarnsOfAWalkOverMaxSize(t *testing.T) {
	socks := make([]tracer.Socket, 3000)
	for i := range socks {
		socks[i] = tracer.Socket{Cookie: uint64(i + 1), State: tracer.Established}
	}
	for _, c := range []struct {
		maxSize int64
		warn    bool
	}{{64 << 10, true}, {64 << 20, false}, {0, false}} {
		var stderr bytes.Buffer
		r, err := NewRecorder(RecordOptions{Path: filepath.Join(t.TempDir(), "c"), Sockets: socks, MaxSize: c.maxSize, Keep: 1,
			SysctlInterval: time.Hour, Stderr: &stderr})
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		if got := strings.Contains(stderr.String(), "more than half of --max-size"); got != c.warn {
			t.Errorf("--max-size %d: warned %v, want %v: %q", c.maxSize, got, c.warn, stderr.String())
		}
	}
}

// rowsRenderer notes where each snapshot's rows lie.
type rowsRenderer struct{ first []*output.Socket }

func (r *rowsRenderer) Render(_ uint64, rows []output.Socket, _ uint64) error {
	if len(rows) == 0 {
		r.first = append(r.first, nil)
		return nil
	}
	r.first = append(r.first, &rows[0])
	return nil
}

// render renders a snapshot and says where its rows lie.
func (r *rowsRenderer) render(t *testing.T, s *Watch, now uint64) *output.Socket {
	t.Helper()
	if err := s.Render(now); err != nil {
		t.Fatal(err)
	}
	if r.first[len(r.first)-1] == nil {
		t.Fatal("an empty snapshot")
	}
	return r.first[len(r.first)-1]
}

// A snapshot is made in the last one's rows, or with WatchOptions.Reuse in
// the rows Reuse gives back, and never in rows a renderer that keeps them
// still holds.
func TestWatchRefillsRows(t *testing.T) {
	closeWait := func(s *Watch) {
		t.Helper()
		for i := range uint64(3) {
			e := tracer.Event{Type: tracer.EventState, Time: 1000 + i, Cookie: 1 + i, Old: tracer.Established, New: tracer.CloseWait,
				Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:80"),
					Remote: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), uint16(40000+i))}}
			if err := s.Sink().Event(&e); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.tl.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	var states tracer.StateSet
	states.Add(tracer.CloseWait)

	t.Run("by itself", func(t *testing.T) {
		r := &rowsRenderer{}
		s := NewWatch(r, WatchOptions{States: states, Interval: time.Second})
		closeWait(s)
		first := r.render(t, s, 2000)
		for now := uint64(2001); now < 2003; now++ {
			if at := r.render(t, s, now); at != first {
				t.Errorf("snapshot at %d made at %p, want in the last one's rows (%p)", now, at, first)
			}
		}
	})
	t.Run("Reuse", func(t *testing.T) {
		r := &rowsRenderer{}
		var back []output.Socket // what the renderer gives back next
		s := NewWatch(r, WatchOptions{States: states, Interval: time.Second, Reuse: func() []output.Socket {
			b := back
			back = nil
			return b
		}})
		closeWait(s)
		held := r.render(t, s, 2000)
		if at := r.render(t, s, 2001); at == held { // nothing given back
			t.Fatal("a snapshot was made in the rows the renderer still holds")
		}
		back = make([]output.Socket, 0, 8)
		mine := &back[:1][0]
		if at := r.render(t, s, 2002); at != mine {
			t.Errorf("a snapshot was made at %p, want in the rows given back (%p)", at, mine)
		}
	})
}

// The walk keeps the listeners whose children a filter can want: on a
// wildcard address (IPv4 children of IPv6's too) whatever the address filter,
// on their port whatever the remote port filter.
func TestWalkWantsListenersOfWantedChildren(t *testing.T) {
	sock := func(fam tracer.Family, state tracer.State, local, remote string) tracer.Socket {
		return tracer.Socket{State: state, Endpoints: tracer.Endpoints{Family: fam,
			Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote)}}
	}
	dual := sock(tracer.IPv6, tracer.Listen, "[::]:8080", "[::]:0")
	any4 := sock(tracer.IPv4, tracer.Listen, "0.0.0.0:9090", "0.0.0.0:0")
	lo6 := sock(tracer.IPv6, tracer.Listen, "[::1]:7070", "[::]:0")
	lo4 := sock(tracer.IPv4, tracer.Listen, "127.0.0.1:6060", "0.0.0.0:0")
	conn6 := sock(tracer.IPv6, tracer.Established, "[::1]:8080", "[::1]:40000")
	for _, c := range []struct {
		name   string
		filter tracer.Filter
		want   []tracer.Socket
	}{
		{"-4", tracer.Filter{Family: tracer.IPv4}, []tracer.Socket{dual, any4, lo4}},
		{"-6", tracer.Filter{Family: tracer.IPv6}, []tracer.Socket{dual, lo6, conn6}},
		{"--addr 127.0.0.1", tracer.Filter{Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, []tracer.Socket{dual, any4, lo4}},
		{"--port 8080", tracer.Filter{Ports: []uint16{8080}}, []tracer.Socket{dual, conn6}},
		{"--rport 40000", tracer.Filter{RPorts: []uint16{40000}}, []tracer.Socket{dual, any4, lo6, lo4, conn6}},
	} {
		wants := WalkWants(c.filter)
		var got []tracer.Socket
		for _, s := range []tracer.Socket{dual, any4, lo6, lo4, conn6} {
			if wants(&s) {
				got = append(got, s)
			}
		}
		if len(got) != len(c.want) {
			t.Errorf("%s: kept %d sockets, want %d: %v", c.name, len(got), len(c.want), got)
			continue
		}
		for i := range got {
			if got[i].Local != c.want[i].Local {
				t.Errorf("%s: kept %v, want %v", c.name, got[i].Local, c.want[i].Local)
			}
		}
	}
}
