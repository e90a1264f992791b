// SPDX-License-Identifier: Apache-2.0

package output

import (
	"strconv"

	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// ConnRenderer writes finished connections (trace --timeline).
type ConnRenderer interface {
	RenderConn(c *timeline.Conn) error
	Flush() error
}

var connColumns = []column{{"END", 8}, {"PID", -6}, {"COMM", 8}, {"LOCAL", 21}, {"REMOTE", 21}, {"STATES", 0}}

// RenderConn writes one line per connection: its endpoints, owner and every
// state with the time spent in it, e.g.
// SYN_SENT 95us, ESTABLISHED 1.52s, FIN_WAIT1 41us, FIN_WAIT2/tw 2.10s, TIME_WAIT/tw 60.0s (timewait_expired).
// "/tw": lived in the timewait socket; ">": began before the tracer; "?": not seen to begin.
func (t *Text) RenderConn(c *timeline.Conn) error {
	if err := t.writeHeader(connColumns); err != nil {
		return err
	}
	r := row{b: t.buf[:0], cols: connColumns}
	var end [16]byte
	r.cell(t.opts.Clock.Wall(c.End()).In(t.opts.Location).AppendFormat(end[:0], "15:04:05"))
	r.owner(&c.Owner, false, false)
	ends := c.Endpoints()
	r.endpoint(ends.Local)
	r.endpoint(ends.Remote)
	b := append(r.b, ' ') // STATES, the last column, follows as it grows
	for i, s := range c.Spans() {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, s.State.String()...)
		if s.Timewait {
			b = append(b, "/tw"...)
		}
		b = append(b, ' ')
		switch {
		case !s.Known:
			b = append(b, '?')
		case s.Min:
			b = append(b, '>')
			b = AppendDuration(b, s.Duration)
		default:
			b = AppendDuration(b, s.Duration)
		}
	}
	if c.Reason != tracer.ReasonNone {
		b = append(appendCloseDetail(append(b, " ("...), &t.opts.Kernel, c.Reason, c.RstReason, 0), ')')
	}
	b = append(b, '\n')
	t.buf = b
	_, err := t.w.Write(b)
	return err
}

// RenderConn writes one "connection" object: endpoints, owner, reason and
// the list of states with their durations.
func (j *JSON) RenderConn(c *timeline.Conn) error {
	b := append(j.buf[:0], `{"time":"`...)
	b = j.stamp.append(b, j.opts.Clock.Wall(c.End()))
	b = append(b, `","type":"connection","cookie":`...)
	b = strconv.AppendUint(b, c.Cookie, 10)
	ends := c.Endpoints()
	b = appendEndpoints(b, ends.NetNS, ends.Family, ends.Local, ends.Remote)
	b = appendOwner(b, &c.Owner)
	b = appendPlaceJSON(b, j.opts.Attribute.place(&c.Owner))
	b = appendReasonJSON(b, &j.opts.Kernel, c.Reason, c.RstReason, c.Reason == tracer.ReasonRSTSent)
	b = appendErrJSON(b, c.SkErr)
	b = append(b, `,"states":[`...)
	for i, s := range c.Spans() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"state":"`...)
		b = append(b, s.State.String()...)
		b = append(b, '"')
		if s.Known {
			b = append(b, `,"duration_ns":`...)
			b = strconv.AppendInt(b, int64(s.Duration), 10)
		}
		if s.Min {
			b = append(b, `,"since_start":true`...)
		}
		if s.Timewait {
			b = append(b, `,"timewait":true`...)
		}
		b = append(b, '}')
	}
	b = append(b, ']')
	return j.line(b)
}
