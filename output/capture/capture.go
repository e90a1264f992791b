// SPDX-License-Identifier: Apache-2.0

package capture

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

// Header describes a capture: where and how it was made, and what is needed to
// read its events (clock mapping, jiffies rate, reset reason names).
type Header struct {
	Format      int               `json:"format"`
	Tcpstate    string            `json:"tcpstate"`
	Hostname    string            `json:"hostname"`
	Kernel      string            `json:"kernel"`
	Arch        string            `json:"arch"`
	Started     time.Time         `json:"started"`
	BootWall    int64             `json:"boot_wall_ns"` // wall = BootWall + event time (CLOCK_BOOTTIME)
	HZ          uint32            `json:"hz"`
	RstReasons  map[uint16]string `json:"rst_reasons,omitempty"`
	Options     []string          `json:"options,omitempty"` // the command line that made it
	Namespaces  []Namespace       `json:"namespaces,omitempty"`
	FlightStart uint64            `json:"flight_start,omitempty"` // flight recorder: events before this were dropped
	// KernelWarnings: what the kernel that made the capture could not do
	// (tcpstate check), one sentence each, so that a reader knows what the
	// capture cannot contain.
	KernelWarnings []string `json:"kernel_warnings,omitempty"`
}

// Namespace is a network namespace's TCP sysctls at one time.
type Namespace struct {
	Inode   uint32            `json:"inode"`
	Sysctls map[string]string `json:"sysctls"`
}

// SysctlSnapshot is a sysctl block: every namespace's values at Time.
type SysctlSnapshot struct {
	Time       uint64      `json:"time"` // CLOCK_BOOTTIME ns
	Namespaces []Namespace `json:"namespaces"`
}

// Clock maps the capture's event times to wall-clock time.
func (h *Header) Clock() tracer.Clock { return tracer.Clock{BootWall: h.BootWall} }

// KernelInfo is what reading events needs of the kernel that made them.
func (h *Header) KernelInfo() tracer.KernelInfo {
	return tracer.KernelInfo{HZ: h.HZ, RstReasons: h.RstReasons}
}

func encodeHeader(h *Header) ([]byte, error) {
	h.Format = Version
	js, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encoding capture header: %w", err)
	}
	b := make([]byte, fileHdrSize, fileHdrSize+len(js))
	copy(b, fileMagic)
	le.PutUint16(b[8:], Version)
	le.PutUint32(b[12:], uint32(len(js)))
	le.PutUint32(b[16:], crc32.Checksum(js, castagnoli))
	return append(b, js...), nil
}

// Record is one thing read from a capture.
type Record struct {
	Event   *tracer.Event // reused by the next Next
	Sockets []tracer.Socket
	Sysctls *SysctlSnapshot
}

// Reader reads a capture. Damage never stops it: a corrupted block is skipped,
// a truncated end stops it; both are reported by Warnings.
type Reader struct {
	ra       io.ReaderAt
	size     int64
	r        *bufio.Reader
	Header   Header
	off      int64 // file offset of the next block
	block    []byte
	blkType  uint8
	pos      int // next record in an events block
	ev       tracer.Event
	warnings []string
	more     int   // warnings beyond maxWarnings, counted only
	wasted   int64 // bytes read for blocks that proved damaged
}

// maxWarnings bounds the warnings kept about one file; the rest are counted.
const maxWarnings = 20

