// SPDX-License-Identifier: Apache-2.0

package capture

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

// Options configure a Writer.
type Options struct {
	// BlockSize: events are written in blocks of about this many bytes
	// (default 64 KiB), and at least every FlushEvery (default 1 s), each
	// with one write: a killed recorder loses at most the block in progress.
	BlockSize  int
	FlushEvery time.Duration
	// MaxSize rotates the file when it reaches this many bytes (0: never):
	// FILE becomes FILE.1, FILE.1 becomes FILE.2, ... up to Keep old files.
	MaxSize int64
	Keep    int
}

// Writer appends to a capture file. It is a tracer.Sink.
type Writer struct {
	path   string
	opts   Options
	header Header
	f      *os.File
	size   int64
	block  []byte // events of the block in progress, encoded
	out    []byte // a block, header and payload, for its one write
	count  uint32
	opened time.Time // when the block in progress got its first event
	err    error     // sticky: a failed write stops the writer
	// rotateDue: the file reached MaxSize; the next block starts a new one
	// (not before: closing then leaves no empty file, and pushes no old one out).
	rotateDue bool
	// walk is where the walk's sockets blocks are in the file, to be
	// copied from it to the top of each new one: a host's walk is tens of
	// megabytes, not to be held for the recorder's whole life.
	walk      []walkSpan
	walkRecs  []socketRecord // the walk's block in progress (Socket)
	js        bytes.Buffer   // a JSON block's encoding
	written   uint64         // events in blocks that reached the file
	rotations int            // files started after the first
}

// WalkBytes is how much of each file the walk takes: every file starts
// with it.
func (w *Writer) WalkBytes() int64 {
	var n int64
	for _, s := range w.walk {
		n += int64(s.n)
	}
	return n
}

// Written counts the events in blocks written whole (a full disk stops
// short of what was given), in every file rotation started too.
func (w *Writer) Written() uint64 { return w.written }

// Rotations counts the files started after the first (MaxSize); only the
// newest Keep of them before the current one are kept.
func (w *Writer) Rotations() int { return w.rotations }

// walkSpan is one whole block (header and payload) at off in the file.
type walkSpan struct {
	off int64
	n   int
}

// Create makes (or truncates) a capture file, mode 0600: it holds addresses
// and process names.
func Create(path string, h Header, opts Options) (*Writer, error) {
	if opts.BlockSize <= 0 {
		opts.BlockSize = 64 << 10
	}
	if opts.FlushEvery <= 0 {
		opts.FlushEvery = time.Second
	}
	w := &Writer{path: path, opts: opts, header: h, block: make([]byte, 0, opts.BlockSize+EventSize)}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := openFile(w.path)
	if err != nil {
		return err
	}
	hdr, err := encodeHeader(&w.header)
	if err != nil {
		f.Close()
		return err
	}
	w.f, w.size = f, 0
	return w.write(hdr)
}

// write writes b whole or fails; a full disk is ErrFull.
func (w *Writer) write(b []byte) error {
	n, err := w.f.Write(b)
	w.size += int64(n)
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			err = fmt.Errorf("writing %s: %w (the file is readable up to its last complete block)", w.path, ErrFull)
		} else {
			err = fmt.Errorf("writing %s: %w", w.path, err)
		}
		w.err = err
	}
	return err
}

// Event adds e to the block in progress.
func (w *Writer) Event(e *tracer.Event) error {
	if w.err != nil {
		return w.err
	}
	if w.count == 0 {
		w.opened = time.Now()
	}
	w.block = appendEvent(w.block, e)
	w.count++
	if len(w.block) >= w.opts.BlockSize {
		return w.Flush()
	}
	return nil
}

// Idle writes the block in progress once it is FlushEvery old.
func (w *Writer) Idle() error {
	if w.err != nil {
		return w.err
	}
	if w.count > 0 && time.Since(w.opened) >= w.opts.FlushEvery {
		return w.Flush()
	}
	return nil
}

// Flush writes the block in progress.
func (w *Writer) Flush() error {
	if w.err != nil || w.count == 0 {
		return w.err
	}
	err := w.writeBlock(blockEvents, w.block, w.count)
	if err == nil {
		w.written += uint64(w.count)
	}
	w.block, w.count = w.block[:0], 0
	return err
}

