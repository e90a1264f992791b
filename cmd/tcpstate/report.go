// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/output/htmlreport"
	"github.com/tcpstate/tcpstate/pipeline"
)

const reportUsage = `Usage: tcpstate report [flags] FILE...

Summarises captures: transitions and close reasons; time spent in each state
(p50, p90, p99, max, histogram) for CLOSE_WAIT, FIN_WAIT2, TIME_WAIT and the
rest; the connections that sat longest in CLOSE_WAIT or FIN_WAIT2 (and those
still there at the end); the processes holding the most CLOSE_WAIT sockets;
TIME_WAIT per local port and per remote (port exhaustion risk); keepalive
activity; and when events were lost. The trace filters apply.

With --html FILE, also a page to look at: sockets per state over time,
time-in-state distributions, CLOSE_WAIT holders over time, the longest-
lingering connections state by state, closes, resets and keepalive over
time, lost events and sysctl changes marked. One self-contained file (charts
as inline SVG, no script): it opens offline and prints.

Flags:
%s`

type reportFlags struct {
	filterFlags
	output *enumValue
	html   string
}

func newReportFlags() (*pflag.FlagSet, *reportFlags) {
	f := &reportFlags{output: newEnum("text", "text", "json")}
	fs := pflag.NewFlagSet("report", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.VarP(f.output, "output", "o", "output format: text or json")
	fs.StringVar(&f.html, "html", "", "also write the report as an HTML page to `file` (- for stdout, instead of the text)")
	f.filterFlags.register(fs)
	return fs, f
}

func reportHelp(fs *pflag.FlagSet) string {
	return fmt.Sprintf(reportUsage, fs.FlagUsagesWrapped(80))
}

func runReport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
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
	if fs.Changed("html") && f.html == "" {
		return usagef("--html: empty file name")
	}
	if f.html != "" && f.html != "-" {
		if err := checkOutputPath(f.html); err != nil {
			return err
		}
		// Never over a capture: one of the inputs, or any other.
		if out, err := os.Stat(f.html); err == nil {
			for _, in := range fs.Args() {
				if fi, err := os.Stat(in); err == nil && os.SameFile(fi, out) {
					return fmt.Errorf("--html %s is one of the captures read: refusing to write over it", f.html)
				}
			}
			if capture.IsCapture(f.html) {
				return fmt.Errorf("--html %s is a capture: refusing to write over it", f.html)
			}
		}
	}
	rep, clock, header, err := pipeline.ReportWithHeader(ctx, fs.Args(), &filter, stderr)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		fmt.Fprintln(stderr, "tcpstate: interrupted before the end: no report")
		return nil
	}
	if err != nil {
		return err
	}
	opts := htmlreport.Options{Clock: clock, Header: header, Files: fs.Args(), Version: version}
	if f.html == "-" {
		return htmlreport.Write(stdout, rep, opts)
	}
	if f.html != "" {
		if err := writeFileAtomic(f.html, func(w io.Writer) error { return htmlreport.Write(w, rep, opts) }); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "tcpstate: wrote %s\n", f.html)
	}
	return rep.Render(stdout, clock, nil, f.output.value == "json")
}

// checkOutputPath refuses an output path that exists and is not a regular
// file (as root, a symbolic link anyone could have planted, a device), and
// one whose directory takes no files, before any work.
func checkOutputPath(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link: refusing to write through it (give the target itself)", path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file: refusing to write over it", path)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tcpstate-check-*")
	if err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	tmp.Close()
	return os.Remove(tmp.Name())
}

// writeFileAtomic writes path through a temporary file renamed over it when
// complete (mode 0600: addresses and process names): a failure leaves an
// existing file as it was, and a symbolic link at path is replaced, never
// followed.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	if err := checkOutputPath(path); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tcpstate-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // (gone once renamed)
	bw := bufio.NewWriterSize(tmp, 256<<10)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