// NewReader reads the header of a capture of size bytes. name appears in
// messages.
func NewReader(ra io.ReaderAt, size int64, name string) (*Reader, error) {
	rd := &Reader{ra: ra, size: size}
	rd.seek(0)
	var fh [fileHdrSize]byte
	n, err := io.ReadFull(rd.r, fh[:])
	if n < len(fileMagic) || string(fh[:8]) != fileMagic {
		return nil, fmt.Errorf("%s: %w (no TCPSTATE signature)", name, ErrNotCapture)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: header cut short at byte %d", name, n)
	}
	if v := le.Uint16(fh[8:]); v == 0 || v > Version {
		return nil, fmt.Errorf("%s: capture format %d, this tcpstate reads up to %d", name, v, Version)
	}
	hlen := le.Uint32(fh[12:])
	if hlen > maxBlock || int64(hlen) > size-fileHdrSize {
		// Salvage: the blocks carry their own checksums; read them from
		// the first one found.
		rd.warn("header length %d past the end of the file: header lost; the blocks are read from the first one found (times count from boot, host unknown)", hlen)
		if !rd.resyncQuiet(fileHdrSize - 1) {
			return nil, fmt.Errorf("%s: header length %d past the end of the file, and no block after it: corrupted or cut short", name, hlen)
		}
		return rd, nil
	}
	js := make([]byte, hlen)
	if _, err := io.ReadFull(rd.r, js); err != nil {
		return nil, fmt.Errorf("%s: header cut short", name)
	}
	if crc32.Checksum(js, castagnoli) != le.Uint32(fh[16:]) {
		// One flipped byte must not lose a file whose blocks are intact:
		// read them, and say what may be wrong. (No block: nothing to save.)
		if !rd.resyncQuiet(int64(fileHdrSize) + int64(hlen) - 1) {
			return nil, fmt.Errorf("%s: header checksum mismatch, and no block after it: corrupted", name)
		}
		var h Header
		if json.Unmarshal(js, &h) == nil {
			rd.Header = h
			rd.warn("header checksum mismatch: the header may be damaged (times, host, kernel details); its blocks are read anyway")
		} else {
			rd.warn("header damaged (checksum mismatch, not readable): times count from boot, host unknown; its blocks are read anyway")
		}
		return rd, nil
	}
	if err := json.Unmarshal(js, &rd.Header); err != nil {
		return nil, fmt.Errorf("%s: header: %v", name, err)
	}
	rd.off = int64(fileHdrSize) + int64(hlen)
	return rd, nil
}

// Open opens a capture file.
func Open(path string) (*Reader, *os.File, error) {
	// O_NONBLOCK: a FIFO must not block the open (it is refused below).
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w (%s)", path, ErrNotCapture, fileKind(fi.Mode()))
	}
	r, err := NewReader(f, fi.Size(), path)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return r, f, nil
}

// seek continues reading at off, reusing the buffer.
func (r *Reader) seek(off int64) {
	r.off = off
	sec := io.NewSectionReader(r.ra, off, max(r.size-off, 0))
	if r.r == nil {
		r.r = bufio.NewReaderSize(sec, 256<<10)
	} else {
		r.r.Reset(sec)
	}
}

// Warnings lists the damage met so far, one sentence each.
func (r *Reader) Warnings() []string {
	if r.more > 0 {
		return append(r.warnings[:len(r.warnings):len(r.warnings)], fmt.Sprintf("and %d more such warnings", r.more))
	}
	return r.warnings
}

func (r *Reader) warn(format string, args ...any) {
	if len(r.warnings) >= maxWarnings {
		r.more++
		return
	}
	r.warnings = append(r.warnings, fmt.Sprintf(format, args...))
}

// Next returns the next record, or io.EOF at the end.
func (r *Reader) Next() (Record, error) {
	for {
		if r.blkType == blockEvents && r.pos+EventSize <= len(r.block) {
			decodeEvent(r.block[r.pos:r.pos+EventSize], &r.ev)
			r.pos += EventSize
			return Record{Event: &r.ev}, nil
		}
		if err := r.nextBlock(); err != nil {
			return Record{}, err
		}
		switch r.blkType {
		case blockSockets:
			var recs []socketRecord
			if err := json.Unmarshal(r.block, &recs); err != nil {
				r.warn("sockets block at offset %d: %v; skipped", r.off, err)
				continue
			}
			socks := make([]tracer.Socket, len(recs))
			for i := range recs {
				socks[i] = recs[i].socket()
			}
			return Record{Sockets: socks}, nil
		case blockSysctls:
			var s SysctlSnapshot
			if err := json.Unmarshal(r.block, &s); err != nil {
				r.warn("sysctl block at offset %d: %v; skipped", r.off, err)
				continue
			}
			return Record{Sysctls: &s}, nil
		}
	}
}

