// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpstate/tcpstate/output"
	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

const recordUsage = `Usage: tcpstate record -w FILE [flags]

Records what tcpstate sees to a capture file, to replay (tcpstate trace -r FILE)
and report on (tcpstate report FILE) later, on any machine. The file (mode 0600:
it holds addresses and process names) is written in checksummed blocks at least
every second: if the recorder is killed, every complete block reads back.

With --flight-recorder, nothing is written until SIGUSR1 or exit: the last
--keep-size bytes or --keep-time of events are kept in memory and written to
FILE then (SIGUSR1 can be sent any number of times), so it can run for weeks
before the incident. Ends at Ctrl-C, SIGTERM or --duration.

Flags:
%s`

type recordFlags struct {
	filterFlags
	tracerFlags
	write    string
	duration durationValue
	maxSize  sizeValue
	keep     int
	flight   bool
	keepSize sizeValue
	keepTime durationValue
	sysctls  durationValue
}

func newRecordFlags() (*pflag.FlagSet, *recordFlags) {
	f := &recordFlags{keep: 3, keepSize: 64 << 20, sysctls: durationValue(time.Minute)}
	fs := pflag.NewFlagSet("record", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVarP(&f.write, "write", "w", "", "capture `file` to write (required)")
	fs.VarP(&f.duration, "duration", "d", "stop after this long; default: until interrupted")
	fs.Var(&f.maxSize, "max-size", "rotate the file at this `size` (e.g. 100M): FILE becomes FILE.1, and so on")
	fs.IntVar(&f.keep, "keep", 3, "rotated files to keep")
	fs.BoolVar(&f.flight, "flight-recorder", false, "keep the latest events in memory, write them on SIGUSR1 and at exit")
	fs.Var(&f.keepSize, "keep-size", "flight recorder: memory `size` of events to keep")
	fs.Var(&f.keepTime, "keep-time", "flight recorder: keep only this `long` of events (default: by size only)")
	fs.Var(&f.sysctls, "sysctl-interval", "record the namespaces' TCP sysctls this `often`")
	f.filterFlags.register(fs)
	f.tracerFlags.register(fs)
	return fs, f
}

func recordHelp(fs *pflag.FlagSet) string {
	return fmt.Sprintf(recordUsage, fs.FlagUsagesWrapped(80))
}

func runRecord(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newRecordFlags()
	if err := parseFlags(fs, args, recordHelp, stdout, false); err != nil {
		return err
	}
	switch {
	case f.write == "":
		return usagef("record needs -w FILE")
	case f.flight && f.maxSize > 0:
		return usagef("--flight-recorder and --max-size exclude each other")
	case f.keep < 1:
		return usagef("--keep %d: want at least 1", f.keep)
	case f.sysctls <= 0:
		return usagef("--sysctl-interval must be positive")
	}
	filter, err := f.filter()
	if err != nil {
		return err
	}
	rec := &recorder{interval: time.Duration(f.sysctls), path: f.write, stderr: stderr, last: time.Now()}
	if f.flight {
		// From the start: a SIGUSR1 while loading must not kill the recorder
		// (its default action); it asks for a dump as soon as there is one.
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		defer signal.Stop(usr1)
		go func() {
			for range usr1 {
				rec.dump.Store(true)
			}
		}()
	}
	t, err := f.tracerFlags.start(filter, stderr)
	if err != nil {
		return err
	}
	defer t.Close()
	clock, info := tracer.NewClock(), t.Info()
	socks, nss := scanAll(t, tracer.ScanOptions{}, stderr)
	socks = fullSockets(socks)
	h := newHeader(clock, info, nss, t.Warnings())
	rec.nss = nss
	if f.flight {
		rec.flight = capture.NewFlight(h, int(f.keepSize), time.Duration(f.keepTime))
		rec.flight.SetSockets(socks)
	} else {
		rec.w, err = capture.Create(f.write, h, capture.Options{MaxSize: int64(f.maxSize), Keep: f.keep})
		if err != nil {
			return err
		}
		if err := rec.w.Sockets(socks); err != nil {
			rec.w.Close()
			return err
		}
	}
	if f.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(f.duration))
		defer cancel()
	}
	if f.flight {
		fmt.Fprintf(stderr, "tcpstate: flight recorder running: kill -USR1 %d writes what it holds to %s\n", os.Getpid(), f.write)
	} else {
		fmt.Fprintf(stderr, "tcpstate: recording to %s\n", f.write)
	}
	ready(ctx)
	runErr := t.Run(ctx, rec)
	if err := rec.close(); err != nil && runErr == nil {
		runErr = err
	}
	stats, err := t.Stats()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "tcpstate: %d events recorded to %s, %d lost (%d filtered in kernel)%s\n", rec.events, f.write, stats.AllLost(), stats.Filtered, skippedNote(stats))
	return runErr
}

