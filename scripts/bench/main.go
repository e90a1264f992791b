// SPDX-License-Identifier: Apache-2.0

// Command bench measures what tracing costs a busy host: it runs rounds of a
// loopback connection churn under each tracer, interleaved (rounds of the same
// mode vary by about 15%, so only interleaved medians mean anything), and
// prints one table: churn throughput as a ratio to the untraced rounds, tracer
// CPU per million events, events lost, peak RSS. Run it through
// scripts/bench.sh, which installs the peers and mounts tracefs.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

type mode struct {
	name   string
	cmd    []string // tracer command line; nil: no tracer
	churn  []string // extra churn flags
	settle time.Duration
	ours   bool   // tcpstate: read its summary line
	scrape string // an address to GET /metrics from every second, as Prometheus would
}

type sample struct {
	rate  float64 // connections/s
	conns float64
	cpu   time.Duration
	rss   int64 // KiB
	seen  float64
	lost  float64
}

func main() {
	rounds := flag.Int("rounds", 5, "interleaved rounds")
	secs := flag.Duration("d", 5*time.Second, "churn time per round")
	bin := flag.String("tcpstate", "", "tcpstate binary")
	churnBin := flag.String("churn", "", "churn binary")
	floorBin := flag.String("hookfloor", "", "hookfloor binary: empty programs on tcpstate's tracepoints, the floor of any tracer of them (optional)")
	only := flag.String("modes", "", "comma-separated modes to run (default: all)")
	mem := flag.Int("hold", 100000, "sockets held open for the memory check (0: skip)")
	baseBin := flag.String("base", "", "another tcpstate binary (an earlier build) run in the same interleaved rounds, to compare")
	flag.Parse()
	if *bin == "" || *churnBin == "" {
		fmt.Fprintln(os.Stderr, "bench: -tcpstate and -churn are required (use scripts/bench.sh)")
		os.Exit(2)
	}
	out := filepath.Join(os.TempDir(), "tcpstate-bench.tcpstate")
	defer os.Remove(out)
	kaChurn := []string{"-churn-keepalive", "15"}
	ka10k := []string{"-keepalive", "10000"}
	const oneLiner = `tracepoint:sock:inet_sock_set_state { printf("%d %s %d %d %d\n", pid, comm, args->sport, args->oldstate, args->newstate); }`
	modes := []mode{
		{name: "none"},
		{name: "tcpstate record", cmd: []string{*bin, "record", "-w", out}, settle: time.Second, ours: true},
		{name: "tcpstate trace", cmd: []string{*bin, "trace"}, settle: time.Second, ours: true},
		{name: "tcpstate trace -o json", cmd: []string{*bin, "trace", "-o", "json"}, settle: time.Second, ours: true},
		{name: "tcpstate serve (scraped 1/s)", cmd: []string{*bin, "serve", "--listen", "127.0.0.1:10046"}, settle: time.Second, ours: true, scrape: "127.0.0.1:10046"},
		{name: "tcpstates (libbpf-tools)", cmd: []string{"tcpstates"}, settle: 2 * time.Second},
		{name: "bpftrace one-liner", cmd: []string{"bpftrace", "-e", oneLiner}, settle: 3 * time.Second},
		// 10,000 idle keepalive sockets held meanwhile: 5,000 connections
		// ESTABLISHED at both ends, keepalive on both. Their own kernel
		// work (made at the churn's start, keepalive probes every 5 s) slows
		// the untraced churn too: the ratio is to untraced rounds with them.
		{name: "none (10k keepalive)", churn: ka10k},
		{name: "tcpstate record (10k keepalive)", cmd: []string{*bin, "record", "-w", out}, churn: ka10k, settle: time.Second, ours: true},
		// Keepalive on every churned connection, as Go's net package sets it.
		{name: "none (keepalive churn)", churn: kaChurn},
		{name: "tcpstate record (keepalive churn)", cmd: []string{*bin, "record", "-w", out}, churn: kaChurn, settle: time.Second, ours: true},
		{name: "tcpstate trace (keepalive churn)", cmd: []string{*bin, "trace"}, churn: kaChurn, settle: time.Second, ours: true},
	}
	if *floorBin != "" {
		// Beside the tracers of each churn.
		at := slices.IndexFunc(modes, func(m mode) bool { return m.name == "tcpstates (libbpf-tools)" })
		// And the least a tracer of every transition and timewait or
		// keepalive timer can do: 32-byte records, read and dropped.
		modes = slices.Insert(modes, at,
			mode{name: "empty programs (same hooks)", cmd: []string{*floorBin}, settle: time.Second},
			mode{name: "32-byte records (same hooks)", cmd: []string{*floorBin, "-emit"}, settle: time.Second})
		modes = append(modes,
			mode{name: "empty programs (keepalive churn)", cmd: []string{*floorBin}, churn: kaChurn, settle: time.Second},
			mode{name: "32-byte records (keepalive churn)", cmd: []string{*floorBin, "-emit"}, churn: kaChurn, settle: time.Second})
	}
	if *baseBin != "" {
		modes = append(modes,
			mode{name: "base record", cmd: []string{*baseBin, "record", "-w", out}, settle: time.Second, ours: true},
			mode{name: "base trace", cmd: []string{*baseBin, "trace"}, settle: time.Second, ours: true})
	}
	if *only != "" {
		want := strings.Split(*only, ",")
		// The modes asked for, and the untraced rounds of their churns.
		kept := slices.DeleteFunc(slices.Clone(modes), func(m mode) bool { return m.cmd == nil || !slices.Contains(want, m.name) })
		modes = slices.DeleteFunc(modes, func(m mode) bool {
			if m.cmd != nil {
				return !slices.Contains(want, m.name)
			}
			return m.name != "none" && !slices.ContainsFunc(kept, func(k mode) bool { return slices.Equal(k.churn, m.churn) })
		})
	}
	results := map[string][]sample{}
	for r := range *rounds {
		for _, m := range modes {
			s, err := runRound(m, *churnBin, *secs)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench: round %d, %s: %v\n", r+1, m.name, err)
				continue
			}
			fmt.Fprintf(os.Stderr, "round %d %-32s %8.0f conn/s  lost %.0f\n", r+1, m.name, s.rate, s.lost)
			results[m.name] = append(results[m.name], s)
		}
	}
	// Each mode against the untraced rounds of the same churn.
	baseOf := func(m mode) float64 {
		for _, b := range modes {
			if b.cmd == nil && slices.Equal(b.churn, m.churn) {
				return median(results[b.name], func(s sample) float64 { return s.rate })
			}
		}
		return median(results["none"], func(s sample) float64 { return s.rate })
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tconn/s\tratio\tCPU ms/1M events\tlost\tpeak RSS MiB\t")
	for _, m := range modes {
		ss := results[m.name]
		if len(ss) == 0 {
			continue
		}
		rate := median(ss, func(s sample) float64 { return s.rate })
		cpu, lost, rss := "-", "-", "-"
		if m.cmd != nil {
			cpu = fmt.Sprintf("%.0f", median(ss, func(s sample) float64 {
				return float64(s.cpu.Milliseconds()) / max(s.seen, 1) * 1e6
			}))
			lost = fmt.Sprintf("%.0f", median(ss, func(s sample) float64 { return s.lost }))
			rss = fmt.Sprintf("%.1f", float64(slices.MaxFunc(ss, func(a, b sample) int { return int(a.rss - b.rss) }).rss)/1024)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%s\t%s\t%s\t\n", m.name, rate, rate/baseOf(m), cpu, lost, rss)
	}
	tw.Flush()
	fmt.Printf("median of %d interleaved rounds of %v; events: the tracer's own count, else 10 per connection\n", *rounds, *secs)
	if *mem > 0 {
		if err := memory(*bin, *churnBin, *mem); err != nil {
			fmt.Fprintln(os.Stderr, "bench: memory:", err)
		}
	}
	if err := startup(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "bench: start-up:", err)
	}
}