// nextBlock reads the next block whose checksum holds, skipping damaged and
// unknown ones; io.EOF at a clean end or a truncated last block.
func (r *Reader) nextBlock() error {
	for {
		r.blkType, r.pos = 0, 0
		start := r.off
		var h [blkHdrSize]byte
		n, err := io.ReadFull(r.r, h[:])
		r.off += int64(n)
		if err == io.EOF {
			return io.EOF
		}
		if err != nil {
			r.warn("truncated at offset %d: a block header cut short; read up to there", start)
			return io.EOF
		}
		if string(h[0:4]) != blockMagic {
			if !r.resync(start) {
				return io.EOF
			}
			continue
		}
		length := le.Uint32(h[8:])
		if int64(length) > maxBlock || start+blkHdrSize+int64(length) > r.size {
			if start+blkHdrSize+int64(length) > r.size && int64(length) <= maxBlock && string(h[0:4]) == blockMagic {
				// Either the last block was cut short, or a damaged length
				// points past the end: look for a later block first.
				if !r.resyncQuiet(start) {
					r.warn("truncated at offset %d: the last block is incomplete (%d of %d bytes); read up to there", start, r.size-start-blkHdrSize, length)
					return io.EOF
				}
				r.warn("block at offset %d: length %d points past a later block: damaged, skipped", start, length)
				continue
			}
			r.warn("block at offset %d: length %d: corrupted", start, length)
			if !r.resync(start) {
				return io.EOF
			}
			continue
		}
		if cap(r.block) < int(length) {
			r.block = make([]byte, length)
		}
		r.block = r.block[:length]
		n, err = io.ReadFull(r.r, r.block)
		r.off += int64(n)
		if err != nil {
			r.warn("truncated at offset %d: the last block is incomplete (%d of %d bytes); read up to there", start, n, length)
			return io.EOF
		}
		if !blockCRCOK(h[:], r.block) {
			// The length may be the damaged part: look again from just after
			// this block's start rather than trusting it. A file made of
			// fake block headers would have every one read whole: past a few
			// times the file's size of such reading, give up on the rest.
			r.warn("block at offset %d: checksum mismatch: skipped", start)
			if r.wasted += int64(length); r.wasted > 4*r.size+1<<20 {
				r.warn("damaged beyond repair from offset %d (fake block headers?): stopped there", start)
				return io.EOF
			}
			if !r.resyncQuiet(start) {
				return io.EOF
			}
			continue
		}
		typ := h[4]
		if typ == blockEvents && length%EventSize != 0 {
			r.warn("events block at offset %d: %d bytes is not a whole number of events: skipped", start, length)
			continue
		}
		if typ != blockEvents && typ != blockSockets && typ != blockSysctls {
			continue // a newer writer's record type
		}
		r.blkType = typ
		return nil
	}
}

// resync looks for the next block signature after a damaged block that
// starts at start, and says what it skipped.
func (r *Reader) resync(start int64) bool {
	if !r.resyncQuiet(start) {
		r.warn("damaged data from offset %d to the end (%d bytes): skipped", start, r.size-start)
		return false
	}
	r.warn("damaged data at offset %d (%d bytes): skipped to the next block", start, r.off-start)
	return true
}

// resyncQuiet moves to the first block signature after start; false at the end.
func (r *Reader) resyncQuiet(start int64) bool {
	r.seek(start + 1)
	for {
		b, err := r.r.Peek(4)
		if err != nil {
			r.seek(r.size)
			return false
		}
		if string(b) == blockMagic {
			return true
		}
		if i := bytes.IndexByte(b[1:], blockMagic[0]); i >= 0 {
			_, _ = r.r.Discard(i + 1)
			r.off += int64(i + 1)
		} else {
			_, _ = r.r.Discard(4)
			r.off += 4
		}
	}
}

// ErrFull is returned when the disk is full: the file stays readable up to
// its last complete block.
var ErrFull = errors.New("disk full")

// IsCapture reports whether the file at path begins as a capture does (its
// signature): a file not to write over with anything else.
func IsCapture(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, len(fileMagic))
	n, _ := io.ReadFull(f, b)
	return n == len(fileMagic) && string(b) == fileMagic
}
