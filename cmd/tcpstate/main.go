// SPDX-License-Identifier: Apache-2.0

// Command tcpstate traces TCP connection states from the kernel.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpstate/tcpstate/pipeline"
	"github.com/tcpstate/tcpstate/tracer"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command could not do its work
	exitUsage = 2 // bad command line
	exitCheck = 3 // verify: some sockets do not run with the expected values
	exitNone  = 4 // verify: no socket was in scope: nothing checked
)

// usageError marks an error in the command line.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// readyKey carries a function that a command calls once it is tracing
// (attached, existing sockets walked): tests wait for it rather than guess how
// long loading takes on a busy machine or an emulated one.
type readyKey struct{}

func withReady(ctx context.Context, f func()) context.Context {
	return context.WithValue(ctx, readyKey{}, f)
}

func ready(ctx context.Context) {
	if f, ok := ctx.Value(readyKey{}).(func()); ok {
		f()
	}
}

// silentError fails the command (exit 1) when its output already said why.
type silentError struct{ err error }

func (s silentError) Error() string { return s.err.Error() }
func (s silentError) Unwrap() error { return s.err }

const mainUsage = `tcpstate shows TCP connection states from the Linux kernel: every state change,
the process that owns the socket, and how long the socket spent in each state.

Usage:
  tcpstate <command> [flags]

Commands:
  trace     print TCP state transitions as they happen
  watch     live table of sockets stuck in CLOSE_WAIT, FIN_WAIT2, TIME_WAIT...
  verify    check that live sockets run with the keepalive and fin_timeout you set
  serve     serve Prometheus metrics: sockets per state and process, time in state, closes...
  record    write what tcpstate sees to a capture file (or keep it in memory until asked)
  report    summarise captures: durations, lingering sockets, TIME_WAIT, keepalive, losses
  check     say what tcpstate can do on this kernel, and what it cannot
  version   print version and build information
  help      show help for a command

Run 'tcpstate <command> --help' for the flags of a command.
`

func main() {
	// SIGHUP too (the terminal a background run was started from closed):
	// every command ends as on Ctrl-C, a recorder writing what it holds.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	out := &watchedWriter{w: os.Stdout}
	done := make(chan int, 1)
	go func() { done <- run(ctx, os.Args[1:], out, os.Stderr) }()
	select {
	case code := <-done:
		os.Exit(code)
	case <-ctx.Done():
	}
	stop()
	// Stopped: the command finishes what it holds (a recorder writes it to
	// disk, a tracer still loading finishes loading), unless it is stuck
	// writing to a stdout nobody reads: then it must not hang.
	tick := time.NewTicker(100 * time.Millisecond)
	for {
		select {
		case code := <-done:
			os.Exit(code)
		case <-tick.C:
			if out.blockedFor() > time.Second {
				msg := "tcpstate: stopped, but its output does not drain (stdout not read): exiting without it"
				// What the kernel side counted (the command's own summary
				// waits behind the stalled write). Stats may be read from
				// here while the command runs; closed, it fails.
				if t := liveTracer.Load(); t != nil {
					if st, err := t.Stats(); err == nil {
						msg += "; " + st.String()
					}
				}
				fmt.Fprintln(os.Stderr, msg)
				os.Exit(exitError)
			}
		}
	}
}

// liveTracer is the tracer of the command under way, for the line main
// prints when it exits without the command (see main).
var liveTracer atomic.Pointer[tracer.Tracer]

// watchedWriter tells how long a write to it has been blocked (a pipe whose
// reader stalled).
type watchedWriter struct {
	w     io.Writer
	since atomic.Int64 // UnixNano when the write in progress began; 0: none
}

func (w *watchedWriter) Write(p []byte) (int, error) {
	w.since.Store(time.Now().UnixNano())
	defer w.since.Store(0)
	return w.w.Write(p)
}

// Fd is the descriptor underneath, for the terminal checks.
func (w *watchedWriter) Fd() uintptr {
	if f, ok := w.w.(interface{ Fd() uintptr }); ok {
		return f.Fd()
	}
	return ^uintptr(0)
}

func (w *watchedWriter) blockedFor() time.Duration {
	if s := w.since.Load(); s != 0 {
		return time.Since(time.Unix(0, s))
	}
	return 0
}

// run executes the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	var ue usageError
	var se silentError
	switch {
	case err == nil, errors.Is(err, pflag.ErrHelp):
		return exitOK
	case errors.As(err, &se):
		return exitError
	case errors.Is(err, pipeline.ErrStragglers):
		fmt.Fprintf(stderr, "tcpstate: %v\n", err)
		return exitCheck
	case errors.Is(err, pipeline.ErrNothingChecked):
		fmt.Fprintf(stderr, "tcpstate: %v\n", err)
		return exitNone
	case errors.As(err, &ue):
		help := "tcpstate --help"
		if len(args) > 0 && isCommand(args[0]) {
			help = "tcpstate " + args[0] + " --help"
		}
		fmt.Fprintf(stderr, "tcpstate: %v\nRun '%s' for usage.\n", err, help)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "tcpstate: %v\n", err)
		return exitError
	}
}

func isCommand(s string) bool {
	switch s {
	case "trace", "watch", "verify", "serve", "record", "report", "check", "version":
		return true
	}
	return false
}

// softMemoryLimit makes the collector work harder before a long-running
// tracer's memory grows past it (GOMEMLIMIT, when set, wins).
const softMemoryLimit = 48 << 20

// tableMemoryLimit raises the soft limit for the commands whose table holds
// the TIME_WAIT sockets too (watch, serve), by perConn bytes a connection: a
// churning host fills it, and a limit below what the full table needs makes
// the collector run without end (serve under an 11,000 conn/s churn, before
// its compact TIME_WAIT: 4x the CPU, and events lost).
func tableMemoryLimit(maxConns, perConn int) {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(softMemoryLimit + int64(maxConns)*int64(perConn))
	}
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, mainUsage)
		return usagef("no command given")
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(softMemoryLimit)
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "trace":
		return runTrace(ctx, rest, stdout, stderr)
	case "watch":
		return runWatch(ctx, rest, stdout, stderr)
	case "verify":
		return runVerify(ctx, rest, stdout, stderr)
	case "serve":
		return runServe(ctx, rest, stdout, stderr)
	case "record":
		return runRecord(ctx, rest, stdout, stderr)
	case "report":
		return runReport(ctx, rest, stdout, stderr)
	case "check":
		return runCheck(ctx, rest, stdout, stderr)
	case "version", "--version":
		switch {
		case len(rest) > 0 && (rest[0] == "-h" || rest[0] == "--help"):
			fmt.Fprint(stdout, "Usage: tcpstate version\n\nPrints tcpstate's version, commit, Go and cilium/ebpf versions, and platform.\n")
			return nil
		case len(rest) > 0:
			return usagef("version takes no arguments: %q", rest[0])
		}
		fmt.Fprintln(stdout, versionString())
		return nil
	case "help", "-h", "--help":
		if len(rest) > 0 && rest[0] != "help" {
			return dispatch(ctx, []string{rest[0], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, mainUsage)
		return nil
	default:
		return usagef("unknown command %q (commands: trace, watch, verify, serve, record, report, check, version, help)", cmd)
	}
}