var (
	rateRe    = regexp.MustCompile(`(\d+) connections in [0-9.]+s: (\d+) connections/s`)
	summaryRe = regexp.MustCompile(`(\d+) events (?:seen|recorded[^,]*), (?:(\d+) (?:shown|counted), )?(?:\d+ written to [^,]*, )?(\d+) lost`)
	lostRe    = regexp.MustCompile(`(?i)lost (\d+) (?:events|samples)`)
)

func runRound(m mode, churnBin string, secs time.Duration) (sample, error) {
	var s sample
	var tracer *exec.Cmd
	var stderr bytes.Buffer
	if m.cmd != nil {
		tracer = exec.Command(m.cmd[0], m.cmd[1:]...)
		tracer.Stderr = &stderr
		if err := tracer.Start(); err != nil {
			return s, err
		}
		time.Sleep(m.settle)
		// Loading (BTF, the verifier, the walk of the sockets a round
		// before left in TIME_WAIT) takes seconds of CPU on a slow
		// machine: the churn starts once the tracer is idle, so that a
		// round measures tracing, not start-up.
		waitIdle(tracer.Process.Pid, 10*time.Second)
	}
	var cpu0 time.Duration
	if tracer != nil {
		cpu0 = cpuTime(tracer.Process.Pid)
	}
	stopScrape := make(chan struct{})
	scraped := make(chan int, 1)
	if m.scrape != "" {
		go func() { scraped <- scrape(m.scrape, stopScrape) }()
	}
	churn := exec.Command(churnBin, append([]string{"-d", secs.String()}, m.churn...)...)
	out, err := churn.CombinedOutput()
	var scrapeErr error
	if m.scrape != "" {
		close(stopScrape)
		if n := <-scraped; n < int(secs/time.Second)-1 {
			scrapeErr = fmt.Errorf("%s: %d scrapes answered in %s", m.name, n, secs)
		}
	}
	if tracer != nil {
		s.cpu = cpuTime(tracer.Process.Pid) - cpu0 // while the churn ran
		_ = tracer.Process.Signal(syscall.SIGINT)
		_ = tracer.Wait()
		if ru, ok := tracer.ProcessState.SysUsage().(*syscall.Rusage); ok {
			s.rss = ru.Maxrss
		}
	}
	if err != nil {
		return s, fmt.Errorf("churn: %v: %s", err, out)
	}
	if scrapeErr != nil { // (the tracer stopped above: no round runs beside another)
		return s, scrapeErr
	}
	mm := rateRe.FindSubmatch(out)
	if mm == nil {
		return s, fmt.Errorf("churn said %q", out)
	}
	s.conns, _ = strconv.ParseFloat(string(mm[1]), 64)
	s.rate, _ = strconv.ParseFloat(string(mm[2]), 64)
	s.seen = s.conns * 10
	if m.ours {
		if mm := summaryRe.FindSubmatch(stderr.Bytes()); mm != nil {
			s.seen, _ = strconv.ParseFloat(string(mm[1]), 64)
			s.lost, _ = strconv.ParseFloat(string(mm[3]), 64)
		} else {
			return s, fmt.Errorf("no summary from tcpstate: %s", stderr.String())
		}
	} else {
		for _, mm := range lostRe.FindAllSubmatch(stderr.Bytes(), -1) {
			n, _ := strconv.ParseFloat(string(mm[1]), 64)
			s.lost += n
		}
	}
	return s, nil
}