func (w *Writer) writeBlock(typ uint8, payload []byte, count uint32) error {
	// A file holds the whole walk: one that reached MaxSize inside it
	// rotates at the next block after it.
	if w.rotateDue && typ != blockSockets {
		w.rotateDue = false
		if err := w.rotate(); err != nil {
			return err
		}
	}
	h := blockHeader(typ, payload, count)
	// One write per block: header and payload together.
	w.out = append(append(w.out[:0], h[:]...), payload...)
	if err := w.write(w.out); err != nil {
		return err
	}
	if w.opts.MaxSize > 0 && w.size >= w.opts.MaxSize {
		w.rotateDue = true
	}
	return nil
}

// rotate shifts FILE to FILE.1 (and so on) and starts a new FILE. A
// failure stops the writer: the new file would lack the walk, or there is
// none.
func (w *Writer) rotate() error {
	w.rotations++
	old := w.f
	err := w.rotateFrom(old)
	if w.f == old {
		w.f = nil // no new file
	}
	if cerr := old.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing %s: %w", w.path, cerr)
	}
	if err != nil && w.err == nil {
		w.err = err
	}
	return err
}

// rotateFrom renames the files and starts the new FILE with the walk,
// copied from old (the file that was FILE, still open).
func (w *Writer) rotateFrom(old *os.File) error {
	if err := shiftKept(w.path, w.opts.Keep); err != nil {
		return err
	}
	w.header.Started = time.Now().UTC()
	if err := w.open(); err != nil {
		return err
	}
	// Each file replays on its own: it names the owners the walk found.
	spans := w.walk
	w.walk = nil
	var b []byte
	for _, s := range spans {
		b = slices.Grow(b[:0], s.n)[:s.n]
		if _, err := old.ReadAt(b, s.off); err != nil {
			return fmt.Errorf("rotating %s: reading its walk back: %w", w.path, err)
		}
		if s.n < blkHdrSize || string(b[:4]) != blockMagic || b[4] != blockSockets ||
			int(le.Uint32(b[8:])) != s.n-blkHdrSize || !blockCRCOK(b[:blkHdrSize], b[blkHdrSize:]) {
			return fmt.Errorf("rotating %s: its walk changed on disk (checksum)", w.path)
		}
		if err := w.write(b); err != nil {
			return err
		}
		w.walk = append(w.walk, walkSpan{off: w.size - int64(s.n), n: s.n})
	}
	return nil
}

// shiftKept makes room at path: path becomes path.1, path.1 path.2, and so
// on, keep of them (at least 1); the oldest beyond goes. Nothing at path is
// nothing to shift. Renames never write through a link planted at a name.
func shiftKept(path string, keep int) error {
	keep = max(keep, 1)
	if err := CheckKept(path, keep); err != nil {
		return err
	}
	_ = os.Remove(fmt.Sprintf("%s.%d", path, keep))
	for i := keep - 1; i >= 1; i-- {
		_ = os.Rename(fmt.Sprintf("%s.%d", path, i), fmt.Sprintf("%s.%d", path, i+1))
	}
	if err := os.Rename(path, path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rotating %s: %w", path, err)
	}
	return nil
}

// CheckKept tells whether rotating at path, keeping keep files, would shift
// or remove only earlier captures (or empty files) at path.1 ... path.keep:
// a file of something else there is refused, not lost.
func CheckKept(path string, keep int) error {
	for i := 1; i <= max(keep, 1); i++ {
		name := fmt.Sprintf("%s.%d", path, i)
		if fi, err := os.Lstat(name); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 && !IsCapture(name) {
			return fmt.Errorf("%s exists and is not a tcpstate capture: refusing to rotate it away (remove it, or name another file)", name)
		}
	}
	return nil
}

// socketsPerBlock keeps a walk's blocks far below the reader's bound, and
// what encoding one takes at about 1 MB.
const socketsPerBlock = 2000

// Sockets writes the start-up walk, which replay needs to name owners.
func (w *Writer) Sockets(socks []tracer.Socket) error {
	for i := range socks {
		if err := w.Socket(&socks[i]); err != nil {
			return err
		}
	}
	return w.EndSockets()
}

// Socket adds one socket of the walk, as the walk reads it; EndSockets ends
// the walk. Streamed so, the walk holds one block's sockets at a time, not
// the host's.
func (w *Writer) Socket(s *tracer.Socket) error {
	if w.err != nil {
		return w.err
	}
	w.walkRecs = append(w.walkRecs, socketRecordOf(s))
	if len(w.walkRecs) < socketsPerBlock {
		return nil
	}
	return w.socketsBlock()
}

