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
	"github.com/tcpstate/tcpstate/pipeline"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/verify"
)

const verifyUsage = `Usage: tcpstate verify [flags]

Checks that live sockets run with the TCP settings you expect, after changing
net.ipv4.tcp_keepalive_time/intvl/probes or tcp_fin_timeout. For each socket in
scope: keepalive on or off, the effective values and where each comes from (the
socket's own option or its namespace's sysctl), the idle time its armed timer
came from, and when it picked up a change. A keepalive timer already armed keeps
its expiry until it fires: such sockets are "pending" until then.
tcp_fin_timeout applies to an orphaned FIN_WAIT2 (its owner closed it, the peer
did not), counted from the close(): rated by the timer armed then, and by how
long it lasted. One orphaned before tcpstate started or before the change keeps
its timer: pending, it leaves the scope when it ends.

Statuses: ok, pending (will adopt when its timer fires or ends), unaffected
(SO_KEEPALIVE off, or the socket's own option overrides the sysctl), mismatch
(the namespace's sysctl, or the socket, says otherwise).

Without --within, reports once and exits. With --within D, follows the sockets
and the sysctls (re-read every --interval, changes reported), prints each
change of status, and exits as soon as every socket in scope runs with the
expected values as the exit status counts them (once some socket was rated: it
waits for one), or at D.

Exit status: 0 every socket in scope runs with the expected values (unaffected
ones count as fine unless --strict); 3 some do not (listed at the end); 4
nothing checked: no socket was in scope, or none that was could be rated; 1
the check could not run; 2 bad command line.

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
	f.filterFlags.registerPlace(fs)
	f.tracerFlags.register(fs)
	// (shared with the other commands; refused here with the reason)
	_ = fs.MarkHidden("state")
	return fs, f
}

func verifyHelp(fs *pflag.FlagSet) string {
	return fmt.Sprintf(verifyUsage, fs.FlagUsagesWrapped(80))
}

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

	f.warn(stderr, &filter)
	t, err := f.tracerFlags.start(filter, stderr)
	if err != nil {
		return err
	}
	defer t.Close()
	socks, nss, err := t.ScanAll(tracer.ScanOptions{})
	var skipped *tracer.ScanError
	switch {
	case errors.As(err, &skipped):
		fmt.Fprintf(stderr, "tcpstate: warning: %v: their sockets are not checked\n", err)
	case err != nil:
		return err
	}
	out := output.NewVerify(stdout, output.VerifyOptions{Clock: tracer.NewClock(), JSON: f.output.value == "json"})
	v, done := pipeline.NewVerify(out, socks, nss, pipeline.VerifyOptions{Expect: expect, Filter: &filter,
		Interval: time.Duration(f.interval), Strict: f.strict, MaxConns: f.maxConns})
	if f.within > 0 && !done {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(f.within))
		defer cancel()
		ready(ctx)
		if err := t.Run(ctx, v.Follow(cancel)); err != nil {
			return err
		}
	}
	return v.Finish(tracer.BootNow())
}