// scrape GETs http://addr/metrics every second until stop, and says how
// many answered.
func scrape(addr string, stop chan struct{}) int {
	n := 0
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return n
		case <-tick.C:
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				continue
			}
			if _, err := io.Copy(io.Discard, resp.Body); err == nil && resp.StatusCode == 200 {
				n++
			}
			resp.Body.Close()
		}
	}
}

// cpuTime is the user and system time of process pid so far (its threads
// included), from /proc/PID/stat in clock ticks (100 a second).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// waitIdle waits until process pid used at most a tenth of a CPU for 300 ms
// (a tracer sees the host's other events), or for at most max.
func waitIdle(pid int, max time.Duration) {
	deadline := time.Now().Add(max)
	last, quiet := cpuTime(pid), 0
	for quiet < 3 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		now := cpuTime(pid)
		if now-last <= 10*time.Millisecond {
			quiet++
		} else {
			quiet = 0
		}
		last = now
	}
}

// memory holds sockets open (several processes: one may have 20,000 fds),
// then runs tcpstate trace briefly: the walk puts every one in its table; and
// record. Then the same number of sockets lingering (CLOSE_WAIT and
// FIN_WAIT2, the sockets watch lists and serve counts per process): watch
// --once, and serve through two scrapes.
func memory(bin, churnBin string, sockets int) error {
	// The rounds' servers leave their ends in TIME_WAIT for 60 s: watch and
	// serve would list them too.
	for deadline := time.Now().Add(70 * time.Second); timewaitSockets() > 1000 && time.Now().Before(deadline); {
		time.Sleep(time.Second)
	}
	dir, err := os.MkdirTemp("", "tcpstate-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// --max-connections past the sockets held (in whole holders): all of
	// them in the table (the default, 100,000, would evict some)
	held := (sockets + 2*holdPer - 1) / (2 * holdPer) * 2 * holdPer
	table := strconv.Itoa(2 * held)
	for _, pile := range []struct {
		what string
		hold []string
		runs []memRun
	}{
		{"live TCP sockets", nil, []memRun{
			{"trace", " in its table", []string{"trace", "-d", "3s", "--max-connections", table}, ""},
			// record has no table; it writes the walk into the capture
			{"record", ", walked into the capture", []string{"record", "-w", filepath.Join(dir, "c"), "-d", "3s"}, ""},
		}},
		{"sockets in CLOSE_WAIT and FIN_WAIT2", []string{"-half-close"}, []memRun{
			{"watch --once", ", every one a row", []string{"watch", "--once", "--max-connections", table}, ""},
			{"serve", ", scraped twice", []string{"serve", "--listen", "127.0.0.1:10047", "--max-connections", table}, "127.0.0.1:10047"},
		}},
	} {
		if err := memoryPile(bin, churnBin, sockets, pile.what, pile.hold, pile.runs); err != nil {
			return err
		}
	}
	return nil
}

// timewaitSockets is how many TCP sockets of this namespace are in TIME_WAIT
// (/proc/net/sockstat, the "tw" of its TCP line).
func timewaitSockets() int {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			if f[i] == "tw" {
				n, _ := strconv.Atoi(f[i+1])
				return n
			}
		}
	}
	return 0
}

