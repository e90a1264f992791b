// SPDX-License-Identifier: Apache-2.0

package capture

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

// Flight is a flight recorder: it keeps the most recent events in memory,
// at most MaxSize bytes and MaxAge of event time, and writes them out as a
// capture on demand (SIGUSR1, exit). It is a tracer.Sink.
type Flight struct {
	header  Header
	maxSize int
	maxAge  time.Duration
	blocks  []flightBlock
	size    int
	cur     []byte
	count   uint32
	last    uint64 // newest event time
	socks   []tracer.Socket
	dropped uint64 // events dropped to stay within bounds
}

type flightBlock struct {
	data  []byte // encoded events
	count uint32
	last  uint64 // newest event time in it
}

const flightBlockSize = 64 << 10

// NewFlight keeps up to maxSize bytes and maxAge (0: no age limit) of events.
func NewFlight(h Header, maxSize int, maxAge time.Duration) *Flight {
	return &Flight{header: h, maxSize: maxSize, maxAge: maxAge}
}

// SetSockets keeps the start-up walk, which every dump needs.
func (f *Flight) SetSockets(s []tracer.Socket) { f.socks = s }

// Event keeps e, dropping the oldest blocks beyond the bounds.
func (f *Flight) Event(e *tracer.Event) error {
	f.cur = appendEvent(f.cur, e)
	f.count++
	if e.Time > f.last {
		f.last = e.Time
	}
	if len(f.cur) >= flightBlockSize {
		f.seal()
	}
	return nil
}

func (f *Flight) seal() {
	if f.count == 0 {
		return
	}
	f.blocks = append(f.blocks, flightBlock{data: f.cur, count: f.count, last: f.last})
	f.size += len(f.cur)
	f.cur, f.count = make([]byte, 0, flightBlockSize+EventSize), 0
	f.trim()
}

func (f *Flight) trim() {
	for len(f.blocks) > 1 && (f.maxSize > 0 && f.size > f.maxSize ||
		f.maxAge > 0 && f.blocks[0].last+uint64(f.maxAge) < f.last) {
		f.size -= len(f.blocks[0].data)
		f.dropped += uint64(f.blocks[0].count)
		f.blocks[0] = flightBlock{}
		f.blocks = f.blocks[1:]
	}
}

// Idle drops what has aged out.
func (f *Flight) Idle() error {
	f.trim()
	return nil
}

// Dropped counts events aged or squeezed out of memory.
func (f *Flight) Dropped() uint64 { return f.dropped }

// Kept counts the events in memory: what a dump writes.
func (f *Flight) Kept() uint64 {
	n := uint64(f.count)
	for _, b := range f.blocks {
		n += uint64(b.count)
	}
	return n
}

// Dump writes what is kept to path (through a temporary file, renamed at
// the end, so a reader never sees half a dump).
//
// The dumps before it are kept: path becomes path.1, path.1 path.2, and so
// on, keep of them (at least 1), as --max-size rotates files. So an
// incident's dump outlives the next SIGUSR1 and the exit's.
func (f *Flight) Dump(path string, keep int) error {
	f.seal()
	h := f.header
	if len(f.blocks) > 0 && f.dropped > 0 {
		h.FlightStart = f.first()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tcpstate-flight-*")
	if err != nil {
		return fmt.Errorf("writing flight recorder: %w", err)
	}
	tmpPath := tmp.Name()
	tmp.Close()
	w, err := Create(tmpPath, h, Options{})
	if err != nil {
		os.Remove(tmpPath)
		return err
	}
	err = w.Sockets(f.socks)
	for _, b := range f.blocks {
		if err != nil {
			break
		}
		err = w.writeBlock(blockEvents, b.data, b.count)
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// Only ever over a regular file (or nothing): never over a
		// device, a FIFO, or a symbolic link planted there.
		err = regularOrAbsent(path)
	}
	if err == nil {
		err = shiftKept(path, keep)
	}
	if err == nil {
		err = os.Rename(tmpPath, path)
	}
	if err != nil {
		os.Remove(tmpPath)
		cause := err.Error()
		if errors.Is(err, ErrFull) {
			cause = "disk full"
		}
		return fmt.Errorf("flight recorder: %s not written (%s)", path, cause)
	}
	return nil
}

// first is the time of the oldest event kept.
func (f *Flight) first() uint64 {
	var e tracer.Event
	decodeEvent(f.blocks[0].data[:EventSize], &e)
	return e.Time
}
