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
// filter that matched none, a service not running), or none that was could
// be rated (pending until it ended).
var ErrNothingChecked = errors.New("no socket in scope: nothing was checked (keepalive is checked in ESTABLISHED and CLOSE_WAIT, fin_timeout in orphaned FIN_WAIT2)")

// errNoneRated is ErrNothingChecked when sockets were in scope, none of them
// rated: pending until they ended, or for good (verify.Unratable).
type errNoneRated int

func (e errNoneRated) Error() string {
	return fmt.Sprintf("nothing was checked: none of the %d socket(s) in scope could be rated (a FIN_WAIT2 orphaned before tcpstate started keeps a timer nothing dates; a timer armed before the change is kept to the end)", int(e))
}

func (errNoneRated) Is(target error) bool { return target == ErrNothingChecked }

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
	shown    map[resultKey]shown
	changes  int
	cancel   context.CancelFunc
	err      error
	checked  bool                // some socket has been rated, not pending (it may have closed since)
	pending  map[uint64]struct{} // sockets seen only pending so far
}

type resultKey struct {
	cookie uint64
	check  string
}

// shown is what was printed of a result: its status, and whether its
// FIN_WAIT2 had ended (rated ok by its timer, then by how long it lasted).
type shown struct {
	status verify.Status
	ended  bool
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
		strict: o.Strict, shown: map[resultKey]shown{}, pending: map[uint64]struct{}{}}
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
	v.rated(rs)
	for _, r := range rs {
		k := resultKey{r.Socket.Cookie, r.Check}
		if s := (shown{r.Status, r.Socket.FinWait2Took != 0}); v.shown[k] != s {
			v.shown[k] = s
			v.keep(v.out.Result(r, now))
		}
	}
	v.keep(v.out.Flush())
	// Nothing rated yet: --within waits for sockets to check. (Once some
	// were, those that closed left the scope, as before.)
	return v.checked && verify.Satisfied(rs, v.strict)
}

// rated notes whether some socket was rated (not only pending), and which
// were seen only pending.
func (v *Verify) rated(rs []verify.Result) {
	for _, r := range rs {
		if r.Status != verify.Pending {
			v.checked = true
		} else if !v.checked {
			v.pending[r.Socket.Cookie] = struct{}{}
		}
	}
	if v.checked {
		clear(v.pending)
	}
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
	v.rated(rs)
	var stragglers []verify.Result
	counts := map[verify.Status]int{}
	for _, r := range rs {
		counts[r.Status]++
		if (r.Status == verify.Pending || r.Status == verify.Mismatch || v.strict && r.Status == verify.Unaffected) && !verify.Unratable(r) {
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
	if !v.checked {
		if len(v.pending) > 0 {
			return errNoneRated(len(v.pending))
		}
		return ErrNothingChecked
	}
	return nil
}

// verifySink feeds the timeline and re-checks when idle.
type verifySink struct{ v *Verify }

func (s verifySink) Event(e *tracer.Event) error {
	if e.Type == tracer.EventTWHandover {
		s.v.c.Handover(e)
	}
	return s.v.tl.Event(e)
}
func (s verifySink) Idle() error {
	if err := s.v.tl.Idle(); err != nil {
		return err
	}
	s.v.tick()
	return nil
}
