// SPDX-License-Identifier: Apache-2.0

package capture

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

func sampleEvents(n int) []tracer.Event {
	out := make([]tracer.Event, n)
	for i := range out {
		e := tracer.Event{
			Type: tracer.EventState, Time: uint64(1e9 + i*1000), Cookie: uint64(100 + i/5), Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")},
			Old: tracer.State(1 + i%5), New: tracer.State(2 + i%5), Duration: time.Duration(i) * time.Microsecond, HasDuration: i%3 != 0,
			Owner: tracer.Owner{Task: tracer.Task{PID: 42, TID: 43, Comm: tracer.CommFrom("app")}, From: tracer.OwnerConnect},
			OnCPU: tracer.Task{PID: 7, Comm: tracer.CommFrom("swapper/1")}, SkErr: int32(i % 2 * 104), Reason: tracer.Reason(i % 4),
			RstReason: uint16(i % 7), Timewait: i%4 == 0, DurationMin: i%6 == 0, Unseen: i%5 == 0, ExpiresIn: time.Duration(i) * time.Millisecond,
			HasCPU: i%5 != 0, CPU: uint32(i % 5 * 3), // CPU 0 among them
		}
		switch i % 10 {
		case 7:
			e.Family = tracer.IPv6
			e.Local, e.Remote = netip.MustParseAddrPort("[2001:db8::1]:5000"), netip.MustParseAddrPort("[::1]:443")
		case 8:
			e.Type, e.Keepalive = tracer.EventKeepalive, tracer.Keepalive{Event: tracer.KeepaliveProbe, On: true, Probes: 2,
				Idle: time.Second, Intvl: 3 * time.Second, Count: 5, IdleFromSocket: true, CountFromSocket: true, UserTimeout: time.Minute}
		case 9:
			e = tracer.Event{Type: tracer.EventLost, Time: e.Time, Lost: 12345}
		}
		out[i] = e
	}
	return out
}

var header = Header{Tcpstate: "test", Hostname: "h", Kernel: "6.18", BootWall: 1_700_000_000_000_000_000, HZ: 250,
	RstReasons: map[uint16]string{11: "TCP_ABORT_ON_CLOSE"}, Options: []string{"record", "-w", "x"},
	Namespaces: []Namespace{{Inode: 1, Sysctls: map[string]string{"fin_timeout": "60"}}}}

// writeCapture writes evs in small blocks and returns the file's bytes and
// the offsets where blocks start.
func writeCapture(t testing.TB, evs []tracer.Event) ([]byte, []int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.tcpstate")
	w, err := Create(path, header, Options{BlockSize: 10 * EventSize})
	if err != nil {
		t.Fatal(err)
	}
	var offsets []int
	mark := func() { offsets = append(offsets, int(w.Size())) }
	mark()
	if err := w.Sockets([]tracer.Socket{{Cookie: 9, State: tracer.Listen, Endpoints: tracer.Endpoints{Local: netip.MustParseAddrPort("0.0.0.0:80")}}}); err != nil {
		t.Fatal(err)
	}
	for i := range evs {
		if w.count == 0 {
			mark()
		}
		if err := w.Event(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data, offsets
}

// readAll reads everything it can; it must never fail after the header.
func readAll(t testing.TB, data []byte) ([]tracer.Event, [][]tracer.Socket, []string, error) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(data), int64(len(data)), "test")
	if err != nil {
		return nil, nil, nil, err
	}
	var evs []tracer.Event
	var socks [][]tracer.Socket
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if rec.Event != nil {
			evs = append(evs, *rec.Event)
		}
		if rec.Sockets != nil {
			socks = append(socks, rec.Sockets)
		}
	}
	return evs, socks, r.Warnings(), nil
}

