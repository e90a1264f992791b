// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
	"github.com/tcpstate/tcpstate/tracer/verify"
)

const verifyUsage = `Usage: tcpstate verify [flags]

Checks that live sockets run with the TCP settings you expect, after changing
net.ipv4.tcp_keepalive_time/intvl/probes or tcp_fin_timeout. For each socket in
scope: keepalive on or off, the effective values and where each comes from (the
socket's own option or its namespace's sysctl), the idle time its armed timer
came from, and when it picked up a change. A keepalive timer already armed keeps
its expiry until it fires: such sockets are "pending" until then.

Statuses: ok, pending (will adopt when its timer fires or ends), unaffected
(SO_KEEPALIVE off, or the socket's own option overrides the sysctl), mismatch
(the namespace's sysctl, or the socket, says otherwise).

Without --within, reports once and exits. With --within D, follows the sockets
and the sysctls (re-read every --interval, changes reported), prints each
change of status, and exits as soon as every socket in scope is ok, or at D.

Exit status: 0 every socket in scope runs with the expected values (unaffected
ones count as fine unless --strict); 3 some do not (listed at the end); 1 the
check could not run; 2 bad command line.

Flags:
%s`

type verifyFlags struct {
	filterFlags
	tracerFlags
	output   *enumValue
	expect   string
	within   durationValue
	interval durationValue
	strict   bool
}

func newVerifyFlags() (*pflag.FlagSet, *verifyFlags) {
	f := &verifyFlags{output: newEnum("text", "text", "json"), interval: durationValue(500 * time.Millisecond)}
	fs := pflag.NewFlagSet("verify", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.VarP(f.output, "output", "o", "output format: text or json (one object per socket and check, and per sysctl change)")
	fs.StringVar(&f.expect, "expect", "", "expected `name=value[,...]`: keepalive_time, keepalive_intvl, keepalive_probes, fin_timeout, in the sysctl's units (seconds, probes); default: each namespace's current sysctls")
	fs.Var(&f.within, "within", "wait up to `D` for every socket to run with the expected values")
	fs.VarP(&f.interval, "interval", "i", "with --within: re-read the sysctls and re-check every `interval`")
	fs.BoolVar(&f.strict, "strict", false, "count unaffected sockets (own option, keepalive off) as not running with the expected values")
	f.filterFlags.register(fs)
	f.tracerFlags.register(fs)
	return fs, f
}

func verifyHelp(fs *pflag.FlagSet) string {
	return fmt.Sprintf(verifyUsage, fs.FlagUsagesWrapped(80))
}

// errStragglers: the check ran, and some sockets do not run with the expected values.
var errStragglers = errors.New("some sockets do not run with the expected values")

func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newVerifyFlags()
	if err := parseFlags(fs, args, verifyHelp, stdout, false); err != nil {
		return err
	}
	expect, err := verify.ParseExpect(f.expect)
	if err != nil {
		return usagef("--expect: %v", err)
	}
	if f.interval <= 0 {
		return usagef("--interval must be positive")
	}
	filter, err := f.filter()
	if err != nil {
		return err
	}
	if filter.States != 0 {
		return usagef("--state does not apply to verify: keepalive is checked in ESTABLISHED and CLOSE_WAIT, fin_timeout in FIN_WAIT2")
	}

	t, err := f.tracerFlags.start(filter, stderr)
	if err != nil {
		return err
	}
	defer t.Close()
	socks, nss, err := t.ScanAll(tracer.ScanOptions{})
	if err != nil {
		return err
	}
	clock := tracer.NewClock()
	out := output.NewVerify(stdout, output.VerifyOptions{Clock: clock, JSON: f.output.value == "json"})
	v := &verifier{c: verify.New(expect, &filter), out: out, nss: nss, interval: time.Duration(f.interval),
		strict: f.strict, shown: map[resultKey]verify.Status{}}
	v.c.Seed(socks, nss)
	tl := timeline.New(v.c, timeline.Options{MaxConns: f.maxConns})
	tl.Seed(socks)

	now := tracer.BootNow()
	v.last = now
	done := v.report(now)
	if f.within > 0 && !done {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(f.within))
		defer cancel()
		v.cancel = cancel
		ready(ctx)
		if err := t.Run(ctx, &verifySink{tl: tl, v: v}); err != nil {
			return err
		}
	}
	return v.finish(tracer.BootNow())
}

type resultKey struct {
	cookie uint64
	check  string
}

// verifier re-checks from the tracer's goroutine (the checker is not shared).
type verifier struct {
	c        *verify.Checker
	out      *output.Verify
	nss      []tracer.NetNS
	interval time.Duration
	strict   bool
	last     uint64
	shown    map[resultKey]verify.Status
	changes  int
	cancel   context.CancelFunc
	err      error
}

// report prints the results whose status changed, and tells whether all
// sockets now run with the expected values.
func (v *verifier) report(now uint64) bool {
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
	return verify.Satisfied(rs, v.strict)
}

func (v *verifier) keep(err error) {
	if err != nil && v.err == nil {
		v.err = fmt.Errorf("writing output: %w", err)
	}
}

// tick re-reads the sysctls and re-checks, every interval.
func (v *verifier) tick() {
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
	if v.report(now) || v.err != nil {
		v.cancel()
	}
}

func (v *verifier) finish(now uint64) error {
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
		return errStragglers
	}
	return nil
}

// verifySink feeds the timeline (which names owners) and re-checks when idle.
type verifySink struct {
	tl *timeline.Timeline
	v  *verifier
}

func (s *verifySink) Event(e *tracer.Event) error { return s.tl.Event(e) }
func (s *verifySink) Idle() error {
	if err := s.tl.Idle(); err != nil {
		return err
	}
	s.v.tick()
	return nil
}