// recorder is the tracer's sink when recording.
type recorder struct {
	w        *capture.Writer
	flight   *capture.Flight
	path     string
	nss      []tracer.NetNS
	interval time.Duration
	last     time.Time
	events   uint64
	dump     atomic.Bool
	stderr   io.Writer
}

func (r *recorder) sink() tracer.Sink {
	if r.flight != nil {
		return r.flight
	}
	return r.w
}

func (r *recorder) Event(e *tracer.Event) error {
	r.events++
	return r.sink().Event(e)
}

func (r *recorder) Idle() error {
	if r.dump.Swap(false) {
		if err := r.flight.Dump(r.path); err != nil {
			return err
		}
		fmt.Fprintf(r.stderr, "tcpstate: flight recorder written to %s\n", r.path)
	}
	if r.w != nil && time.Since(r.last) >= r.interval {
		r.last = time.Now()
		snap := capture.SysctlSnapshot{Time: tracer.BootNow()}
		for _, ns := range r.nss {
			if vals, err := tracer.ReadSysctls(ns.Path); err == nil {
				snap.Namespaces = append(snap.Namespaces, capture.Namespace{Inode: ns.Inode, Sysctls: vals})
			}
		}
		if err := r.w.Sysctls(snap); err != nil {
			return err
		}
	}
	return r.sink().Idle()
}

func (r *recorder) close() error {
	if r.flight != nil {
		if err := r.flight.Dump(r.path); err != nil {
			return err
		}
		if d := r.flight.Dropped(); d > 0 {
			fmt.Fprintf(r.stderr, "tcpstate: flight recorder kept the latest events; %d older ones left memory\n", d)
		}
		return nil
	}
	return r.w.Close()
}

const reportUsage = `Usage: tcpstate report [flags] FILE...

Summarises captures: transitions and close reasons; time spent in each state
(p50, p90, p99, max, histogram) for CLOSE_WAIT, FIN_WAIT2, TIME_WAIT and the
rest; the connections that sat longest in CLOSE_WAIT or FIN_WAIT2 (and those
still there at the end); the processes holding the most CLOSE_WAIT sockets;
TIME_WAIT per local port and per remote (port exhaustion risk); keepalive
activity; and when events were lost. The trace filters apply.

Flags:
%s`

type reportFlags struct {
	filterFlags
	output *enumValue
}

func newReportFlags() (*pflag.FlagSet, *reportFlags) {
	f := &reportFlags{output: newEnum("text", "text", "json")}
	fs := pflag.NewFlagSet("report", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.VarP(f.output, "output", "o", "output format: text or json")
	f.filterFlags.register(fs)
	return fs, f
}

func reportHelp(fs *pflag.FlagSet) string {
	return fmt.Sprintf(reportUsage, fs.FlagUsagesWrapped(80))
}

func runReport(args []string, stdout, stderr io.Writer) error {
	fs, f := newReportFlags()
	if err := parseFlags(fs, args, reportHelp, stdout, true); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usagef("report needs at least one capture file")
	}
	filter, err := f.filter()
	if err != nil {
		return err
	}
	rep := output.NewReport()
	var clock tracer.Clock
	for i, path := range fs.Args() {
		rd, file, err := capture.Open(path)
		if err != nil {
			return err
		}
		if i == 0 {
			clock = rd.Header.Clock()
		}
		tl := timeline.New(&filtered{filter: &filter, next: rep}, timeline.Options{})
		_, err = replay(rd, tl)
		if err == nil {
			err = tl.Flush()
		}
		file.Close()
		for _, w := range rd.Warnings() {
			fmt.Fprintf(stderr, "tcpstate: warning: %s: %s\n", path, w)
		}
		kernelNotes(stderr, path, &rd.Header)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		rep.Finish(tl, func(c *timeline.Conn) bool { return timeline.Match(&filter, c, false) })
	}
	return rep.Render(stdout, clock, nil, f.output.value == "json")
}

// filtered passes what the filter accepts (and loss reports).
type filtered struct {
	filter *tracer.Filter
	next   tracer.Sink
}

func (f *filtered) Event(e *tracer.Event) error {
	if !f.filter.Match(e) {
		return nil
	}
	return f.next.Event(e)
}

func (f *filtered) Idle() error { return f.next.Idle() }
