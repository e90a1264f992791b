// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/tcpstate/tcpstate/pipeline"
)

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
	rep, clock, err := pipeline.Report(ctx, fs.Args(), &filter, stderr)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		fmt.Fprintln(stderr, "tcpstate: interrupted before the end: no report")
		return nil
	}
	if err != nil {
		return err
	}
	return rep.Render(stdout, clock, nil, f.output.value == "json")
}