// memRun is one command of the memory check; with scrape, a server to scrape
// twice and stop.
type memRun struct {
	what, where string
	args        []string
	scrape      string
}

// holdPer is the connections each holder holds: 18,000 sockets (a process
// may have 20,000 files open).
const holdPer = 9000

func memoryPile(bin, churnBin string, sockets int, what string, holdArgs []string, runs []memRun) error {
	var holders []*exec.Cmd
	defer func() {
		for _, h := range holders {
			_ = h.Process.Kill()
			_ = h.Wait()
		}
	}()
	for i := 0; i*2*holdPer < sockets; i++ {
		args := append([]string{"-hold", strconv.Itoa(holdPer), "-d", "10m", "-addr", fmt.Sprintf("127.0.%d.1:0", i+1)}, holdArgs...)
		h := exec.Command(churnBin, args...)
		pipe, _ := h.StdoutPipe()
		h.Stderr = os.Stderr
		if err := h.Start(); err != nil {
			return err
		}
		holders = append(holders, h)
		if line, err := bufio.NewReader(pipe).ReadString('\n'); err != nil || !strings.HasPrefix(line, "holding") {
			return fmt.Errorf("holder: %q %v", line, err)
		}
	}
	for _, run := range runs {
		t := exec.Command(bin, run.args...)
		var stderr bytes.Buffer
		t.Stderr = &stderr
		var err error
		if run.scrape == "" {
			err = t.Run()
		} else {
			err = scrapeTwice(t, run.scrape)
		}
		if err != nil {
			return fmt.Errorf("%s: %v: %s", run.what, err, stderr.String())
		}
		ru := t.ProcessState.SysUsage().(*syscall.Rusage)
		fmt.Printf("memory: tcpstate %s with %d %s (%d connections, both ends)%s: peak RSS %.1f MiB\n",
			run.what, len(holders)*2*holdPer, what, len(holders)*holdPer, run.where, float64(ru.Maxrss)/1024)
	}
	return nil
}

// scrapeTwice starts a server, waits for its walk, scrapes its metrics twice a
// second apart and stops it.
func scrapeTwice(t *exec.Cmd, addr string) error {
	if err := t.Start(); err != nil {
		return err
	}
	stop := func() error {
		_ = t.Process.Signal(syscall.SIGTERM)
		return t.Wait()
	}
	var err error
	for n, tries := 0, 0; n < 2; tries++ {
		var resp *http.Response
		if resp, err = http.Get("http://" + addr + "/metrics"); err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("/metrics: %s", resp.Status)
			}
			if err != nil {
				break
			}
			n++
		} else if tries > 300 {
			break
		}
		time.Sleep(100 * time.Millisecond)
		if n == 1 {
			time.Sleep(900 * time.Millisecond)
		}
	}
	if serr := stop(); err == nil {
		err = serr
	}
	return err
}

// startup times `watch --once`: load, attach, walk, print, exit.
func startup(bin string) error {
	var best time.Duration
	for range 5 {
		start := time.Now()
		if out, err := exec.Command(bin, "watch", "--once").CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if d := time.Since(start); best == 0 || d < best {
			best = d
		}
	}
	fmt.Printf("start-up: tcpstate watch --once (load, attach, walk every socket, print, exit): %v (best of 5)\n", best.Round(time.Millisecond))
	return nil
}

func median(ss []sample, f func(sample) float64) float64 {
	if len(ss) == 0 {
		return 0
	}
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
