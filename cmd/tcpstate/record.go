// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/pipeline"
	"github.com/tcpstate/tcpstate/tracer"
)

const recordUsage = `Usage: tcpstate record -w FILE [flags]

Records what tcpstate sees to a capture file, to replay (tcpstate trace -r FILE)
and report on (tcpstate report FILE) later, on any machine. The file (mode 0600:
it holds addresses and process names) is written in checksummed blocks at least
every second: if the recorder is killed, every complete block reads back.

With --flight-recorder, nothing is written until SIGUSR1 or exit: the last
--keep-size bytes or --keep-time of events are kept in memory and written to
FILE then (SIGUSR1 can be sent any number of times), so it can run for weeks
before the incident. Each dump moves the one before it to FILE.1 (FILE.1 to
FILE.2, and so on, --keep of them): an incident's dump outlives the next one
and the one at exit. A dump that cannot be written keeps the events in memory
and the recorder running. Ends at Ctrl-C, SIGTERM, SIGHUP or --duration,
writing what it holds.

FILE must be a regular file or not exist yet: a symbolic link, a device or a
FIFO is refused, and so is a directory that takes no new file, before
anything is traced. An existing file is written over only if it is empty or
an earlier capture; so are the files rotation shifts (FILE.1 to FILE.N).

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
	fs.Var(&f.maxSize, "max-size", "rotate the file at this `size` (64K to 1G, e.g. 100M; it ends with the block that reaches it): FILE becomes FILE.1, and so on")
	fs.IntVar(&f.keep, "keep", 3, "rotated files to keep; with --flight-recorder, earlier dumps (FILE.1, ...)")
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
	case f.maxSize > 0 && f.maxSize < 64<<10:
		return usagef("--max-size %s: at least 64K", f.maxSize.String())
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
	// Where the capture goes is checked before anything loads: a link, a
	// device or a directory that takes no files is refused in one line.
	if err := capture.CheckPath(f.write); err != nil {
		return err
	}
	f.warn(stderr, &filter)
	var dump chan os.Signal
	if f.flight {
		// From the start: a SIGUSR1 while loading must not kill the recorder
		// (its default action); it asks for a dump as soon as there is one.
		dump = make(chan os.Signal, 1)
		signal.Notify(dump, syscall.SIGUSR1)
		defer signal.Stop(dump)
	}
	t, err := f.tracerFlags.start(filter, stderr)
	if err != nil {
		return err
	}
	defer t.Close()
	opts := pipeline.RecordOptions{
		Path: f.write, SysctlInterval: time.Duration(f.sysctls),
		MaxSize: int64(f.maxSize), Keep: f.keep,
		Flight: f.flight, FlightSize: int(f.keepSize), FlightTime: time.Duration(f.keepTime), Stderr: stderr,
	}
	walk := pipeline.CaptureWalk(t, filter, stderr, nil)
	if f.flight {
		// Every dump starts with the walk: a flight recorder holds it.
		opts.NetNS = walk(func(s *tracer.Socket) { opts.Sockets = append(opts.Sockets, *s) })
		opts.Header = pipeline.Header(version, os.Args[1:], tracer.NewClock(), t.Info(), opts.NetNS, t.Warnings())
	} else {
		// The file's header names the namespaces; the walk streams into
		// the file after it.
		opts.Header = pipeline.Header(version, os.Args[1:], tracer.NewClock(), t.Info(), tracer.NetNamespaces(), t.Warnings())
		opts.Walk = walk
	}
	rec, err := pipeline.NewRecorder(opts)
	if err != nil {
		return err
	}
	if f.flight {
		go func() {
			for range dump {
				rec.Dump()
			}
		}()
	}
	if f.flight {
		fmt.Fprintf(stderr, "tcpstate: flight recorder running: kill -USR1 %d writes what it holds to %s\n", os.Getpid(), f.write)
	} else {
		fmt.Fprintf(stderr, "tcpstate: recording to %s\n", f.write)
	}
	runErr := pipeline.Live(ctx, t, rec, time.Duration(f.duration), ready)
	if err := rec.Close(); err != nil && runErr == nil {
		runErr = err
	}
	stats, err := t.Stats()
	if err != nil {
		return err
	}
	where := f.write
	if n := rec.Rotations(); n > 0 {
		// What was written is not all still there: say how much is.
		where = fmt.Sprintf("%s and %d files before it (the newest %d kept: %s.1 to %s.%d)", f.write, n, min(n, f.keep), f.write, f.write, min(n, f.keep))
	}
	fmt.Fprintf(stderr, "tcpstate: %d events seen, %d written to %s, %d lost (%d filtered in kernel)%s\n", stats.Seen, rec.Written(), where, stats.AllLost(), stats.Filtered, pipeline.SkippedNote(stats))
	return runErr
}
