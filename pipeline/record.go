// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/tracer"
)

// Recorder is the tracer's sink when recording: into a capture file, or into
// a flight recorder's memory written out on Dump and at Close. A file also
// gets the namespaces' TCP sysctls every SysctlInterval.
type Recorder struct {
	w        *capture.Writer
	flight   *capture.Flight
	path     string
	keep     int // flight: earlier dumps kept
	nss      []tracer.NetNS
	interval time.Duration
	last     time.Time
	failed   bool // the last dump at Close failed: nothing written
	dump     atomic.Bool
	stderr   io.Writer
}

// RecordOptions say where and how to record.
type RecordOptions struct {
	Path    string
	Header  capture.Header
	Sockets []tracer.Socket // the start-up walk (a flight recorder's, or with no Walk)
	NetNS   []tracer.NetNS  // whose sysctls to record (with Walk: those it returns)
	// Walk, for a file: the walk, streamed into the file (a host's walk
	// is never held whole there); the namespaces it returns are those whose
	// sysctls are recorded from then on.
	Walk           Walk
	SysctlInterval time.Duration
	MaxSize        int64 // file: rotate at this size (0: never)
	Keep           int   // rotated files kept; flight: earlier dumps kept
	// Flight: keep the latest FlightSize bytes (or FlightTime) of events in
	// memory instead of writing a file as they come.
	Flight     bool
	FlightSize int
	FlightTime time.Duration
	Stderr     io.Writer
}

// NewRecorder opens the capture (a file) or the flight recorder, with the
// walk's sockets in it.
func NewRecorder(o RecordOptions) (*Recorder, error) {
	r := &Recorder{path: o.Path, keep: o.Keep, nss: o.NetNS, interval: o.SysctlInterval, last: time.Now(), stderr: o.Stderr}
	if o.Flight || o.MaxSize > 0 {
		// (the files rotation shifts: not found out at the first, weeks later)
		if err := capture.CheckKept(o.Path, o.Keep); err != nil {
			return nil, err
		}
	}
	if o.Flight {
		// Found out now, not at the first dump, weeks later.
		if err := capture.CheckPath(o.Path); err != nil {
			return nil, err
		}
		r.flight = capture.NewFlight(o.Header, o.FlightSize, o.FlightTime)
		r.flight.SetSockets(o.Sockets)
		return r, nil
	}
	w, err := capture.Create(o.Path, o.Header, capture.Options{MaxSize: o.MaxSize, Keep: o.Keep})
	if err != nil {
		return nil, err
	}
	walked := len(o.Sockets)
	if o.Walk != nil {
		if walked, r.nss, err = walkInto(w, o.Header.Namespaces, o.Walk); err != nil {
			w.Close()
			return nil, err
		}
	} else if err := w.Sockets(o.Sockets); err != nil {
		w.Close()
		return nil, err
	}
	if walk := w.WalkBytes(); o.MaxSize > 0 && walk > o.MaxSize/2 && o.Stderr != nil {
		fmt.Fprintf(o.Stderr, "tcpstate: warning: the start-up walk (%d sockets) takes %.1f MB at the top of every file, more than half of --max-size: raise it\n",
			walked, float64(walk)/1e6)
	}
	r.w = w
	return r, nil
}

// A Walk walks the sockets into each as it reads them, and returns the
// namespaces it walked (tracer.Tracer.ScanEach).
type Walk func(each func(*tracer.Socket)) []tracer.NetNS

// walkInto streams walk into w's walk, and returns how many sockets it
// wrote and the namespaces walked. One that is not among the header's (new
// since the header was made) gets its sysctls, as the walk read them, in a
// snapshot right after the walk, and in the header of every later file
// (capture.Writer.AddNamespaces). A failed write stops the writing, not the
// walk (which cannot be stopped); its error is returned.
func walkInto(w *capture.Writer, header []capture.Namespace, walk Walk) (int, []tracer.NetNS, error) {
	walked := 0
	var err error
	nss := walk(func(s *tracer.Socket) {
		if err == nil {
			if err = w.Socket(s); err == nil {
				walked++
			}
		}
	})
	if err == nil {
		err = w.EndSockets()
	}
	if err != nil {
		return walked, nss, err
	}
	in := make(map[uint32]bool, len(header))
	for _, ns := range header {
		in[ns.Inode] = true
	}
	var added []capture.Namespace
	for _, ns := range nss {
		if !in[ns.Inode] {
			added = append(added, capture.Namespace{Inode: ns.Inode, Sysctls: ns.Sysctls})
		}
	}
	if len(added) > 0 {
		err = w.AddNamespaces(tracer.BootNow(), added)
	}
	return walked, nss, err
}

// Dump asks a flight recorder to write what it holds at the next Idle; safe
// from any goroutine (a signal handler's).
func (r *Recorder) Dump() { r.dump.Store(true) }

func (r *Recorder) sink() tracer.Sink {
	if r.flight != nil {
		return r.flight
	}
	return r.w
}

func (r *Recorder) Event(e *tracer.Event) error { return r.sink().Event(e) }

func (r *Recorder) Idle() error {
	if r.dump.Swap(false) && r.flight != nil {
		// A failed dump keeps what memory holds, and the recorder
		// running: the next SIGUSR1 (or the exit) tries again.
		if err := r.flight.Dump(r.path, r.keep); err != nil {
			fmt.Fprintf(r.stderr, "tcpstate: %v; the events stay in memory: kill -USR1 again once it can be written\n", err)
		} else {
			fmt.Fprintf(r.stderr, "tcpstate: flight recorder wrote %d events to %s\n", r.flight.Kept(), r.path)
		}
	}
	if r.w != nil && time.Since(r.last) >= r.interval {
		if err := r.sysctls(); err != nil {
			return err
		}
	}
	return r.sink().Idle()
}

// sysctls writes a snapshot of the namespaces' sysctls.
func (r *Recorder) sysctls() error {
	r.last = time.Now()
	snap := capture.SysctlSnapshot{Time: tracer.BootNow()}
	for _, ns := range r.nss {
		if vals, err := tracer.ReadSysctls(ns.Path); err == nil {
			snap.Namespaces = append(snap.Namespaces, capture.Namespace{Inode: ns.Inode, Sysctls: vals})
		}
	}
	return r.w.Sysctls(snap)
}

// Close writes what is pending: a flight recorder's memory, or the file's
// last block.
func (r *Recorder) Close() error {
	if r.flight != nil {
		if err := r.flight.Dump(r.path, r.keep); err != nil {
			r.failed = true
			return fmt.Errorf("%w: %d events lost at exit", err, r.flight.Kept())
		}
		if d := r.flight.Dropped(); d > 0 {
			fmt.Fprintf(r.stderr, "tcpstate: flight recorder kept the latest events; %d older ones left memory\n", d)
		}
		return nil
	}
	// A last snapshot: the file says when recording ended, events or not
	// (report dates a capture by it).
	err := r.sysctls()
	if cerr := r.w.Close(); err == nil {
		err = cerr
	}
	return err
}

// Rotations counts the files a file's rotation started (0 for a flight
// recorder).
func (r *Recorder) Rotations() int {
	if r.w == nil {
		return 0
	}
	return r.w.Rotations()
}

// Written says how many events the capture holds: all for a file, the
// latest for a flight recorder.
func (r *Recorder) Written() uint64 {
	if r.flight != nil {
		if r.failed {
			return 0
		}
		return r.flight.Kept()
	}
	return r.w.Written()
}
