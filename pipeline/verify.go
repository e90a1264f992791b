// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
	"github.com/tcpstate/tcpstate/tracer/verify"
)

// ErrStragglers: the check ran, and some sockets do not run with the
// expected values.
var ErrStragglers = errors.New("some sockets do not run with the expected values")

// ErrNothingChecked: no socket was ever in scope, so nothing was verified (a
// filter that matched none, a service not running).
var ErrNothingChecked = errors.New("no socket in scope: nothing was checked (keepalive is checked in ESTABLISHED and CLOSE_WAIT, fin_timeout in FIN_WAIT2)")

// Verify checks live sockets against expected settings: the walk first, then
// (Follow) the events through the timeline, which names owners, re-reading
// the sysctls and re-checking every interval from the tracer's goroutine
// (the checker is not shared).
type Verify struct {
	c        *verify.Checker
	tl       *timeline.Timeline
	out      *output.Verify
	nss      []tracer.NetNS
	interval time.Duration
	strict   bool
	last     uint64
	shown    map[resultKey]verify.Status
	changes  int
	cancel   context.CancelFunc
	err      error
	checked  bool // some socket has been in scope (it may have closed since)
}

type resultKey struct {
	cookie uint64
	check  string
}

// VerifyOptions configure a check.
type VerifyOptions struct {
	Expect   verify.Expect
	Filter   *tracer.Filter
	Interval time.Duration
	Strict   bool // unaffected sockets count as not running with the values
	MaxConns int
}

// NewVerify checks the sockets of the walk, and reports the results.
// It tells whether every socket runs with the expected values.
func NewVerify(out *output.Verify, socks []tracer.Socket, nss []tracer.NetNS, o VerifyOptions) (*Verify, bool) {
	v := &Verify{c: verify.New(o.Expect, o.Filter), out: out, nss: nss, interval: o.Interval,
		strict: o.Strict, shown: map[resultKey]verify.Status{}}
	v.c.Seed(socks, nss)
	v.tl = timeline.New(v.c, timeline.Options{MaxConns: o.MaxConns})
	v.tl.Seed(socks)
	now := tracer.BootNow()
	v.last = now
	return v, v.report(now)
}

// Follow makes v the tracer's sink until every socket runs with the expected
// values (then it calls cancel) or the tracer stops.
func (v *Verify) Follow(cancel context.CancelFunc) tracer.Sink {
	v.cancel = cancel
	return verifySink{v}
}

// report prints the results whose status changed, and tells whether all
// sockets now run with the expected values.
func (v *Verify) report(now uint64) bool {
	for _, c := range v.c.Changes[v.changes:] {
		v.keep(v.out.Change(c))
	}
	v.changes = len(v.c.Changes)
	rs := v.c.Results(now)
	for _, r := range rs {
		k := resultKey{r.Socket.Cookie, r.Check}
		if v.shown[k] != r.Status {
			v.shown[k] = r.Status
			v.keep(v.out.Result(r, now))
		}
	}
	v.keep(v.out.Flush())
	// Nothing in scope yet: --within waits for sockets to check. (Once some
	// were, those that closed left the scope, as before.)
	v.checked = v.checked || len(rs) > 0
	return v.checked && verify.Satisfied(rs, v.strict)
}

func (v *Verify) keep(err error) {
	if err != nil && v.err == nil {
		v.err = fmt.Errorf("writing output: %w", err)
	}
}

// tick re-reads the sysctls and re-checks, every interval.
func (v *Verify) tick() {
	now := tracer.BootNow()
	if now-v.last < uint64(v.interval) {
		return
	}
	v.last = now
	for _, ns := range v.nss {
		vals, err := tracer.ReadSysctls(ns.Path)
		if err == nil {
			v.c.UpdateSysctls(ns.Inode, now, vals)
		}
	}
	if (v.report(now) || v.err != nil) && v.cancel != nil {
		v.cancel()
	}
}

// Finish prints the totals and the sockets that do not run with the expected
// values; ErrStragglers when there are some, ErrNothingChecked when there
// was none to check.
func (v *Verify) Finish(now uint64) error {
	rs := v.c.Results(now)
	var stragglers []verify.Result
	counts := map[verify.Status]int{}
	for _, r := range rs {
		counts[r.Status]++
		if r.Status == verify.Pending || r.Status == verify.Mismatch || v.strict && r.Status == verify.Unaffected {
			stragglers = append(stragglers, r)
		}
	}
	v.keep(v.out.Line("%d checks: %d ok, %d pending, %d unaffected, %d mismatch", len(rs),
		counts[verify.OK], counts[verify.Pending], counts[verify.Unaffected], counts[verify.Mismatch]))
	if len(stragglers) > 0 {
		v.keep(v.out.Line("not running with the expected values:"))
		for _, r := range stragglers {
			v.keep(v.out.Result(r, now))
		}
	}
	v.keep(v.out.Flush())
	if v.err != nil {
		return v.err
	}
	if len(stragglers) > 0 {
		return ErrStragglers
	}
	if !v.checked && len(rs) == 0 {
		return ErrNothingChecked
	}
	return nil
}

// verifySink feeds the timeline and re-checks when idle.
type verifySink struct{ v *Verify }

func (s verifySink) Event(e *tracer.Event) error { return s.v.tl.Event(e) }
func (s verifySink) Idle() error {
	if err := s.v.tl.Idle(); err != nil {
		return err
	}
	s.v.tick()
	return nil
}