func TestRoundTrip(t *testing.T) {
	in := sampleEvents(95)
	data, _ := writeCapture(t, in)
	out, socks, warnings, err := readAll(t, data)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("err %v, warnings %v", err, warnings)
	}
	if len(out) != len(in) {
		t.Fatalf("%d events back of %d", len(out), len(in))
	}
	for i := range in {
		if out[i] != in[i] {
			t.Fatalf("event %d:\n got %+v\nwant %+v", i, out[i], in[i])
		}
	}
	if len(socks) != 1 || socks[0][0].Cookie != 9 || socks[0][0].Local.String() != "0.0.0.0:80" {
		t.Errorf("sockets %+v", socks)
	}
	r, _ := NewReader(bytes.NewReader(data), int64(len(data)), "t")
	if r.Header.Hostname != "h" || r.Header.BootWall != header.BootWall || r.Header.RstReasons[11] != "TCP_ABORT_ON_CLOSE" || r.Header.Format != Version {
		t.Errorf("header %+v", r.Header)
	}
}

// Cut anywhere: everything in the complete blocks before the cut reads back,
// with a warning naming the offset when the cut is inside a block.
func TestTruncationEverywhere(t *testing.T) {
	in := sampleEvents(40)
	data, offsets := writeCapture(t, in)
	hdrEnd := offsets[0]
	for cut := 0; cut <= len(data); cut++ {
		out, _, warnings, err := readAll(t, data[:cut])
		if cut < hdrEnd {
			if err == nil {
				t.Fatalf("cut %d inside the header: no error", cut)
			}
			continue
		}
		// Events in blocks that end at or before the cut.
		want := 0
		for b := 2; b < len(offsets); b++ {
			if offsets[b] <= cut {
				want = (b - 1) * 10
			}
		}
		if cut == len(data) {
			want = len(in)
		}
		if len(out) != want {
			t.Fatalf("cut at %d: %d events back, want %d", cut, len(out), want)
		}
		atBoundary := cut == len(data)
		for _, o := range offsets {
			atBoundary = atBoundary || o == cut
		}
		if atBoundary != (len(warnings) == 0) {
			t.Fatalf("cut at %d (boundary %v): warnings %v", cut, atBoundary, warnings)
		}
		if !atBoundary && !strings.Contains(warnings[0], fmt.Sprintf("offset %d", lastBefore(offsets, cut))) {
			t.Fatalf("cut at %d: warning %q does not name the block's offset", cut, warnings[0])
		}
	}
}

func lastBefore(offsets []int, cut int) int {
	last := 0
	for _, o := range offsets {
		if o < cut {
			last = o
		}
	}
	return last
}

// A flipped byte loses at most the block it is in, and says so.
func TestFlippedBytes(t *testing.T) {
	in := sampleEvents(40)
	data, offsets := writeCapture(t, in)
	for b := 2; b < len(offsets); b++ {
		for _, at := range []int{offsets[b], offsets[b] + 5, offsets[b] + 9, offsets[b] + 17, offsets[b] + 20, offsets[b] + 100} {
			bad := bytes.Clone(data)
			bad[at] ^= 0x40
			out, _, warnings, err := readAll(t, bad)
			if err != nil {
				t.Fatalf("flip at %d: %v", at, err)
			}
			if len(warnings) == 0 {
				t.Fatalf("flip at %d: no warning", at)
			}
			if len(out) != len(in)-10 {
				t.Fatalf("flip at %d (block %d): %d events back, want %d", at, b, len(out), len(in)-10)
			}
		}
	}
}

// One flipped byte in the header loses nothing the blocks hold: they are
// read, with a warning that the header may be wrong.
func TestDamagedHeaderSalvaged(t *testing.T) {
	in := sampleEvents(40)
	data, _ := writeCapture(t, in)
	for _, at := range []int{fileHdrSize + 2, fileHdrSize + 30} {
		bad := bytes.Clone(data)
		bad[at] ^= 0x01
		out, _, warnings, err := readAll(t, bad)
		if err != nil || len(out) != len(in) || len(warnings) == 0 || !strings.Contains(warnings[0], "header") {
			t.Errorf("flip at %d: %d of %d events, %v, %v", at, len(out), len(in), warnings, err)
		}
	}
	// A header length past the end: the blocks are found all the same.
	bad := bytes.Clone(data)
	le.PutUint32(bad[12:], 1<<30)
	if out, _, warnings, err := readAll(t, bad); err != nil || len(out) != len(in) || len(warnings) == 0 {
		t.Errorf("header length damaged: %d of %d events, %v, %v", len(out), len(in), warnings, err)
	}
}

