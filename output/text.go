// SPDX-License-Identifier: Apache-2.0

package output

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

// TextOptions configure the text renderer.
type TextOptions struct {
	// Wide adds the local address, microseconds, thread, owner source, the task
	// on the CPU, cookie and network namespace. The default fits 80 columns for
	// IPv4 peers.
	Wide     bool
	NoHeader bool
	// Location of the time of day; nil for the local time zone.
	Location *time.Location
	Clock    tracer.Clock
	Kernel   tracer.KernelInfo // names reset reasons
	// Diag receives lost-event reports (stderr); nil drops them.
	Diag io.Writer
	// Attribute fills --wide's CONTAINER column; nil: "-".
	Attribute Attribute
	// NetNSName names --wide's NETNS by inode ("": the inode; nil: always
	// the inode).
	NetNSName func(inode uint32) string
}

// Text renders one aligned line per event.
type Text struct {
	opts   TextOptions
	w      *bufio.Writer
	buf    []byte
	header bool
	stamp  stamper
}

// NewText returns a text renderer writing to w.
func NewText(w io.Writer, opts TextOptions) *Text {
	if opts.Location == nil {
		opts.Location = time.Local
	}
	stamp := stamper{layout: "15:04:05"}
	if opts.Wide {
		stamp.digits = 6
	}
	return &Text{opts: opts, w: bufio.NewWriterSize(w, 64<<10), buf: make([]byte, 0, 256), header: !opts.NoHeader, stamp: stamp}
}

// The columns of trace's text output; --wide has more.
var (
	narrowColumns = []column{{"TIME", 8}, {"PID", -6}, {"COMM", 8}, {"LPORT", -5}, {"REMOTE", 15}, {"DUR", -6}, {"TRANSITION", 0}}
	wideColumns   = []column{{"TIME", 15}, {"PID", -6}, {"TID", -7}, {"COMM", 15}, {"LOCAL", 21}, {"REMOTE", 21}, {"DUR", -6},
		{"TRANSITION", 25}, {"OWNER-FROM", 10}, {"CPU-PID", -7}, {"CPU-COMM", 15}, {"COOKIE", 16}, {"CONTAINER", 12}, {"NETNS", 10}, {"NOTE", 0}}
)

// Render writes e.
func (t *Text) Render(e *tracer.Event) error {
	if e.Type == tracer.EventLost {
		if t.opts.Diag != nil {
			// Keep order with what was printed before the loss.
			if err := t.w.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(t.opts.Diag, "tcpstate: %d events lost (ring buffer full); raise --ringbuf-size or filter more\n", e.Lost)
		}
		return nil
	}
	cols := t.eventColumns()
	if err := t.writeHeader(cols); err != nil {
		return err
	}
	r := row{b: t.buf[:0], cols: cols}
	var num, cell [64]byte
	wall := t.opts.Clock.Wall(e.Time).In(t.opts.Location)
	r.cell(t.stamp.append(cell[:0], wall))
	r.owner(&e.Owner, t.opts.Wide, false)
	if t.opts.Wide {
		r.endpoint(e.Local)
	} else {
		r.cell(strconv.AppendUint(num[:0], uint64(e.Local.Port()), 10))
	}
	r.endpoint(e.Remote)
	switch {
	case e.HasDuration && e.DurationMin:
		r.cell(AppendDuration(append(num[:0], '>'), e.Duration))
	case e.HasDuration:
		r.cell(AppendDuration(num[:0], e.Duration))
	default:
		r.cell([]byte("-"))
	}
	tr := cell[:0]
	switch e.Type {
	case tracer.EventLinger:
		tr = append(tr, e.New.String()...)
		tr = append(tr, " (lingering)"...)
	case tracer.EventReset:
		tr = append(tr, "RST sent"...)
	case tracer.EventKeepalive:
		if finWait2Timer(e) {
			tr = append(tr, "fin_wait2 timer armed"...)
			break
		}
		tr = append(tr, "keepalive "...)
		tr = append(tr, e.Keepalive.Event.String()...)
		if k := &e.Keepalive; k.Event == tracer.KeepaliveProbe {
			tr = append(tr, ' ')
			tr = strconv.AppendUint(tr, uint64(k.Probes), 10)
			tr = append(tr, '/')
			tr = strconv.AppendUint(tr, uint64(k.Count), 10)
		}
	default:
		tr = append(tr, e.Old.String()...)
		tr = append(tr, " -> "...)
		tr = append(tr, e.New.String()...)
	}
	var noteBuf [64]byte
	note := t.note(noteBuf[:0], e)
	if !t.opts.Wide {
		if len(note) > 0 {
			tr = append(append(append(tr, " ("...), note...), ')')
		}
		r.cell(tr)
	} else {
		r.cell(tr)
		r.cell([]byte(e.Owner.From.String()))
		var name [64]byte
		if e.OnCPU.Comm[0] == 0 {
			// (not known: an event user space made, or a transition
			// found after it happened)
			r.cell([]byte("-"))
			r.cell([]byte("-"))
		} else {
			r.cell(strconv.AppendUint(num[:0], uint64(e.OnCPU.PID), 10))
			r.cell(appendPrintable(name[:0], e.OnCPU.Comm.Bytes()))
		}
		r.cell(strconv.AppendUint(num[:0], e.Cookie, 10))
		r.cell(appendPlaceText(name[:0], t.opts.Attribute.place(&e.Owner)))
		// (without NOTE, NETNS ends the line: not padded, a name being
		// shorter than its column)
		r.cell(AppendNetNS(name[:0], t.opts.NetNSName, e.NetNS))
		if len(note) > 0 {
			r.cell(note)
		}
	}
	t.buf = endLine(r.b)
	_, err := t.w.Write(t.buf)
	return err
}

