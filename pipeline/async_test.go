// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/tracer"
)

// seen records the cookies it is given, and the number of events it had
// when each Idle came; it fails from event failAt on (0: never).
type seen struct {
	cookies []uint64
	idles   []int
	failAt  int
}

var errSink = errors.New("sink failed")

func (s *seen) Event(e *tracer.Event) error {
	if s.failAt > 0 && len(s.cookies)+1 >= s.failAt {
		return errSink
	}
	s.cookies = append(s.cookies, e.Cookie)
	return nil
}

func (s *seen) Idle() error { s.idles = append(s.idles, len(s.cookies)); return nil }

// Every event reaches the sink, once, in order, though the sender reuses
// one event; an Idle comes after every event sent before it.
func TestAsyncKeepsOrder(t *testing.T) {
	const n = 5*asyncBatch + 17
	s := &seen{}
	a := NewAsync(s)
	var e tracer.Event
	for i := 1; i <= n; i++ {
		e.Cookie = uint64(i)
		if err := a.Event(&e); err != nil {
			t.Fatal(err)
		}
		if i == 3 || i == 2*asyncBatch+1 {
			if err := a.Idle(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if len(s.cookies) != n {
		t.Fatalf("%d events reached the sink, want %d", len(s.cookies), n)
	}
	for i, c := range s.cookies {
		if c != uint64(i+1) {
			t.Fatalf("event %d is cookie %d, want %d", i, c, i+1)
		}
	}
	if want := []int{3, 2*asyncBatch + 1}; len(s.idles) != 2 || s.idles[0] != want[0] || s.idles[1] != want[1] {
		t.Errorf("Idle came after %v events, want %v", s.idles, want)
	}
	if err := a.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
}

// The sink's error comes back to the sender, which stops; no event after
// the failed one reaches the sink.
func TestAsyncStopsOnError(t *testing.T) {
	const failAt = asyncBatch + 5
	s := &seen{failAt: failAt}
	a := NewAsync(s)
	var e tracer.Event
	var err error
	sent := 0
	for sent < 100*asyncBatch && err == nil {
		sent++
		e.Cookie = uint64(sent)
		err = a.Event(&e)
	}
	if !errors.Is(err, errSink) {
		t.Fatalf("Event returned %v after %d events, want the sink's error", err, sent)
	}
	// The error shows within the batches under way, not at the end.
	if sent > failAt+(asyncBuffers+1)*asyncBatch {
		t.Errorf("the sender learnt of the error only after %d events (it came at %d)", sent, failAt)
	}
	if err := a.Event(&e); !errors.Is(err, errSink) {
		t.Errorf("Event after the error: %v", err)
	}
	if err := a.Idle(); !errors.Is(err, errSink) {
		t.Errorf("Idle after the error: %v", err)
	}
	if err := a.Close(); !errors.Is(err, errSink) {
		t.Errorf("Close after the error: %v", err)
	}
	if len(s.cookies) != failAt-1 || s.cookies[len(s.cookies)-1] != failAt-1 {
		t.Errorf("the sink took %d events, want the %d before the failed one", len(s.cookies), failAt-1)
	}
	if len(s.idles) != 0 {
		t.Errorf("Idle reached the sink after its error")
	}
	// Every event given is rendered, the failed one, or dropped.
	if given := uint64(sent + 1); a.Dropped != given-failAt {
		t.Errorf("dropped %d of %d given, want %d", a.Dropped, given, given-failAt)
	}
}

// An error in the last, partial batch comes back from Close; an event after
// Close is refused, not lost without a word.
func TestAsyncErrorAtClose(t *testing.T) {
	s := &seen{failAt: 10}
	a := NewAsync(s)
	var e tracer.Event
	for i := range 20 {
		e.Cookie = uint64(i + 1)
		if err := a.Event(&e); err != nil {
			t.Fatalf("event %d: %v (the batch was not full yet)", i+1, err)
		}
	}
	if err := a.Close(); !errors.Is(err, errSink) {
		t.Fatalf("Close: %v, want the sink's error", err)
	}
	if len(s.cookies) != 9 || a.Dropped != 10 {
		t.Errorf("%d events reached the sink, %d dropped; want 9 and 10", len(s.cookies), a.Dropped)
	}
	ok := NewAsync(&seen{})
	if err := ok.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ok.Event(&e); !errors.Is(err, errAsyncClosed) {
		t.Errorf("Event after Close: %v, want %v", err, errAsyncClosed)
	}
	if err := ok.Idle(); err != nil {
		t.Errorf("Idle after Close: %v", err)
	}
}

// churnCapture writes a capture of n loopback connections as the kernel
// reports a churn's (scripts/churn): the client's five steps and timewait
// hand-over and end, the server's four, with owners; 11 events each.
func churnCapture(b *testing.B, n int) (string, int) {
	path := filepath.Join(b.TempDir(), "churn.tcpstate")
	w, err := capture.Create(path, capture.Header{Tcpstate: "bench", Kernel: "6.18", HZ: 250}, capture.Options{})
	if err != nil {
		b.Fatal(err)
	}
	app := tracer.Owner{Task: tracer.Task{PID: 4242, TID: 4243, Comm: tracer.CommFrom("churn")}, From: tracer.OwnerConnect}
	events := 0
	for i := range n {
		t := uint64(1e9 + i*45_000)
		port := uint16(32768 + i%28000)
		cli := tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4,
			Local: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), Remote: netip.MustParseAddrPort("127.0.0.1:8099")}
		srv := tracer.Endpoints{NetNS: cli.NetNS, Family: tracer.IPv4, Local: cli.Remote, Remote: cli.Local}
		c, s := uint64(1_000_000+2*i), uint64(1_000_001+2*i)
		for _, e := range []tracer.Event{
			{Type: tracer.EventState, Cookie: c, Endpoints: cli, Old: tracer.Close, New: tracer.SynSent, Owner: app},
			{Type: tracer.EventState, Cookie: s, Endpoints: srv, Old: tracer.Listen, New: tracer.SynRecv},
			{Type: tracer.EventState, Cookie: c, Endpoints: cli, Old: tracer.SynSent, New: tracer.Established},
			{Type: tracer.EventState, Cookie: s, Endpoints: srv, Old: tracer.SynRecv, New: tracer.Established},
			{Type: tracer.EventState, Cookie: c, Endpoints: cli, Old: tracer.Established, New: tracer.FinWait1, Owner: app},
			{Type: tracer.EventState, Cookie: s, Endpoints: srv, Old: tracer.Established, New: tracer.CloseWait},
			{Type: tracer.EventState, Cookie: c, Endpoints: cli, Old: tracer.FinWait1, New: tracer.FinWait2},
			{Type: tracer.EventState, Cookie: s, Endpoints: srv, Old: tracer.CloseWait, New: tracer.LastAck, Owner: app},
			{Type: tracer.EventTWHandover, Cookie: c, Endpoints: cli, Old: tracer.FinWait2, New: tracer.TimeWait, Timewait: true, ExpiresIn: time.Minute},
			{Type: tracer.EventState, Cookie: c, Endpoints: cli, Old: tracer.FinWait2, New: tracer.Close},
			{Type: tracer.EventState, Cookie: s, Endpoints: srv, Old: tracer.LastAck, New: tracer.Close},
		} {
			t += 2_000
			e.Time = t
			e.OnCPU = tracer.Task{PID: 4242, Comm: tracer.CommFrom("churn")}
			if err := w.Event(&e); err != nil {
				b.Fatal(err)
			}
			events++
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	return path, events
}

// BenchmarkReplayJSON: trace -r -o json of a churn's capture to io.Discard,
// rendering on the reader's goroutine (sync) and beside it (async, as
// ReplayTrace does). events/s is what a user waits for; on one core async
// only adds its handovers.
func BenchmarkReplayJSON(b *testing.B) {
	path, n := churnCapture(b, 20_000)
	for _, async := range []bool{false, true} {
		b.Run(map[bool]string{false: "sync", true: "async"}[async], func(b *testing.B) {
			events := 0
			for b.Loop() {
				if err := replayTrace(context.Background(), path, TraceOptions{JSON: true, Out: io.Discard}, async); err != nil {
					b.Fatal(err)
				}
				events += n
			}
			b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// cancelAt cancels a context at its nth write, and keeps what it is given.
type cancelAt struct {
	bytes.Buffer
	n      int
	cancel context.CancelFunc
}

func (c *cancelAt) Write(p []byte) (int, error) {
	if c.n--; c.n == 0 {
		c.cancel()
	}
	return c.Buffer.Write(p)
}

// Ctrl-C during a replay whose renderer writes to stderr too (text: loss
// reports): every line of the renderer comes before the summary's, none
// beside it.
func TestReplayInterruptedInOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lossy.tcpstate")
	w, err := capture.Create(path, capture.Header{Tcpstate: "test", HZ: 250}, capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20_000 {
		e := tracer.Event{Type: tracer.EventLost, Time: uint64(1e9 + i), Lost: 1}
		if err := w.Event(&e); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	diag := &cancelAt{n: 100, cancel: cancel}
	if err := ReplayTrace(ctx, path, TraceOptions{Out: io.Discard, Diag: diag}); err != nil {
		t.Fatal(err)
	}
	out := diag.String()
	i := strings.Index(out, "interrupted")
	if i < 0 {
		t.Fatalf("not interrupted:\n%.500s", out)
	}
	if after := out[i:]; strings.Contains(after, "events lost") {
		t.Errorf("loss reports after the interruption's message:\n%.500s", after)
	}
}
