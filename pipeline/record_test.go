// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/tracer"
)

// A walk streams into the capture after its header; a namespace the header
// does not name (made between the two) gets its sysctls right after it.
func TestWalkInto(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c")
	h := capture.Header{Tcpstate: "test", HZ: 250, Namespaces: []capture.Namespace{{Inode: 1, Sysctls: map[string]string{"fin_timeout": "60"}}}}
	w, err := capture.Create(path, h, capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	walked, nss, err := walkInto(w, h.Namespaces, func(each func(*tracer.Socket)) []tracer.NetNS {
		for i := range 2500 {
			each(&tracer.Socket{Cookie: uint64(i + 1), State: tracer.Established, Endpoints: tracer.Endpoints{NetNS: uint32(1 + i%2)}})
		}
		return []tracer.NetNS{{Inode: 1, Sysctls: map[string]string{"fin_timeout": "60"}}, {Inode: 2, Sysctls: map[string]string{"fin_timeout": "7"}}}
	})
	if err != nil || walked != 2500 || len(nss) != 2 {
		t.Fatalf("walked %d, %d namespaces, %v", walked, len(nss), err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rd, f, err := capture.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	socks, blocks := 0, 0
	var snaps []*capture.SysctlSnapshot
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Sockets != nil {
			if len(snaps) > 0 {
				t.Error("a walk block after the sysctl snapshot")
			}
			socks += len(rec.Sockets)
			blocks++
		}
		if rec.Sysctls != nil {
			snaps = append(snaps, rec.Sysctls)
		}
	}
	if socks != 2500 || blocks != 2 {
		t.Errorf("%d sockets in %d blocks, want 2500 in 2", socks, blocks)
	}
	if len(snaps) != 1 || len(snaps[0].Namespaces) != 1 || snaps[0].Namespaces[0].Inode != 2 || snaps[0].Namespaces[0].Sysctls["fin_timeout"] != "7" {
		t.Errorf("snapshots after the walk: %+v, want namespace 2's alone", snaps)
	}
}

// A capture with no event is dated by what it covers: from the recorder's
// start (its header) to its end (the last sysctl snapshot, which a
// recorder writes as it closes), not at boot.
func TestReportCoversEventlessCapture(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c")
	began := time.Now()
	rec, err := NewRecorder(RecordOptions{
		Path: path, SysctlInterval: time.Minute, Keep: 1,
		Header: capture.Header{Tcpstate: "test", HZ: 250, BootWall: tracer.NewClock().BootWall, Started: began.UTC()},
		Walk:   func(func(*tracer.Socket)) []tracer.NetNS { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	ended := time.Now()
	rep, clock, err := Report(context.Background(), []string{path}, &tracer.Filter{}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	start, end := clock.Wall(rep.Start), clock.Wall(rep.End)
	if rep.Events != 0 || start.Sub(began).Abs() > 10*time.Millisecond || end.Before(began.Add(time.Second)) || end.After(ended) {
		t.Errorf("%d events, %v to %v; want none, from %v to about a second later", rep.Events, start, end, began)
	}
}
