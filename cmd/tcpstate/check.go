// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/tcpstate/tcpstate/pipeline"
	"github.com/tcpstate/tcpstate/tracer"
)

const checkUsage = `Usage: tcpstate check [flags]

Loads tcpstate into this kernel, attaches every hook it can, walks the existing
sockets once, and says what works here and what does not (with the Linux
version that brings what is missing), then detaches. Run it on a new host or
kernel before relying on tcpstate there. Needs root (CAP_BPF and CAP_PERFMON)
and kernel BTF. Exit 0 when tcpstate can trace here (some features may be
missing), 1 when it cannot (the reason on stderr, or in the JSON "error").

Flags:
%s`

type checkFlags struct {
	output *enumValue
	btf    string
}

func newCheckFlags() (*pflag.FlagSet, *checkFlags) {
	f := &checkFlags{output: newEnum("text", "text", "json")}
	fs := pflag.NewFlagSet("check", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.VarP(f.output, "output", "o", "output format: text or json (one object)")
	fs.StringVar(&f.btf, "btf", "", "kernel BTF `file`, for kernels that do not publish /sys/kernel/btf/vmlinux")
	return fs, f
}

func checkHelp(fs *pflag.FlagSet) string {
	return fmt.Sprintf(checkUsage, fs.FlagUsagesWrapped(80))
}

// checkReport is check's JSON object.
type checkReport struct {
	Kernel   string         `json:"kernel"`
	Arch     string         `json:"arch"`
	Tcpstate string         `json:"tcpstate"`
	Usable   bool           `json:"usable"`
	HZ       uint32         `json:"hz,omitempty"`      // CONFIG_HZ, the rate of the timer expiries' jiffies
	HZFrom   string         `json:"hz_from,omitempty"` // where it comes from
	Error    string         `json:"error,omitempty"`
	Features []checkFeature `json:"features,omitempty"`
	Warnings []string       `json:"warnings,omitempty"`
}

type checkFeature struct {
	Name    string `json:"name"`
	OK      bool   `json:"ok"`
	Detail  string `json:"detail"`
	Missing string `json:"missing,omitempty"` // with ok false: what is lost here
}

func runCheck(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newCheckFlags()
	if err := parseFlags(fs, args, checkHelp, stdout, false); err != nil {
		return err
	}
	rep := checkReport{Tcpstate: version}
	rep.Kernel, rep.Arch = pipeline.Uname()
	t, err := tracer.New(tracer.Config{KernelBTF: f.btf})
	if err == nil {
		defer t.Close()
		rep.Usable = true
		rep.HZ, rep.HZFrom = t.Info().HZ, t.Info().HZFrom
		for _, ft := range t.Features() {
			f := checkFeature{Name: ft.Name, OK: ft.OK, Detail: ft.Detail}
			if !ft.OK {
				f.Missing = ft.Missing
			}
			rep.Features = append(rep.Features, f)
		}
		rep.Warnings = t.Warnings()
		socks, _, serr := t.ScanAll(tracer.ScanOptions{TimeWait: true})
		var partial *tracer.ScanError
		walk := checkFeature{Name: "start-up walk", OK: serr == nil || errors.As(serr, &partial),
			Detail: fmt.Sprintf("sockets older than tcpstate found at start (iter/tcp): %d now", len(socks))}
		switch {
		case partial != nil:
			walk.Detail += "; " + serr.Error()
		case serr != nil:
			walk.Detail = serr.Error()
		}
		rep.Features = append(rep.Features, walk)
	} else {
		rep.Error = err.Error()
	}

	if f.output.value == "json" {
		b, jerr := json.Marshal(rep)
		if jerr != nil {
			return jerr
		}
		fmt.Fprintf(stdout, "%s\n", b)
		if err != nil {
			return silentError{err}
		}
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "tcpstate %s on Linux %s %s: tracing works\n\n", version, rep.Kernel, rep.Arch)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FEATURE\tHERE\tWHAT")
	for _, ft := range rep.Features {
		ok, what := "yes", ft.Detail
		if !ft.OK {
			ok, what = "no", ft.Detail+"; here: "+ft.Missing
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", ft.Name, ok, what)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\ntimer expiries in jiffies at CONFIG_HZ=%d: %s\n", rep.HZ, rep.HZFrom)
	for _, w := range rep.Warnings {
		fmt.Fprintf(stderr, "tcpstate: warning: %s\n", w)
	}
	return nil
}