// EndSockets writes the walk's last block: at least one, for a walk that
// found nothing.
func (w *Writer) EndSockets() error {
	var err error
	if len(w.walkRecs) > 0 || len(w.walk) == 0 {
		err = w.socketsBlock()
	}
	w.walkRecs = nil
	// (grown for the walk's blocks; events' and sysctls' are smaller)
	w.out, w.js = nil, bytes.Buffer{}
	return err
}

func (w *Writer) socketsBlock() error {
	recs := w.walkRecs
	if recs == nil {
		recs = []socketRecord{} // "[]", not "null"
	}
	w.walkRecs = w.walkRecs[:0]
	if err := w.jsonBlock(blockSockets, recs, uint32(len(recs))); err != nil {
		return err
	}
	w.walk = append(w.walk, walkSpan{off: w.size - int64(len(w.out)), n: len(w.out)})
	return nil
}

// AddNamespaces names namespaces that the header does not (the walk found
// them after the header was written): in a sysctl snapshot at time, right
// after the walk and in the same file, and in the header of every file a
// rotation starts.
func (w *Writer) AddNamespaces(time uint64, nss []Namespace) error {
	w.header.Namespaces = append(slices.Clip(w.header.Namespaces), nss...)
	// Part of the walk: no rotation before it, as none inside the walk.
	due := w.rotateDue
	w.rotateDue = false
	err := w.Sysctls(SysctlSnapshot{Time: time, Namespaces: nss})
	w.rotateDue = w.rotateDue || due
	return err
}

// Sysctls writes a snapshot of the namespaces' sysctls.
func (w *Writer) Sysctls(s SysctlSnapshot) error {
	return w.jsonBlock(blockSysctls, s, uint32(len(s.Namespaces)))
}

func (w *Writer) jsonBlock(typ uint8, v any, count uint32) error {
	if err := w.Flush(); err != nil {
		return err
	}
	// Into one buffer, block after block: a host's walk is tens of
	// megabytes of JSON, garbage that raised the heap's peak by as much.
	w.js.Reset()
	if err := json.NewEncoder(&w.js).Encode(v); err != nil {
		return fmt.Errorf("encoding capture block: %w", err)
	}
	return w.writeBlock(typ, bytes.TrimSuffix(w.js.Bytes(), []byte("\n")), count)
}

// Close writes what is pending and closes the file.
func (w *Writer) Close() error {
	err := w.Flush()
	if w.f == nil {
		return err // a rotation failed to make the file
	}
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing %s: %w", w.path, cerr)
	}
	return err
}

// Size is the current file's size.
func (w *Writer) Size() int64 { return w.size }

// CheckPath tells whether a capture can be written at path, before anything
// is traced: the path is a regular file or nothing yet, and its directory
// takes new files. Nothing is left behind.
func CheckPath(path string) error {
	if err := regularOrAbsent(path); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tcpstate-check-*")
	if err != nil {
		return fmt.Errorf("cannot write a capture next to %s: %w", path, err)
	}
	tmp.Close()
	return os.Remove(tmp.Name())
}

// regularOrAbsent refuses a path that exists and is not a regular file: a
// symbolic link (anyone who can write the directory could point it at
// /etc/passwd), a device, a FIFO, a directory; or a file with something else
// in it than a capture (a mistyped name must not cost a file). An empty file
// or an earlier capture is written over.
func regularOrAbsent(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("capture %s: %w", path, err)
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("capture %s is a symbolic link: refusing to write through it (give the target itself)", path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("capture %s is not a regular file (%s): refusing to write over it", path, fileKind(fi.Mode()))
	case fi.Size() > 0 && !IsCapture(path):
		return fmt.Errorf("%s exists and is not a tcpstate capture: refusing to write over it (remove it, or name another file)", path)
	}
	return nil
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return m.Type().String()
}

// openFile creates path, or truncates it if it is a regular file, mode 0600
// (it holds addresses and process names). It never follows a final symbolic
// link, and opens nothing that is not a regular file (checked again on the
// open file: the path may change in between).
func openFile(path string) (*os.File, error) {
	if err := regularOrAbsent(path); err != nil {
		return nil, err
	}
	// (read too: rotation copies the walk from the file)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("capture %s is a symbolic link: refusing to write through it", path)
		}
		return nil, fmt.Errorf("creating capture: %w", err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("capture %s is not a regular file (%s): refusing to write over it", path, fileKind(fi.Mode()))
	}
	if err == nil {
		err = f.Truncate(0)
	}
	if err == nil {
		// An existing file keeps its mode with O_CREATE: enforce it.
		err = f.Chmod(0o600)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("creating capture: %w", err)
	}
	return f, nil
}