func TestNotACapture(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":   nil,
		"text":    []byte("hello, this is not a capture\n"),
		"elf":     {0x7f, 'E', 'L', 'F', 2, 1, 1, 0},
		"short":   []byte("TCPST"),
		"newer":   append([]byte("TCPSTATE"), 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
		"badjson": func() []byte { b, _ := encodeHeader(&Header{}); b[fileHdrSize] = '!'; return b }(),
	} {
		_, err := NewReader(bytes.NewReader(data), int64(len(data)), name)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.HasPrefix(err.Error(), name+": ") {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
		if (name == "empty" || name == "text" || name == "elf" || name == "short") && !errors.Is(err, ErrNotCapture) {
			t.Errorf("%s: %v, want ErrNotCapture", name, err)
		}
	}
}

func TestRotationAndMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.tcpstate")
	w, err := Create(path, header, Options{BlockSize: 10 * EventSize, MaxSize: 4 * 10 * EventSize, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	// A walk of two blocks, copied from each file to the next.
	walk := make([]tracer.Socket, socketsPerBlock+1)
	for i := range walk {
		walk[i] = tracer.Socket{Cookie: uint64(9 + i), State: tracer.Listen, Endpoints: tracer.Endpoints{Local: netip.MustParseAddrPort("0.0.0.0:80")}}
	}
	if err := w.Sockets(walk); err != nil {
		t.Fatal(err)
	}
	// 200 events in blocks of 10: the last block fills the current file
	// exactly; closing then must leave no empty file.
	evs := sampleEvents(200)
	for i := range evs {
		if err := w.Event(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	names, _ := filepath.Glob(path + "*")
	if len(names) != 3 {
		t.Fatalf("files %v, want the current one and 2 kept", names)
	}
	// More files were started than kept: the count says how many.
	if n := w.Rotations(); n < 3 {
		t.Errorf("%d rotations counted, for 200 events in files of 40", n)
	}
	for _, n := range names {
		fi, err := os.Stat(n)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v (%v), want 0600", n, fi.Mode().Perm(), err)
		}
		data, _ := os.ReadFile(n)
		evs, socks, warnings, err := readAll(t, data)
		if err != nil || len(warnings) > 0 {
			t.Errorf("%s: %v %v", n, err, warnings)
		}
		// Each file replays on its own: with the whole walk, and events.
		if len(socks) != 2 || len(socks[0])+len(socks[1]) != len(walk) || socks[0][0].Cookie != 9 ||
			socks[1][0].Cookie != 9+socketsPerBlock || len(evs) == 0 {
			t.Errorf("%s: %d events, walk of %d blocks", n, len(evs), len(socks))
		}
	}
}

// Rotation copies the walk from the file: a walk changed there is refused,
// not copied on.
func TestRotationRefusesAChangedWalk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c")
	w, err := Create(path, header, Options{BlockSize: 10 * EventSize, MaxSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Sockets([]tracer.Socket{{Cookie: 9, State: tracer.Listen}}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteAt([]byte{'X'}, w.walk[0].off+blkHdrSize+2)
	f.Close()
	evs := sampleEvents(10)
	for i := range evs {
		err = errors.Join(err, w.Event(&evs[i]))
	}
	if err == nil || !strings.Contains(err.Error(), "walk changed on disk") {
		t.Errorf("rotating after the walk changed: %v", err)
	}
	// The writer stops there: the new file has no walk.
	if err := w.Event(&evs[0]); err == nil {
		t.Error("an event written after the failed rotation")
	}
	w.Close()
}

// A file holds the whole walk: reaching MaxSize inside it does not rotate.
func TestNoRotationInsideTheWalk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c")
	w, err := Create(path, header, Options{MaxSize: 1, Keep: 3})
	if err != nil {
		t.Fatal(err)
	}
	walk := make([]tracer.Socket, 2*socketsPerBlock+1)
	for i := range walk {
		walk[i] = tracer.Socket{Cookie: uint64(i + 1), State: tracer.Listen}
	}
	if err := w.Sockets(walk); err != nil {
		t.Fatal(err)
	}
	evs := sampleEvents(1)
	if err := w.Event(&evs[0]); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	names, _ := filepath.Glob(path + "*")
	if len(names) != 2 {
		t.Fatalf("files %v, want the walk's and the event's", names)
	}
	for _, n := range names {
		data, _ := os.ReadFile(n)
		_, socks, warnings, err := readAll(t, data)
		got := 0
		for _, b := range socks {
			got += len(b)
		}
		if err != nil || len(warnings) > 0 || got != len(walk) {
			t.Errorf("%s: %d of %d walked sockets, %v %v", n, got, len(walk), warnings, err)
		}
	}
}

func TestFlightKeepsTheLatest(t *testing.T) {
	f := NewFlight(header, 3*flightBlockSize, 0)
	evs := sampleEvents(10 * flightBlockSize / EventSize)
	for i := range evs {
		_ = f.Event(&evs[i])
	}
	path := filepath.Join(t.TempDir(), "flight.tcpstate")
	if err := f.Dump(path, 1); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	out, _, warnings, err := readAll(t, data)
	if err != nil || len(warnings) > 0 {
		t.Fatal(err, warnings)
	}
	if len(out) == 0 || len(out)*EventSize > 4*flightBlockSize || out[len(out)-1] != evs[len(evs)-1] {
		t.Errorf("kept %d events, last %+v", len(out), out[len(out)-1])
	}
	if f.Dropped()+uint64(len(out)) != uint64(len(evs)) {
		t.Errorf("dropped %d + kept %d != %d", f.Dropped(), len(out), len(evs))
	}
	r, _ := NewReader(bytes.NewReader(data), int64(len(data)), "t")
	if r.Header.FlightStart != out[0].Time {
		t.Errorf("flight start %d, first event %d", r.Header.FlightStart, out[0].Time)
	}
}

// Each dump keeps the ones before it (path.1, path.2, up to keep): an
// incident's dump outlives the next SIGUSR1 and the exit's.
func TestFlightKeepsEarlierDumps(t *testing.T) {
	f := NewFlight(header, 1<<20, 0)
	path := filepath.Join(t.TempDir(), "flight.tcpstate")
	evs := sampleEvents(40)
	for d := range 4 {
		for i := range 10 {
			e := evs[d*10+i]
			if e.Type == tracer.EventLost {
				e.Type = tracer.EventState
			}
			e.Cookie = uint64(1000 * (d + 1)) // which dump's
			_ = f.Event(&e)
		}
		if err := f.Dump(path, 2); err != nil {
			t.Fatal(err)
		}
	}
	// The last dump holds all 40 events; path.1 the third's 30, path.2 the
	// second's 20; the first's is gone (keep 2).
	for name, want := range map[string]int{path: 40, path + ".1": 30, path + ".2": 20} {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		out, _, _, err := readAll(t, data)
		if err != nil || len(out) != want {
			t.Errorf("%s: %d events, want %d (%v)", filepath.Base(name), len(out), want, err)
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Errorf("%s.3 kept: keep is 2", path)
	}
}

func FuzzReader(f *testing.F) {
	data, _ := writeCapture(f, sampleEvents(25))
	f.Add(data)
	f.Add(data[:len(data)/2])
	f.Add([]byte("TCPSTATE"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data), int64(len(data)), "fuzz")
		if err != nil {
			return
		}
		for range 100000 {
			if _, err := r.Next(); err != nil {
				if err != io.EOF {
					t.Fatalf("Next: %v", err)
				}
				return
			}
		}
	})
}

func BenchmarkWrite(b *testing.B) {
	w, err := Create(filepath.Join(b.TempDir(), "c"), header, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	evs := sampleEvents(100)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := w.Event(&evs[i%len(evs)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkReplay(b *testing.B) {
	path := filepath.Join(b.TempDir(), "c")
	w, _ := Create(path, header, Options{})
	evs := sampleEvents(1000)
	for range 200 {
		for i := range evs {
			_ = w.Event(&evs[i])
		}
	}
	_ = w.Close()
	data, _ := os.ReadFile(path)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	n := 0
	for b.Loop() {
		r, err := NewReader(bytes.NewReader(data), int64(len(data)), "bench")
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := r.Next(); err != nil {
				break
			}
			n++
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
}

// A full disk stops the writer with ErrFull; what was written reads back.
func TestDiskFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c")
	w, err := Create(path, header, Options{BlockSize: 10 * EventSize})
	if err != nil {
		t.Fatal(err)
	}
	evs := sampleEvents(25)
	for i := range 20 {
		if err := w.Event(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skip(err)
	}
	good := w.f
	w.f = full // the disk fills up
	var werr error
	for i := 20; i < 25 && werr == nil; i++ {
		werr = w.Event(&evs[i])
	}
	if werr == nil {
		werr = w.Flush()
	}
	if !errors.Is(werr, ErrFull) || !strings.Contains(werr.Error(), "readable up to its last complete block") {
		t.Fatalf("write on a full disk: %v", werr)
	}
	if err := w.Event(&evs[0]); !errors.Is(err, ErrFull) {
		t.Errorf("the writer went on after a full disk: %v", err)
	}
	if w.Written() != 20 {
		t.Errorf("Written %d after a full disk, want the 20 that reached the file", w.Written())
	}
	good.Close()
	full.Close()
	data, _ := os.ReadFile(path)
	out, _, warnings, err := readAll(t, data)
	if err != nil || len(warnings) != 0 || len(out) != 20 {
		t.Errorf("after a full disk: %d events, %v %v", len(out), warnings, err)
	}
}

// A large walk is split into blocks the reader accepts.
func TestLargeWalk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c")
	w, err := Create(path, header, Options{})
	if err != nil {
		t.Fatal(err)
	}
	socks := make([]tracer.Socket, 2*socketsPerBlock+5)
	for i := range socks {
		socks[i] = tracer.Socket{Cookie: uint64(i + 1), State: tracer.TimeWait, Timewait: true,
			Endpoints: tracer.Endpoints{Local: netip.MustParseAddrPort("10.0.0.1:80"), Remote: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), uint16(i))}}
	}
	if err := w.Sockets(socks); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	data, _ := os.ReadFile(path)
	_, got, warnings, err := readAll(t, data)
	if err != nil || len(warnings) > 0 || len(got) != 3 {
		t.Fatalf("%d socket records, %v %v", len(got), warnings, err)
	}
	if n := len(got[0]) + len(got[1]) + len(got[2]); n != len(socks) || got[2][4].Cookie != uint64(len(socks)) {
		t.Errorf("%d sockets back of %d", n, len(socks))
	}
}

// A walk streamed a socket at a time (record) makes the same file as one
// given whole, a walk that found nothing included: one empty block.
func TestStreamedWalk(t *testing.T) {
	for _, n := range []int{0, 1, socketsPerBlock, 2*socketsPerBlock + 3} {
		socks := make([]tracer.Socket, n)
		for i := range socks {
			socks[i] = tracer.Socket{Cookie: uint64(i + 1), State: tracer.Established, Owner: tracer.Owner{Task: tracer.Task{PID: uint32(i)}},
				Endpoints: tracer.Endpoints{Local: netip.MustParseAddrPort("10.0.0.1:80"), Remote: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), uint16(i))}}
		}
		dir := t.TempDir()
		whole, err := Create(filepath.Join(dir, "whole"), header, Options{})
		if err != nil {
			t.Fatal(err)
		}
		streamed, err := Create(filepath.Join(dir, "streamed"), header, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := whole.Sockets(socks); err != nil {
			t.Fatal(err)
		}
		for i := range socks {
			if err := streamed.Socket(&socks[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := streamed.EndSockets(); err != nil {
			t.Fatal(err)
		}
		evs := sampleEvents(3)
		for _, w := range []*Writer{whole, streamed} {
			for i := range evs {
				if err := w.Event(&evs[i]); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
		}
		a, _ := os.ReadFile(filepath.Join(dir, "whole"))
		b, _ := os.ReadFile(filepath.Join(dir, "streamed"))
		if !bytes.Equal(a, b) {
			t.Errorf("%d sockets: the streamed walk's file differs from the whole one's (%d and %d bytes)", n, len(b), len(a))
		}
		_, got, warnings, err := readAll(t, b)
		total := 0
		for _, blk := range got {
			total += len(blk)
		}
		if err != nil || len(warnings) > 0 || total != n || len(got) != max(1, (n+socketsPerBlock-1)/socketsPerBlock) {
			t.Errorf("%d sockets: %d back in %d blocks, %v %v", n, total, len(got), warnings, err)
		}
	}
}

// A walk block's payload is json.Marshal's encoding of its records, byte for
// byte (the writer encodes into a buffer of its own with an Encoder: no
// trailing newline, HTML and U+2028 escaped as Marshal does).
func TestWalkBlockIsMarshal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c")
	w, err := Create(path, header, Options{})
	if err != nil {
		t.Fatal(err)
	}
	socks := []tracer.Socket{
		{Cookie: 1, State: tracer.Established, Owner: tracer.Owner{Task: tracer.Task{PID: 7, Comm: tracer.CommFrom("<a&b>\u2028\"")}}},
		{Cookie: 2, State: tracer.Listen, Endpoints: tracer.Endpoints{Family: tracer.IPv6, Local: netip.MustParseAddrPort("[::1]:80")}},
	}
	if err := w.Sockets(socks); err != nil {
		t.Fatal(err)
	}
	span := w.walk[0]
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	recs := []socketRecord{socketRecordOf(&socks[0]), socketRecordOf(&socks[1])}
	want, _ := json.Marshal(recs)
	if got := data[span.off+blkHdrSize : span.off+int64(span.n)]; !bytes.Equal(got, want) {
		t.Errorf("walk block:\n%s\nwant json.Marshal's:\n%s", got, want)
	}
}

// A namespace the walk found after the header was written is named in
// every file: in the first by a snapshot right after the walk (even when the
// walk alone filled the file), in every later one by its header.
func TestAddNamespacesAcrossRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c")
	// The walk alone (two blocks) is past MaxSize: the rotation is due at
	// the first block after it.
	w, err := Create(path, header, Options{BlockSize: 10 * EventSize, MaxSize: 8 * 10 * EventSize, Keep: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := range socketsPerBlock + 1 {
		if err := w.Socket(&tracer.Socket{Cookie: uint64(i + 1), State: tracer.Established, Endpoints: tracer.Endpoints{NetNS: 2}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.EndSockets(); err != nil {
		t.Fatal(err)
	}
	if err := w.AddNamespaces(5, []Namespace{{Inode: 2, Sysctls: map[string]string{"fin_timeout": "7"}}}); err != nil {
		t.Fatal(err)
	}
	evs := sampleEvents(30) // a rotation a block (each file starts with the walk): 3, the first file kept
	for i := range evs {
		if err := w.Event(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	names, _ := filepath.Glob(path + "*")
	if len(names) < 3 {
		t.Fatalf("files %v: want rotations", names)
	}
	for _, n := range names {
		rd, f, err := Open(n)
		if err != nil {
			t.Fatal(err)
		}
		named := false
		for _, ns := range rd.Header.Namespaces {
			named = named || ns.Inode == 2 && ns.Sysctls["fin_timeout"] == "7"
		}
		for {
			rec, err := rd.Next()
			if err != nil {
				break
			}
			if rec.Sysctls != nil {
				for _, ns := range rec.Sysctls.Namespaces {
					named = named || ns.Inode == 2 && ns.Sysctls["fin_timeout"] == "7"
				}
			}
		}
		f.Close()
		if !named {
			t.Errorf("%s: namespace 2's sysctls in neither its header nor a snapshot", n)
		}
	}
	if len(header.Namespaces) != 1 {
		t.Errorf("the caller's header changed: %+v", header.Namespaces)
	}
}

// A capture written by an earlier tcpstate (testdata/v1.tcpcap, committed)
// still reads, field by field: the sockets block's JSON names are the file
// format, not whatever the Go fields are called now.
func TestReadsV1Capture(t *testing.T) {
	r, f, err := Open("testdata/v1.tcpcap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if h := r.Header; h.Hostname != "testhost" || h.HZ != 250 || h.BootWall != 1_700_000_000_000_000_000 {
		t.Errorf("header %+v", h)
	}
	var socks []tracer.Socket
	var events []tracer.Event
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		socks = append(socks, rec.Sockets...)
		if rec.Event != nil {
			events = append(events, *rec.Event)
		}
	}
	want := []tracer.Socket{
		{Cookie: 7, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: netip.MustParseAddrPort("127.0.0.1:8080"), Remote: netip.MustParseAddrPort("127.0.0.1:40000")}, State: tracer.CloseWait, Since: 1_000_000_000,
			KeepaliveOn: true, SockIdle: 30 * time.Second, Inode: 123, UID: 1000,
			Owner: tracer.Owner{Task: tracer.Task{PID: 42, TID: 43, Comm: tracer.CommFrom("leaky")}, From: tracer.OwnerProc}, Scanned: 2_000_000_000},
		{Cookie: 8, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv6, Local: netip.MustParseAddrPort("[::1]:40001"), Remote: netip.MustParseAddrPort("[::1]:443")}, State: tracer.TimeWait, Timewait: true, Since: 1_500_000_000,
			ExpiresIn: 59 * time.Second, Scanned: 2_000_000_000},
	}
	if !reflect.DeepEqual(socks, want) {
		t.Errorf("sockets\n got %+v\nwant %+v", socks, want)
	}
	if len(events) != 1 || events[0].Cookie != 7 || events[0].Old != tracer.CloseWait || events[0].New != tracer.LastAck ||
		events[0].Owner.PID != 42 || events[0].Duration != 1100*time.Millisecond || !events[0].DurationMin || events[0].HasCPU {
		t.Errorf("events %+v", events)
	}
}

// As root, on a path anyone may have prepared: never write through a
// symbolic link, never over a device or a FIFO; say so in one line, and leave
// what is there untouched. The flight recorder's dump likewise.
func TestRefusesWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "passwd")
	if err := os.WriteFile(victim, []byte("root:x:0:0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "x")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{link, "is a symbolic link"},
		{"/dev/null", "not a regular file (a character device)"},
		{fifo, "not a regular file (a FIFO)"},
		{dir, "not a regular file (a directory)"},
	} {
		if _, err := Create(c.path, header, Options{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Create(%s): %v, want %q", c.path, err, c.want)
		}
		if err := CheckPath(c.path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CheckPath(%s): %v, want %q", c.path, err, c.want)
		}
		f := NewFlight(header, 1<<20, 0)
		ev := sampleEvents(1)[0]
		_ = f.Event(&ev)
		if err := f.Dump(c.path, 1); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Flight.Dump(%s): %v, want %q", c.path, err, c.want)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "root:x:0:0\n" {
		t.Errorf("the link's target was written: %q", b)
	}
	if fi, err := os.Lstat("/dev/null"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("/dev/null is no longer a device: %v %v", fi.Mode(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Errorf("left behind: %v", entries)
	}
	// A directory that takes no files is found out before anything runs.
	if os.Geteuid() != 0 {
		ro := filepath.Join(dir, "ro")
		_ = os.Mkdir(ro, 0o555)
		if err := CheckPath(filepath.Join(ro, "c")); err == nil {
			t.Error("CheckPath in a read-only directory: no error")
		}
	}
	if err := CheckPath(filepath.Join(dir, "no-such-dir", "c")); err == nil {
		t.Error("CheckPath in a missing directory: no error")
	}
}

// A file with something else in it is never written over (a mistyped name);
// an empty file or an earlier capture is.
func TestRefusesToWriteOverOtherFiles(t *testing.T) {
	dir := t.TempDir()
	notes := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notes, []byte("my notes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const want = "exists and is not a tcpstate capture: refusing to write over it"
	if _, err := Create(notes, header, Options{}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Create over a text file: %v, want %q", err, want)
	}
	if err := CheckPath(notes); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("CheckPath of a text file: %v, want %q", err, want)
	}
	if b, _ := os.ReadFile(notes); string(b) != "my notes\n" {
		t.Errorf("the text file was written: %q", b)
	}
	// Nor rotated away: path.1 ... path.keep are shifted, the last removed.
	capPath := filepath.Join(dir, "c.cap")
	if err := os.WriteFile(capPath+".2", []byte("PRECIOUS\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const rot = "c.cap.2 exists and is not a tcpstate capture: refusing to rotate it away"
	if err := CheckKept(capPath, 3); err == nil || !strings.Contains(err.Error(), rot) {
		t.Errorf("CheckKept: %v, want %q", err, rot)
	}
	if err := CheckKept(capPath, 1); err != nil {
		t.Errorf("CheckKept with keep 1 (c.cap.2 not touched): %v", err)
	}
	fl := NewFlight(header, 1<<20, 0)
	ev := sampleEvents(1)[0]
	_ = fl.Event(&ev)
	if err := fl.Dump(capPath, 3); err == nil || !strings.Contains(err.Error(), "refusing to rotate it away") {
		t.Errorf("Flight.Dump with c.cap.2 a text file: %v", err)
	}
	if b, _ := os.ReadFile(capPath + ".2"); string(b) != "PRECIOUS\n" {
		t.Errorf("the text file at c.cap.2 was rotated over: %q", b)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // empty, then an earlier capture
		w, err := Create(empty, header, Options{})
		if err != nil {
			t.Fatalf("Create over an empty file or a capture: %v", err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// A file padded with fake block headers, each claiming a long block: the
// reader gives up past a bounded amount of such reading, and keeps a bounded
// number of warnings. A FIFO is refused without blocking.
func TestCraftedFilesStayCheap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c")
	w, err := Create(path, header, Options{})
	if err != nil {
		t.Fatal(err)
	}
	evs := sampleEvents(3)
	for i := range evs {
		_ = w.Event(&evs[i])
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(path)
	for _, c := range []struct {
		name   string
		claims uint32 // the length each fake header claims
		want   string // in the last warning
	}{
		{"long claims", 4 << 20, "stopped there"},
		{"short claims", 64, "more such warnings"},
	} {
		data := slices.Clone(good)
		var fake [blkHdrSize]byte
		copy(fake[:], blockMagic)
		fake[4] = blockEvents
		le.PutUint32(fake[8:], c.claims)
		for len(data) < 8<<20 {
			data = append(data, fake[:]...)
		}
		r, err := NewReader(bytes.NewReader(data), int64(len(data)), "padded")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			rec, err := r.Next()
			if err != nil {
				break
			}
			if rec.Event != nil {
				n++
			}
		}
		ws := r.Warnings()
		if n != 3 || len(ws) > maxWarnings+1 || !strings.Contains(ws[len(ws)-1], c.want) {
			t.Errorf("%s: %d events, %d warnings, last %q", c.name, n, len(ws), ws[len(ws)-1])
		}
		if r.wasted > 4*int64(len(data))+1<<20+int64(c.claims) {
			t.Errorf("%s: read %d bytes of damaged blocks for a %d-byte file", c.name, r.wasted, len(data))
		}
	}

	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, _, err := Open(fifo); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotCapture) {
			t.Errorf("Open(FIFO): %v, want ErrNotCapture", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Open(FIFO) blocked")
	}
}