// Flush writes what is buffered.
func (t *Text) Flush() error { return t.w.Flush() }

// Begin writes the header now, not with the first line: a live trace shows
// it is running before anything happens. conns: the header of RenderConn's
// lines.
func (t *Text) Begin(conns bool) error {
	cols := t.eventColumns()
	if conns {
		cols = connColumns
	}
	if err := t.writeHeader(cols); err != nil {
		return err
	}
	return t.w.Flush()
}

// eventColumns are the columns of Render's lines.
func (t *Text) eventColumns() []column {
	if t.opts.Wide {
		return wideColumns
	}
	return narrowColumns
}

// writeHeader writes the header of cols, unless written already or not
// wanted (NoHeader).
func (t *Text) writeHeader(cols []column) error {
	if !t.header {
		return nil
	}
	t.header = false
	_, err := t.w.WriteString(header(cols))
	return err
}

// truncRunes returns the first n runes of s.
func truncRunes(s []byte, n int) []byte {
	for i := range string(s) {
		if n == 0 {
			return s[:i]
		}
		n--
	}
	return s
}

// note is what the text adds after a transition: why it closed, that it lives
// in a timewait socket.
func (t *Text) note(b []byte, e *tracer.Event) []byte {
	switch {
	case e.Type == tracer.EventKeepalive:
		return appendKeepaliveNote(b, e)
	case e.Type == tracer.EventReset:
		return appendRstReason(b, &t.opts.Kernel, e.RstReason)
	case e.New == tracer.Close && e.Reason != tracer.ReasonNone:
		b = appendCloseDetail(b, &t.opts.Kernel, e.Reason, e.RstReason, e.SkErr)
	case e.New == tracer.Close && e.SkErr != 0:
		b = append(b, ErrnoName(e.SkErr)...)
	case e.Timewait:
		b = append(b, "timewait"...)
		if e.ExpiresIn > 0 {
			b = append(b, ", ends in "...)
			b = AppendDuration(b, e.ExpiresIn)
		}
		if e.Unseen {
			b = append(b, "; steps between unseen"...)
		}
	}
	return b
}

// finWait2Timer: the keepalive timer armed in FIN_WAIT2 is the FIN_WAIT2
// timer (tcp_fin_timeout), whatever SO_KEEPALIVE says.
func finWait2Timer(e *tracer.Event) bool {
	return e.Keepalive.Event == tracer.KeepaliveArmed && e.New == tracer.FinWait2
}

// appendKeepaliveNote appends when an armed timer fires and the effective
// settings with their source: "in 1.00s; idle 1.00s sysctl, intvl 1.00s socket, count 3 socket".
func appendKeepaliveNote(b []byte, e *tracer.Event) []byte {
	k := &e.Keepalive
	if finWait2Timer(e) {
		return AppendDuration(append(b, "in "...), e.ExpiresIn)
	}
	if k.Event == tracer.KeepaliveTimeout {
		b = append(b, "RST, "...)
		b = append(b, ErrnoName(e.SkErr)...)
		b = append(b, "; "...)
	}
	if k.Event == tracer.KeepaliveArmed {
		b = append(b, "in "...)
		b = AppendDuration(b, e.ExpiresIn)
		b = append(b, "; "...)
	}
	if !k.On {
		b = append(b, "SO_KEEPALIVE off; "...)
	}
	b = append(b, "idle "...)
	b = AppendDuration(b, k.Idle)
	b = append(b, ' ')
	b = append(b, tracer.Source(k.IdleFromSocket)...)
	b = append(b, ", intvl "...)
	b = AppendDuration(b, k.Intvl)
	b = append(b, ' ')
	b = append(b, tracer.Source(k.IntvlFromSocket)...)
	b = append(b, ", count "...)
	b = strconv.AppendUint(b, uint64(k.Count), 10)
	b = append(b, ' ')
	return append(b, tracer.Source(k.CountFromSocket)...)
}
