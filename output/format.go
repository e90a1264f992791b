// SPDX-License-Identifier: Apache-2.0

// Package output renders tcpstate events as text or JSON lines. Renderers own
// their options and an io.Writer, and allocate nothing per event.
package output

import (
	"net/netip"
	"strconv"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/tracer"
)

// Renderer writes events. Output is buffered until Flush.
type Renderer interface {
	Render(e *tracer.Event) error
	Flush() error
}

// AppendDuration appends d with three significant digits in a unit a person
// reads at a glance, at most 6 bytes: 4.2us, 250us, 4.52ms, 45.2ms, 500ms,
// 1.52s, 60.0s, 12m05s, 3h20m, 4d07h.
func AppendDuration(b []byte, d time.Duration) []byte {
	switch {
	case d < 10*time.Microsecond:
		return append(strconv.AppendFloat(b, float64(d)/1e3, 'f', 1, 64), "us"...)
	case d < time.Millisecond:
		return append(strconv.AppendInt(b, int64(d/time.Microsecond), 10), "us"...)
	case d < 10*time.Millisecond:
		return append(strconv.AppendFloat(b, float64(d)/1e6, 'f', 2, 64), "ms"...)
	case d < 100*time.Millisecond:
		return append(strconv.AppendFloat(b, float64(d)/1e6, 'f', 1, 64), "ms"...)
	case d < time.Second:
		return append(strconv.AppendInt(b, int64(d/time.Millisecond), 10), "ms"...)
	case d < 10*time.Second:
		return append(strconv.AppendFloat(b, d.Seconds(), 'f', 2, 64), 's')
	case d < 100*time.Second:
		return append(strconv.AppendFloat(b, d.Seconds(), 'f', 1, 64), 's')
	case d < 100*time.Minute:
		s := int64(d / time.Second)
		return append(append2(append(strconv.AppendInt(b, s/60, 10), 'm'), s%60), 's')
	case d < 100*time.Hour:
		m := int64(d / time.Minute)
		return append(append2(append(strconv.AppendInt(b, m/60, 10), 'h'), m%60), 'm')
	default:
		h := int64(d / time.Hour)
		return append(append2(append(strconv.AppendInt(b, h/24, 10), 'd'), h%24), 'h')
	}
}

func append2(b []byte, v int64) []byte {
	if v < 10 {
		b = append(b, '0')
	}
	return strconv.AppendInt(b, v, 10)
}

// ErrnoName names an errno as in C (ECONNREFUSED), or "" for 0.
func ErrnoName(errno int32) string {
	if errno == 0 {
		return ""
	}
	if errno < 0 {
		errno = -errno
	}
	if name := unix.ErrnoName(syscall.Errno(errno)); name != "" {
		return name
	}
	return "errno " + strconv.Itoa(int(errno))
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string. Task names are bytes, not
// always UTF-8: invalid sequences become U+FFFD.
func appendJSONString(b []byte, s []byte) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// appendPrintable appends s with control characters and invalid UTF-8 shown
// as '?', so that a task name cannot move a terminal's cursor.
func appendPrintable(b []byte, s []byte) []byte {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1, r < 0x20, r == 0x7f, r >= 0x80 && r < 0xa0:
			b = append(b, '?')
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return b
}

// padRight appends s and spaces up to width runes.
func padRight(b []byte, s []byte, width int) []byte {
	b = append(b, s...)
	for n := utf8.RuneCount(s); n < width; n++ {
		b = append(b, ' ')
	}
	return b
}

// padLeft appends spaces, then s, to fill width runes.
func padLeft(b []byte, s []byte, width int) []byte {
	for n := utf8.RuneCount(s); n < width; n++ {
		b = append(b, ' ')
	}
	return append(b, s...)
}

// appendRstReason appends the kernel's name of a reset reason, or its number.
// The names may come from a capture's header, which anyone may have written:
// only the characters of a C identifier pass (safe in a terminal and in JSON).
func appendRstReason(b []byte, k *tracer.KernelInfo, code uint16) []byte {
	if name, ok := k.RstReasons[code]; ok {
		for _, c := range []byte(name) {
			if c != '_' && (c < '0' || c > '9') && (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') {
				c = '?'
			}
			b = append(b, c)
		}
		return b
	}
	return strconv.AppendUint(append(b, "reason "...), uint64(code), 10)
}

// column is one column of a text table: its header and width, negative to
// align right. A value longer than its column pushes the rest of the line,
// never cut (COMM aside: a task name is cut to its column).
type column struct {
	name  string
	width int
}

// header is the header line of a table.
func header(cols []column) string {
	r := row{cols: cols}
	for _, c := range cols {
		r.cell([]byte(c.name))
	}
	return string(endLine(r.b))
}

// row lays out one line of a table by its columns: each cell padded to its
// column's width, the last one not padded.
type row struct {
	b    []byte
	cols []column
	i    int
}

// cell appends the next column's value.
func (r *row) cell(v []byte) {
	if r.i > 0 {
		r.b = append(r.b, ' ')
	}
	c := r.cols[r.i]
	r.i++
	switch {
	case c.width < 0:
		r.b = padLeft(r.b, v, -c.width)
	case r.i == len(r.cols):
		r.b = append(r.b, v...)
	default:
		r.b = padRight(r.b, v, c.width)
	}
}

// endpoint appends the next column's address:port ([v6]:port).
func (r *row) endpoint(ap netip.AddrPort) {
	var b [64]byte
	r.cell(ap.AppendTo(b[:0]))
}

// owner appends the owner's columns, PID, TID when withTID, and COMM (the
// name cut to its column), each "-" when the owner is unknown; the PID of a
// process that closed the socket, and holds it no more, in parentheses.
func (r *row) owner(o *tracer.Owner, withTID, closed bool) {
	var num [24]byte
	var name [64]byte
	dash := []byte("-")
	pid, tid, comm := dash, dash, dash
	if o.Known() {
		pid = num[:0]
		if closed {
			pid = append(pid, '(')
		}
		pid = strconv.AppendUint(pid, uint64(o.PID), 10)
		if closed {
			pid = append(pid, ')')
		}
		tid = strconv.AppendUint(num[len(pid):len(pid)], uint64(o.TID), 10)
		comm = appendPrintable(name[:0], o.Comm.Bytes())
	}
	r.cell(pid)
	if withTID {
		r.cell(tid)
	}
	if w := r.cols[r.i].width; w > 0 {
		comm = truncRunes(comm, w)
	}
	r.cell(comm)
}

// appendCloseDetail appends why a connection closed: the reason, the kernel's
// reset reason when it sent one, and an errno worth naming (0: none).
func appendCloseDetail(b []byte, k *tracer.KernelInfo, reason tracer.Reason, rst uint16, errno int32) []byte {
	b = append(b, reason.String()...)
	if reason == tracer.ReasonRSTSent {
		b = append(b, ' ')
		b = appendRstReason(b, k, rst)
	}
	if errno != 0 && reason != tracer.ReasonRefused && reason != tracer.ReasonTimeout {
		b = append(b, ' ')
		b = append(b, ErrnoName(errno)...)
	}
	return b
}
