// SPDX-License-Identifier: Apache-2.0

package output

import (
	"bufio"
	"io"
	"net/netip"
	"strconv"

	"github.com/tcpstate/tcpstate/tracer"
)

// JSONOptions configure the JSON lines renderer.
type JSONOptions struct {
	Clock  tracer.Clock
	Kernel tracer.KernelInfo // names reset reasons
	// Attribute adds where the owner runs (cgroup, container_id, pod_uid,
	// unit); nil: not shown.
	Attribute Attribute
}

// JSON renders one object per line. The fields are documented in README.md
// ("JSON output") and kept stable: add, never rename.
type JSON struct {
	opts      JSONOptions
	w         *bufio.Writer
	buf       []byte
	lostTotal uint64
	stamp     stamper
}

// NewJSON returns a JSON lines renderer writing to w.
func NewJSON(w io.Writer, opts JSONOptions) *JSON {
	return &JSON{opts: opts, w: bufio.NewWriterSize(w, 64<<10), buf: make([]byte, 0, 512), stamp: rfc3339Nano()}
}

// Render writes e as one line.
func (j *JSON) Render(e *tracer.Event) error {
	b := append(j.buf[:0], `{"time":"`...)
	b = j.stamp.append(b, j.opts.Clock.Wall(e.Time))
	b = append(b, `","type":`...)
	b = appendJSONString(b, []byte(e.Type.String()))
	if e.Type == tracer.EventLost {
		j.lostTotal += e.Lost
		b = append(b, `,"count":`...)
		b = strconv.AppendUint(b, e.Lost, 10)
		b = append(b, `,"total":`...)
		b = strconv.AppendUint(b, j.lostTotal, 10)
		return j.line(b)
	}
	b = append(b, `,"cookie":`...)
	b = strconv.AppendUint(b, e.Cookie, 10)
	b = appendEndpoints(b, e.NetNS, e.Family, e.Local, e.Remote)
	if e.Type == tracer.EventKeepalive {
		b = appendKeepaliveJSON(b, e)
	} else if e.Type == tracer.EventLinger {
		b = append(b, `,"state":"`...)
		b = append(b, e.New.String()...)
		b = append(b, `","age_ns":`...)
		b = strconv.AppendInt(b, int64(e.Duration), 10)
	} else {
		b = append(b, `,"old":"`...)
		b = append(b, e.Old.String()...)
		b = append(b, `","new":"`...)
		b = append(b, e.New.String()...)
		b = append(b, '"')
		if e.HasDuration {
			b = append(b, `,"duration_ns":`...)
			b = strconv.AppendInt(b, int64(e.Duration), 10)
		}
	}
	if e.DurationMin {
		b = append(b, `,"since_start":true`...)
	}
	if e.Unseen {
		b = append(b, `,"unseen":true`...)
	}
	if e.Timewait && e.Type != tracer.EventKeepalive {
		b = append(b, `,"timewait":true`...)
		if e.ExpiresIn > 0 && e.New != tracer.Close {
			b = append(b, `,"expires_in_ns":`...)
			b = strconv.AppendInt(b, int64(e.ExpiresIn), 10)
		}
	}
	b = appendReasonJSON(b, &j.opts.Kernel, e.Reason, e.RstReason, e.Reason == tracer.ReasonRSTSent || e.Type == tracer.EventReset ||
		e.Type == tracer.EventKeepalive && e.Keepalive.Event == tracer.KeepaliveTimeout)
	if e.Owner.Known() {
		b = appendOwner(b, &e.Owner)
		b = appendPlaceJSON(b, j.opts.Attribute.place(&e.Owner))
	}
	if e.Type != tracer.EventLinger && e.OnCPU.Comm[0] != 0 {
		b = append(b, `,"cpu_pid":`...)
		b = strconv.AppendUint(b, uint64(e.OnCPU.PID), 10)
		b = append(b, `,"cpu_comm":`...)
		b = appendJSONString(b, e.OnCPU.Comm.Bytes())
	}
	return j.line(appendErrJSON(b, e.SkErr))
}

