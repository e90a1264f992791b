// SPDX-License-Identifier: Apache-2.0

package output

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
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
}

// Text renders one aligned line per event.
type Text struct {
	opts   TextOptions
	w      *bufio.Writer
	buf    []byte
	header bool
}

// NewText returns a text renderer writing to w.
func NewText(w io.Writer, opts TextOptions) *Text {
	if opts.Location == nil {
		opts.Location = time.Local
	}
	return &Text{opts: opts, w: bufio.NewWriterSize(w, 64<<10), buf: make([]byte, 0, 256), header: !opts.NoHeader}
}

// Column widths; a negative width aligns right. Values longer than their
// column push the rest of the line, never cut it (COMM aside).
var (
	narrowColumns = []column{{"TIME", 8}, {"PID", -6}, {"COMM", 8}, {"LPORT", -5}, {"REMOTE", 15}, {"DUR", -6}, {"TRANSITION", 0}}
	wideColumns   = []column{{"TIME", 15}, {"PID", -6}, {"TID", -7}, {"COMM", 15}, {"LOCAL", 21}, {"REMOTE", 21}, {"DUR", -6},
		{"TRANSITION", 25}, {"OWNER-FROM", 10}, {"CPU-PID", -7}, {"CPU-COMM", 15}, {"COOKIE", 16}, {"NETNS", 10}, {"NOTE", 0}}
)

type column struct {
	name  string
	width int
}

func header(cols []column) string {
	var b []byte
	for i, c := range cols {
		if i > 0 {
			b = append(b, ' ')
		}
		if c.width < 0 {
			b = padLeft(b, []byte(c.name), -c.width)
		} else {
			b = padRight(b, []byte(c.name), c.width)
		}
	}
	for len(b) > 0 && b[len(b)-1] == ' ' {
		b = b[:len(b)-1]
	}
	return string(append(b, '\n'))
}

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
	if t.header {
		t.header = false
		cols := narrowColumns
		if t.opts.Wide {
			cols = wideColumns
		}
		if _, err := t.w.WriteString(header(cols)); err != nil {
			return err
		}
	}
	b := t.buf[:0]
	wall := t.opts.Clock.Wall(e.Time).In(t.opts.Location)
	if t.opts.Wide {
		b = wall.AppendFormat(b, "15:04:05.000000")
	} else {
		b = wall.AppendFormat(b, "15:04:05")
	}
	b = append(b, ' ')

	var num [24]byte
	if t.opts.Wide {
		b = appendOwnerText(b, &e.Owner, ownerWide, false)
		b = append(b, ' ')
		b = appendEndpoint(b, e.Local, 21)
	} else {
		b = appendOwnerText(b, &e.Owner, ownerNarrow, false)
		b = append(b, ' ')
		b = padLeft(b, strconv.AppendUint(num[:0], uint64(e.Local.Port()), 10), 5)
	}
	b = append(b, ' ')
	if t.opts.Wide {
		b = appendEndpoint(b, e.Remote, 21)
	} else {
		b = appendEndpoint(b, e.Remote, 15)
	}
	b = append(b, ' ')
	switch {
	case e.HasDuration && e.DurationMin:
		b = padLeft(b, AppendDuration(append(num[:0], '>'), e.Duration), 6)
	case e.HasDuration:
		b = padLeft(b, AppendDuration(num[:0], e.Duration), 6)
	default:
		b = append(b, "     -"...)
	}
	b = append(b, ' ')
	start := len(b)
	switch e.Type {
	case tracer.EventLinger:
		b = append(b, e.New.String()...)
		b = append(b, " (lingering)"...)
	case tracer.EventReset:
		b = append(b, "RST sent"...)
	case tracer.EventKeepalive:
		if finWait2Timer(e) {
			b = append(b, "fin_wait2 timer armed"...)
			break
		}
		b = append(b, "keepalive "...)
		b = append(b, e.Keepalive.Event.String()...)
		if k := &e.Keepalive; k.Event == tracer.KeepaliveProbe {
			b = append(b, ' ')
			b = strconv.AppendUint(b, uint64(k.Probes), 10)
			b = append(b, '/')
			b = strconv.AppendUint(b, uint64(k.Count), 10)
		}
	default:
		b = append(b, e.Old.String()...)
		b = append(b, " -> "...)
		b = append(b, e.New.String()...)
	}
	var noteBuf [64]byte
	note := t.note(noteBuf[:0], e)
	if t.opts.Wide {
		for len(b)-start < 25 {
			b = append(b, ' ')
		}
		b = append(b, ' ')
		b = padRight(b, []byte(e.Owner.From.String()), 10)
		b = append(b, ' ')
		b = padLeft(b, strconv.AppendUint(num[:0], uint64(e.OnCPU.PID), 10), 7)
		b = append(b, ' ')
		var name [64]byte
		b = padRight(b, appendPrintable(name[:0], e.OnCPU.Comm.Bytes()), 15)
		b = append(b, ' ')
		b = padRight(b, strconv.AppendUint(num[:0], e.Cookie, 10), 16)
		b = append(b, ' ')
		b = padRight(b, strconv.AppendUint(num[:0], uint64(e.NetNS), 10), 10)
		if len(note) > 0 {
			b = append(b, ' ')
			b = append(b, note...)
		}
	} else if len(note) > 0 {
		b = append(b, " ("...)
		b = append(b, note...)
		b = append(b, ')')
	}
	b = append(b, '\n')
	t.buf = b
	_, err := t.w.Write(b)
	return err
}

// appendEndpoint appends addr:port ([v6]:port), padded to width.
func appendEndpoint(b []byte, ap netip.AddrPort, width int) []byte {
	start := len(b)
	b = ap.AppendTo(b)
	for len(b)-start < width {
		b = append(b, ' ')
	}
	return b
}

// Flush writes what is buffered.
func (t *Text) Flush() error { return t.w.Flush() }

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
		b = append(b, e.Reason.String()...)
		if e.Reason == tracer.ReasonRSTSent {
			b = append(b, ' ')
			b = appendRstReason(b, &t.opts.Kernel, e.RstReason)
		}
		if e.SkErr != 0 && e.Reason != tracer.ReasonRefused && e.Reason != tracer.ReasonTimeout {
			b = append(b, ' ')
			b = append(b, ErrnoName(e.SkErr)...)
		}
	case e.New == tracer.Close && e.SkErr != 0:
		b = append(b, ErrnoName(e.SkErr)...)
	case e.Timewait:
		b = append(b, "timewait"...)
		if e.ExpiresIn > 0 {
			b = append(b, ", ends in "...)
			b = AppendDuration(b, e.ExpiresIn)
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
