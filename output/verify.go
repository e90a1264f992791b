// SPDX-License-Identifier: Apache-2.0

package output

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/verify"
)

// VerifyOptions configure the verify renderer.
type VerifyOptions struct {
	Clock    tracer.Clock
	Location *time.Location // text; nil for local time
	JSON     bool
}

// Verify renders verify results and sysctl changes.
type Verify struct {
	opts   VerifyOptions
	w      *bufio.Writer
	header bool
}

// NewVerify returns a verify renderer writing to w.
func NewVerify(w io.Writer, opts VerifyOptions) *Verify {
	if opts.Location == nil {
		opts.Location = time.Local
	}
	return &Verify{opts: opts, w: bufio.NewWriterSize(w, 64<<10), header: true}
}

var verifyColumns = []column{{"TIME", 8}, {"CHECK", 16}, {"STATUS", 10}, {"PID", -6}, {"COMM", 8}, {"LOCAL", 21}, {"REMOTE", 21}, {"DETAIL", 0}}

// Change writes a sysctl change.
func (v *Verify) Change(c verify.Change) error {
	if v.opts.JSON {
		b := v.opts.Clock.Wall(c.Time).AppendFormat([]byte(`{"time":"`), "2006-01-02T15:04:05.000000000Z07:00")
		b = fmt.Appendf(b, `","type":"sysctl","netns":%d,"name":"net.ipv4.tcp_%s","old":%s,"new":%s}`+"\n",
			c.NetNS, c.Name, strconv.Quote(c.Old), strconv.Quote(c.New))
		_, err := v.w.Write(b)
		return err
	}
	_, err := fmt.Fprintf(v.w, "%s sysctl net.ipv4.tcp_%s changed %s -> %s in network namespace %d\n",
		v.opts.Clock.Wall(c.Time).In(v.opts.Location).Format("15:04:05"), c.Name, c.Old, c.New, c.NetNS)
	return err
}

// Result writes one socket's rating at time now.
func (v *Verify) Result(r verify.Result, now uint64) error {
	k := r.Socket
	if v.opts.JSON {
		return v.resultJSON(r, now)
	}
	if v.header {
		v.header = false
		if _, err := v.w.WriteString(header(verifyColumns)); err != nil {
			return err
		}
	}
	row := row{cols: verifyColumns}
	row.cell(v.opts.Clock.Wall(now).In(v.opts.Location).AppendFormat(nil, "15:04:05"))
	row.cell([]byte(r.Check))
	row.cell([]byte(r.Status))
	row.owner(&k.Owner, false, false)
	row.endpoint(k.Local)
	row.endpoint(k.Remote)
	row.cell([]byte(r.Detail))
	_, err := v.w.Write(endLine(row.b))
	return err
}

func (v *Verify) resultJSON(r verify.Result, now uint64) error {
	k := r.Socket
	b := v.opts.Clock.Wall(now).AppendFormat([]byte(`{"time":"`), "2006-01-02T15:04:05.000000000Z07:00")
	b = append(b, `","type":"verify","check":"`...)
	b = append(b, r.Check...)
	b = append(b, `","status":"`...)
	b = append(b, r.Status...)
	b = append(b, `","detail":`...)
	b = appendJSONString(b, []byte(r.Detail))
	b = append(b, `,"cookie":`...)
	b = strconv.AppendUint(b, k.Cookie, 10)
	b = appendEndpoints(b, k.NetNS, k.Family, k.Local, k.Remote)
	b = appendOwner(b, &k.Owner)
	b = append(b, `,"state":"`...)
	b = append(b, k.State.String()...)
	b = append(b, `","keepalive":`...)
	b = strconv.AppendBool(b, k.KeepaliveOn)
	b = fmt.Appendf(b, `,"idle_ns":%d,"idle_from":"%s","intvl_ns":%d,"intvl_from":"%s","count":%d,"count_from":"%s"`,
		int64(k.Idle), tracer.Source(k.IdleFromSocket), int64(k.Intvl), tracer.Source(k.IntvlFromSocket),
		k.Count, tracer.Source(k.CountFromSocket))
	if r.Check == verify.KeepaliveProbes {
		b = fmt.Appendf(b, `,"expect":%d`, int64(r.Expect))
	} else {
		b = fmt.Appendf(b, `,"expect_ns":%d`, int64(r.Expect))
	}
	if k.ArmedWith != 0 {
		b = fmt.Appendf(b, `,"armed_with_ns":%d`, int64(k.ArmedWith))
	}
	if k.Expires > now {
		b = fmt.Appendf(b, `,"expires_in_ns":%d`, int64(k.Expires-now))
	}
	if k.AdoptedAt != 0 {
		b = append(b, `,"adopted_at":"`...)
		b = v.opts.Clock.Wall(k.AdoptedAt).AppendFormat(b, "2006-01-02T15:04:05.000000000Z07:00")
		b = append(b, '"')
	}
	if k.FinWait2Took != 0 {
		b = fmt.Appendf(b, `,"fin_wait2_ns":%d`, int64(k.FinWait2Took))
	}
	b = append(b, "}\n"...)
	_, err := v.w.Write(b)
	return err
}

// Line writes a free text line (text output only): summaries and stragglers.
func (v *Verify) Line(format string, args ...any) error {
	if v.opts.JSON {
		return nil
	}
	_, err := fmt.Fprintf(v.w, format+"\n", args...)
	return err
}

// Flush writes what is buffered.
func (v *Verify) Flush() error { return v.w.Flush() }