// appendReasonJSON appends why a connection closed: "reason" when there is
// one, and with rst the kernel's "rst_reason".
func appendReasonJSON(b []byte, k *tracer.KernelInfo, reason tracer.Reason, rstReason uint16, rst bool) []byte {
	if reason != tracer.ReasonNone {
		b = append(b, `,"reason":"`...)
		b = append(b, reason.String()...)
		b = append(b, '"')
	}
	if rst {
		b = append(b, `,"rst_reason":`...)
		b = append(appendRstReason(append(b, '"'), k, rstReason), '"')
	}
	return b
}

// appendErrJSON appends the socket's error, as a number and by name.
func appendErrJSON(b []byte, skErr int32) []byte {
	if skErr == 0 {
		return b
	}
	b = append(b, `,"sk_err":`...)
	b = strconv.AppendInt(b, int64(skErr), 10)
	b = append(b, `,"error":"`...)
	b = append(b, ErrnoName(skErr)...)
	return append(b, '"')
}

func (j *JSON) line(b []byte) error {
	b = append(b, '}', '\n')
	j.buf = b
	_, err := j.w.Write(b)
	return err
}

// Flush writes what is buffered.
func (j *JSON) Flush() error { return j.w.Flush() }

// appendEndpoints appends the namespace, family, addresses and ports.
func appendEndpoints(b []byte, netns uint32, fam tracer.Family, local, remote netip.AddrPort) []byte {
	b = append(b, `,"netns":`...)
	b = strconv.AppendUint(b, uint64(netns), 10)
	b = append(b, `,"family":"`...)
	b = append(b, fam.String()...)
	b = append(b, `","saddr":"`...)
	b = local.Addr().AppendTo(b)
	b = append(b, `","sport":`...)
	b = strconv.AppendUint(b, uint64(local.Port()), 10)
	b = append(b, `,"daddr":"`...)
	b = remote.Addr().AppendTo(b)
	b = append(b, `","dport":`...)
	return strconv.AppendUint(b, uint64(remote.Port()), 10)
}

// appendOwner appends pid, tid, comm and owner_from; nothing when unknown.
func appendOwner(b []byte, owner *tracer.Owner) []byte {
	if !owner.Known() {
		return b
	}
	b = append(b, `,"pid":`...)
	b = strconv.AppendUint(b, uint64(owner.PID), 10)
	b = append(b, `,"tid":`...)
	b = strconv.AppendUint(b, uint64(owner.TID), 10)
	b = append(b, `,"comm":`...)
	b = appendJSONString(b, owner.Comm.Bytes())
	b = append(b, `,"owner_from":"`...)
	b = append(b, owner.From.String()...)
	return append(b, '"')
}

// appendKeepaliveJSON appends the fields of a keepalive event.
func appendKeepaliveJSON(b []byte, e *tracer.Event) []byte {
	k := &e.Keepalive
	b = append(b, `,"event":"`...)
	b = append(b, k.Event.String()...)
	b = append(b, `","state":"`...)
	b = append(b, e.New.String()...)
	b = append(b, `","keepalive":`...)
	b = strconv.AppendBool(b, k.On)
	if k.Event == tracer.KeepaliveProbe || k.Event == tracer.KeepaliveTimeout {
		b = append(b, `,"probe":`...)
		b = strconv.AppendUint(b, uint64(k.Probes), 10)
	}
	b = append(b, `,"idle_ns":`...)
	b = strconv.AppendInt(b, int64(k.Idle), 10)
	b = append(b, `,"intvl_ns":`...)
	b = strconv.AppendInt(b, int64(k.Intvl), 10)
	b = append(b, `,"count":`...)
	b = strconv.AppendUint(b, uint64(k.Count), 10)
	b = append(b, `,"idle_from":"`...)
	b = append(b, tracer.Source(k.IdleFromSocket)...)
	b = append(b, `","intvl_from":"`...)
	b = append(b, tracer.Source(k.IntvlFromSocket)...)
	b = append(b, `","count_from":"`...)
	b = append(b, tracer.Source(k.CountFromSocket)...)
	b = append(b, '"')
	if k.Event == tracer.KeepaliveArmed {
		b = append(b, `,"expires_in_ns":`...)
		b = strconv.AppendInt(b, int64(e.ExpiresIn), 10)
	}
	if k.UserTimeout > 0 {
		b = append(b, `,"user_timeout_ns":`...)
		b = strconv.AppendInt(b, int64(k.UserTimeout), 10)
	}
	return b
}
