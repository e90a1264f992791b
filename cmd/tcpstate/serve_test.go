// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/internal/testnet"
	"github.com/tcpstate/tcpstate/output/metrics"
)

// freePort is a loopback port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startServe runs tcpstate serve in this process until the test ends.
func startServe(t *testing.T, args ...string) (addr string) {
	t.Helper()
	addr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	tracing := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	ctx = withReady(ctx, func() { close(tracing) })
	done := make(chan cmdResult, 1)
	go func() {
		code, o, e := runCmd(ctx, append([]string{"serve", "--listen", addr}, args...)...)
		done <- cmdResult{code: code, stdout: o, stderr: e}
	}()
	select {
	case <-tracing:
	case r := <-done:
		t.Fatalf("serve ended before tracing: exit %d: %s", r.code, r.stderr)
	case <-time.After(2 * time.Minute):
		t.Fatal("serve: not tracing after 2 minutes")
	}
	t.Cleanup(func() {
		cancel()
		if r := <-done; r.code != exitOK {
			t.Errorf("serve: exit %d: %s", r.code, r.stderr)
		}
	})
	return addr
}

// hold starts a child process that opens n connections to addr from ns and
// holds them until release is called, which closes them.
func hold(t *testing.T, ns *testnet.NetNS, addr string, n int) (pid int, release func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TCPSTATE_HELPER=hold", "ADDR="+addr, "NETNS="+ns.Path, "COUNT="+strconv.Itoa(n))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	released := false
	release = func() {
		if !released {
			released = true
			stdin.Close()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(release)
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("helper: %q %v", line, err)
	}
	return cmd.Process.Pid, release
}

// containerGroup mounts a cgroup v2 hierarchy of the test's own, makes a
// group shaped as docker's systemd driver names a container's, and moves
// pid into it; it returns the container's id. Undone when the test ends.
func containerGroup(t *testing.T, pid int) string {
	t.Helper()
	id, group := newContainerGroup(t)
	t.Cleanup(func() {
		// Back to the root group (if it still runs), so that ours can go.
		_ = os.WriteFile(filepath.Join(filepath.Dir(filepath.Dir(group)), "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
	})
	if err := os.WriteFile(filepath.Join(group, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatalf("moving %d into %s: %v", pid, group, err)
	}
	return id
}

// newContainerGroup mounts a cgroup v2 hierarchy and makes a group in it
// shaped as docker names its containers' (with the systemd driver); it is
// removed at the end, once empty. It returns the container id and the
// group's directory.
func newContainerGroup(t *testing.T) (id, group string) {
	t.Helper()
	mnt := t.TempDir()
	if err := unix.Mount("none", mnt, "cgroup2", 0, ""); err != nil {
		t.Skipf("cannot mount a cgroup v2 hierarchy (%v): container attribution needs cgroup v2", err)
	}
	id = fmt.Sprintf("%064x", time.Now().UnixNano())
	group = filepath.Join(mnt, fmt.Sprintf("tcpstate-test-%d.slice", os.Getpid()), "docker-"+id+".scope")
	if err := os.MkdirAll(group, 0o755); err != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for range 50 {
			if os.Remove(group) == nil || os.IsNotExist(os.Remove(group)) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		_ = os.Remove(filepath.Dir(group))
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
	})
	return id, group
}

// promQuery asks Prometheus for an instant vector.
func promQuery(t *testing.T, prom, query string) []promSample {
	t.Helper()
	resp, err := http.Get("http://" + prom + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
		t.Fatalf("query %q: %v %s", query, err, r.Error)
	}
	var out []promSample
	for _, s := range r.Data.Result {
		v, _ := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
		out = append(out, promSample{s.Metric, v})
	}
	return out
}

type promSample struct {
	labels map[string]string
	value  float64
}

// startPrometheus runs Debian's prometheus scraping target every second.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	bin := debianTool(t, "prometheus", "prometheus")
	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tcpstate\n    static_configs:\n      - targets: ['%s']\n", target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	listen := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+listen, "--log.level=warn")
	logf, _ := os.Create(filepath.Join(dir, "log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if resp, err := http.Get("http://" + listen + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Fatalf("prometheus not ready after a minute:\n%s", log)
		}
	}
	return listen
}

// waitQuery polls query until ok accepts its result (Prometheus scrapes
// every second), failing after 30 s with the last result.
func waitQuery(t *testing.T, prom, query string, ok func([]promSample) bool) []promSample {
	t.Helper()
	var got []promSample
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if got = promQuery(t, prom, query); ok(got) {
			return got
		}
	}
	t.Fatalf("%s: %v after 30 s", query, got)
	return nil
}

// ssCount counts the sockets ss lists in ns for an ss filter. ss runs from
// a thread inside ns (a child inherits its thread's namespace), not through
// `ip netns exec`, which needs a mount namespace of its own (not in a chroot).
func ssCount(t *testing.T, ns *testnet.NetNS, filter ...string) int {
	t.Helper()
	var out []byte
	var err error
	ns.Do(t, func() { out, err = exec.Command("ss", append([]string{"-Htn"}, filter...)...).Output() })
	if err != nil {
		t.Fatalf("ss %q: %v", filter, err)
	}
	return strings.Count(string(out), "\n")
}

// What a user does: Prometheus scrapes tcpstate serve; a process in a
// container leaks CLOSE_WAIT sockets, a client leaves a TIME_WAIT burst;
// Prometheus's answers match ss, and the p99 of CLOSE_WAIT time is within
// a bucket of how long the leak held them.
func TestServeWithPrometheus(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("ss (iproute2) is not installed")
	}
	ns := testnet.New(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	ln2 := ns.Listen(t, "tcp4", "127.0.0.1:0")
	target := startServe(t, "--netns", ns.Name)
	prom := startPrometheus(t, target)
	waitQuery(t, prom, `up{job="tcpstate"}`, func(s []promSample) bool { return len(s) == 1 && s[0].value == 1 })

	// The leak: a process in a container holds 7 connections whose server
	// hung up.
	const leaked = 7
	pid, release := hold(t, ns, ln.Addr().String(), leaked)
	id := containerGroup(t, pid)
	for range leaked {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	leakStart := time.Now()
	comm := testnet.SelfComm(t)
	var want int
	for deadline := time.Now().Add(10 * time.Second); want != leaked && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		want = ssCount(t, ns, "state", "close-wait")
	}
	if want != leaked {
		t.Fatalf("ss shows %d sockets in CLOSE_WAIT, want %d", want, leaked)
	}
	got := waitQuery(t, prom, fmt.Sprintf(`tcpstate_process_sockets{state="close_wait",comm=%q}`, comm),
		func(s []promSample) bool { return len(s) == 1 && s[0].value == float64(want) })
	if l := got[0].labels; l["container_id"] != id {
		t.Errorf("CLOSE_WAIT leak's labels %v, want container_id %s", l, id)
	}
	waitQuery(t, prom, `tcpstate_sockets{state="close_wait"}`, func(s []promSample) bool { return len(s) == 1 && s[0].value == float64(want) })

	// The TIME_WAIT burst: this side closes first, 25 times.
	const burst = 25
	ns.Do(t, func() {
		for range burst {
			c, err := net.Dial("tcp4", ln2.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			s, err := ln2.Accept()
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			s.Close()
		}
	})
	tw := ssCount(t, ns, "state", "time-wait", "dst", ln2.Addr().String())
	if tw != burst {
		t.Fatalf("ss shows %d sockets in TIME_WAIT to %s, want %d", tw, ln2.Addr(), burst)
	}
	waitQuery(t, prom, fmt.Sprintf(`tcpstate_timewait_sockets{remote=%q}`, ln2.Addr().String()),
		func(s []promSample) bool { return len(s) == 1 && s[0].value == float64(tw) })

	// The leak ends after ~3 s in CLOSE_WAIT: p99 of CLOSE_WAIT time is in
	// the bucket of the truth, or the next (the burst's own CLOSE_WAITs,
	// microseconds each, are below the 99th percentile).
	time.Sleep(3*time.Second - time.Since(leakStart))
	release()
	truth := time.Since(leakStart).Seconds()
	waitQuery(t, prom, `tcpstate_state_duration_seconds_count{state="close_wait"}`,
		func(s []promSample) bool { return len(s) == 1 && s[0].value >= leaked+burst })
	q := promQuery(t, prom, `histogram_quantile(0.99, tcpstate_state_duration_seconds_bucket{state="close_wait"})`)
	if len(q) != 1 {
		t.Fatalf("histogram_quantile: %v", q)
	}
	bucket := func(v float64) int { i, _ := slices.BinarySearch(metrics.DurationBuckets, v); return i }
	t.Logf("p99 of CLOSE_WAIT time %.3fs; the leak held its sockets %.3fs", q[0].value, truth)
	if p99 := q[0].value; math.IsNaN(p99) || bucket(p99) < bucket(truth)-1 || bucket(p99) > bucket(truth)+1 {
		t.Errorf("p99 of CLOSE_WAIT time %.3fs, the leak held its sockets %.3fs: not within a bucket (%v)", p99, truth, metrics.DurationBuckets)
	}
	waitQuery(t, prom, `tcpstate_process_sockets{state="close_wait"}`, func(s []promSample) bool { return len(s) == 0 })
	for _, q := range []string{`tcpstate_events_lost_total{cause="ring_buffer"}`, `tcpstate_closes_total{reason="timewait_expired"}`, `tcpstate_build_info`} {
		if s := promQuery(t, prom, q); len(s) != 1 {
			t.Errorf("%s: %v, want one series", q, s)
		}
	}
	// The shipped alert rules use metrics that exist.
	for _, name := range ruleMetrics(t) {
		if s := promQuery(t, prom, name); len(s) == 0 && name != "tcpstate_process_sockets" {
			t.Errorf("deploy/tcpstate.rules.yml uses %s: Prometheus has no such series", name)
		}
	}

	// /healthz
	resp, err := http.Get("http://" + target + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Errorf("/healthz: %d %q", resp.StatusCode, body)
	}
}

// trace --container shows only the sockets of the container's processes,
// and says in its JSON where they run.
func TestTraceContainer(t *testing.T) {
	requireRoot(t)
	ns := testnet.New(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	const n = 3
	pid, release := hold(t, ns, ln.Addr().String(), n)
	var servers []net.Conn
	for range n {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, s)
	}
	id := containerGroup(t, pid)
	wait := startCmd(t, "trace", "-o", "json", "--netns", ns.Name, "--container", id[:12], "-d", "3s")
	release() // the container's process closes first: its ends go FIN_WAIT1, FIN_WAIT2, TIME_WAIT
	for _, s := range servers {
		s.Close() // CLOSE_WAIT, LAST_ACK: this process's, not shown
	}
	r := wait()
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var events []struct {
		Old, New    string
		PID         int    `json:"pid"`
		ContainerID string `json:"container_id"`
		Cgroup      string `json:"cgroup"`
	}
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var e struct {
			Old, New    string
			PID         int    `json:"pid"`
			ContainerID string `json:"container_id"`
			Cgroup      string `json:"cgroup"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		events = append(events, e)
	}
	finWait1 := 0
	for _, e := range events {
		if e.PID != pid || e.ContainerID != id || !strings.HasSuffix(e.Cgroup, "/docker-"+id+".scope") {
			t.Errorf("event %+v: want pid %d, container_id %s and its cgroup", e, pid, id)
		}
		if e.New == "FIN_WAIT1" {
			finWait1++
		}
	}
	if finWait1 != n {
		t.Errorf("%d transitions to FIN_WAIT1 shown, want %d (the container's connections):\n%s", finWait1, n, r.stdout)
	}
}

// A process that connects, closes and exits before tcpstate has read its
// events (a health check, a cron job) is still placed in its container: the
// kernel notes the group the owner ran in, and the group outlives it.
func TestTraceContainerShortLived(t *testing.T) {
	requireRoot(t)
	ns := testnet.New(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	id, group := newContainerGroup(t)
	dir, err := os.Open(group)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	wait := startCmd(t, "trace", "-o", "json", "--netns", ns.Name, "--container", id[:12], "-d", "2s")
	// Started inside the group (clone3 CLONE_INTO_CGROUP): two connections,
	// closed at once (stdin is empty), then it exits.
	const n = 2
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "TCPSTATE_HELPER=hold", "ADDR="+ln.Addr().String(), "NETNS="+ns.Path, "COUNT="+strconv.Itoa(n))
	child.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	child.Stderr = os.Stderr
	if err := child.Run(); err != nil {
		t.Fatalf("the short-lived client: %v", err)
	}
	pid := child.Process.Pid
	for range n {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	r := wait()
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	finWait1 := 0
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var e struct {
			Old, New    string
			PID         int    `json:"pid"`
			ContainerID string `json:"container_id"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not JSON: %q\n%s", line, r.stderr)
		}
		if e.PID != pid || e.ContainerID != id {
			t.Errorf("event %+v: want pid %d and container_id %s", e, pid, id)
		}
		if e.New == "FIN_WAIT1" {
			finWait1++
		}
	}
	if finWait1 != n {
		t.Errorf("%d transitions to FIN_WAIT1 shown, want %d (the exited process's connections):\n%s", finWait1, n, r.stdout)
	}
	// A --container or --cgroup that names nothing running runs (it may
	// come), and says so.
	r = startCmd(t, "trace", "--netns", ns.Name, "--container", "deadbeef0000", "-d", "100ms")()
	if r.code != exitOK || !strings.Contains(r.stderr, "warning: --container deadbeef0000: no process of such a container or pod runs now") {
		t.Errorf("--container of nothing running: exit %d, stderr %q; want 0 and a warning", r.code, r.stderr)
	}
	r = startCmd(t, "trace", "--netns", ns.Name, "--cgroup", "/tcpstate-no-such.slice", "-d", "100ms")()
	if r.code != exitOK || !strings.Contains(r.stderr, "warning: --cgroup /tcpstate-no-such.slice: no such group under ") {
		t.Errorf("--cgroup of no group: exit %d, stderr %q; want 0 and a warning", r.code, r.stderr)
	}
}

// The systemd unit and the alert rules shipped in deploy/ are what their
// tools accept: systemd-analyze verify (with ExecStart pointing at a real
// build), promtool check rules and the rules' own unit tests.
func TestDeployFiles(t *testing.T) {
	unit, err := os.ReadFile("../../deploy/tcpstate.service")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not installed: the unit is not verified")
	} else {
		dir := t.TempDir()
		path := filepath.Join(dir, "tcpstate.service")
		if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/tcpstate", binary(t))), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
		if err != nil || len(out) > 0 { // unknown keys are only warnings
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	}
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Skip("promtool not installed (Debian's prometheus package): the rules are not checked")
	}
	for _, args := range [][]string{{"check", "rules", "tcpstate.rules.yml"}, {"test", "rules", "tcpstate.rules.test.yml"}} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = "../../deploy"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// ruleMetrics are the tcpstate metrics the shipped alert rules use.
func ruleMetrics(t *testing.T) []string {
	b, err := os.ReadFile("../../deploy/tcpstate.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range strings.FieldsFunc(string(b), func(r rune) bool { return !(r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') }) {
		if strings.HasPrefix(f, "tcpstate_") && !slices.Contains(names, f) {
			names = append(names, f)
		}
	}
	return names
}
