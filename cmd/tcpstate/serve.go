// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/output/metrics"
	"github.com/tcpstate/tcpstate/pipeline"
	"github.com/tcpstate/tcpstate/tracer"
)

// defaultListen: outside 9100-9999, the range the Prometheus project
// allocated to exporters (all taken), and below Linux's ephemeral ports
// (32768-60999), so that no outgoing connection holds it.
const defaultListen = ":10046"

const serveUsage = `Usage: tcpstate serve [flags]

Runs until stopped (systemd, a DaemonSet) and serves Prometheus metrics on
/metrics (and /healthz): sockets per state and the age of the oldest, the
sockets each process holds in CLOSE_WAIT and the other closing states (with
its container, pod and systemd service), TIME_WAIT per remote, time spent in
each state (histograms), transitions, closes by reason, resets by kernel
reason, keepalive probes and kills, failed connects, and tcpstate's own
events, losses and evictions. Each scrape reads the table at that moment.
Label sets are bounded: --top processes per state and --top-remotes remotes,
the rest summed under "[other]". Needs root.

Flags:
%s`

type serveFlags struct {
	filterFlags
	tracerFlags
	listen     string
	top        int
	topRemotes int
	bpfStats   bool
	duration   durationValue
}

func newServeFlags() (*pflag.FlagSet, *serveFlags) {
	f := &serveFlags{}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&f.listen, "listen", defaultListen, "serve on this `address` (host:port; :PORT for every address)")
	fs.IntVar(&f.top, "top", 10, "processes per state in tcpstate_process_sockets (the rest summed)")
	fs.IntVar(&f.topRemotes, "top-remotes", 20, "remotes in tcpstate_timewait_sockets and tcpstate_failed_connects_total")
	fs.BoolVar(&f.bpfStats, "bpf-stats", false, "turn the kernel's BPF run-time statistics on while serving, for tcpstate_bpf_program_* (costs ~20 ns per hook run)")
	f.filterFlags.register(fs)
	f.filterFlags.registerPlace(fs)
	fs.VarP(&f.duration, "duration", "d", "stop after this long; default: until stopped")
	f.tracerFlags.register(fs)
	return fs, f
}

func serveHelp(fs *pflag.FlagSet) string {
	return fmt.Sprintf(serveUsage, fs.FlagUsagesWrapped(80))
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newServeFlags()
	if err := parseFlags(fs, args, serveHelp, stdout, false); err != nil {
		return err
	}
	if f.top < 1 || f.top > 1000 {
		return usagef("--top %d: want 1 to 1000", f.top)
	}
	if f.topRemotes < 1 || f.topRemotes > 1000 {
		return usagef("--top-remotes %d: want 1 to 1000", f.topRemotes)
	}
	filter, err := f.filter()
	if err != nil {
		return err
	}
	if err := f.tracerFlags.validate(); err != nil {
		return err
	}
	if _, port, err := net.SplitHostPort(f.listen); err != nil {
		return usagef("--listen %q: want host:port or :port", f.listen)
	} else if n, err := strconv.ParseInt(port, 10, 64); err == nil && (n < 0 || n > 65535) {
		return usagef("--listen %q: a port is 0 to 65535", f.listen)
	}
	// Bound before loading anything: a port in use is one line, at once.
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", f.listen, errors.Unwrap(err))
	}
	defer ln.Close()

	kernelFilter := filter
	kernelFilter.States = 0 // a socket's age needs the transition into its state
	// (256 bytes a connection: its TIME_WAIT entries are compact)
	tableMemoryLimit(f.maxConns, 256)
	f.warn(stderr, &filter)
	t, err := f.tracerFlags.start(kernelFilter, stderr)
	if err != nil {
		return err
	}
	defer t.Close()
	var hookCosts func() (map[string]tracer.HookCost, error)
	if f.bpfStats {
		st, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
		if err != nil {
			return fmt.Errorf("--bpf-stats: turning the kernel's BPF statistics on: %w", err)
		}
		defer st.Close()
		hookCosts = t.HookCosts
	} else if bpfStatsOn() {
		hookCosts = t.HookCosts // turned on by someone else (sysctl kernel.bpf_stats_enabled)
	}

	s := pipeline.NewServe(pipeline.ServeOptions{Filter: filter, MaxConns: f.maxConns, Rescan: rescan(t, filter),
		TopProcs: f.top, TopRemotes: f.topRemotes, Resolver: resolver, Stats: t.Stats, HookCosts: hookCosts, Info: t.Info(),
		FindHolders: t.FindHolders})
	found := seedWalk(t, filter, tracer.ScanOptions{TimeWait: true}, stderr, s.SeedSocket)
	warnTableFull(stderr, s.Evicted(), found, f.maxConns, " and are not counted: raise it")
	s.Snapshot(tracer.BootNow()) // scrapes before the reader runs get this one

	release, _ := pipeline.Uname()
	metrics.SetKernel(release)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(s.Current, version),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: httpLog{stderr}, ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		// The reader goes idle ten times a second while it runs.
		if age := s.Alive(); age > 5*time.Second {
			http.Error(w, fmt.Sprintf("tracer stalled: last seen %s ago", age.Round(time.Millisecond)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "<html><head><title>tcpstate</title></head><body><h1>tcpstate serve</h1><p><a href=\"/metrics\">metrics</a> <a href=\"/healthz\">healthz</a></p></body></html>\n")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(ln) }()
	fmt.Fprintf(stderr, "tcpstate: serving metrics on http://%s/metrics (%d sockets found)\n", ln.Addr(), found)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		if err := <-srvErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(stderr, "tcpstate: serving: %v\n", err)
			cancel()
		}
	}()
	runErr := pipeline.Live(runCtx, t, s.Sink(), time.Duration(f.duration), ready)
	shutCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
	defer done()
	_ = srv.Shutdown(shutCtx)
	if stats, err := t.Stats(); err == nil {
		tl := s.Snapshot(tracer.BootNow()).Timeline
		fmt.Fprintf(stderr, "tcpstate: %s\n", pipeline.Summary(stats, stats.Seen-stats.Filtered-stats.Lost, "counted", tl))
	}
	return runErr
}

// bpfStatsOn reports whether the kernel keeps BPF run-time statistics
// already (sysctl kernel.bpf_stats_enabled).
func bpfStatsOn() bool {
	b, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	return err == nil && len(b) > 0 && b[0] == '1'
}

// httpLog writes the HTTP handler's errors as tcpstate's warnings.
type httpLog struct{ w io.Writer }

func (l httpLog) Println(v ...any) {
	fmt.Fprintf(l.w, "tcpstate: warning: /metrics: %s", fmt.Sprintln(v...))
}
