// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/internal/testnet"
)

func runCmd(ctx context.Context, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

type cmdResult struct {
	code           int
	stdout, stderr string
	tracing        time.Duration // from the moment it was tracing to its exit
}

// startCmd runs a command in the background and returns once it is tracing
// (attached, existing sockets walked) or has ended; the function it returns
// waits for the command's end. Loading takes 50 ms on an idle machine and
// seconds on a busy or emulated one: tests wait for it instead of sleeping.
func startCmd(t *testing.T, args ...string) func() cmdResult {
	t.Helper()
	tracing := make(chan struct{})
	var once sync.Once
	done := make(chan cmdResult, 1)
	var began time.Time // written before tracing is closed
	ctx := withReady(context.Background(), func() {
		once.Do(func() {
			began = time.Now()
			close(tracing)
		})
	})
	go func() {
		code, o, e := runCmd(ctx, args...)
		r := cmdResult{code: code, stdout: o, stderr: e}
		if !began.IsZero() {
			r.tracing = time.Since(began)
		}
		done <- r
	}()
	select {
	case <-tracing:
	case r := <-done:
		done <- r // ended before tracing: the caller sees why
	case <-time.After(2 * time.Minute):
		t.Fatalf("%q: not tracing after 2 minutes", args)
	}
	return func() cmdResult { return <-done }
}

// startBinary runs the tcpstate binary and returns once it says on stderr
// that it is running (a line containing want); the rest of stderr is
// drained meanwhile.
func startBinary(t *testing.T, want string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
	}()
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				_ = cmd.Wait()
				t.Fatalf("tcpstate %q ended before saying %q", args, want)
			}
			if strings.Contains(l, want) {
				return cmd
			}
		case <-timeout:
			_ = cmd.Process.Kill()
			t.Fatalf("tcpstate %q: no %q after 2 minutes", args, want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in stderr
	}{
		{nil, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"trace", "--state", "bogus"}, `unknown TCP state "bogus"`},
		{[]string{"trace", "--state", "close-wait,nope"}, `"nope"`},
		{[]string{"trace", "--port", "http"}, `invalid port "http"`},
		{[]string{"trace", "--lport", "70000"}, `invalid port "70000"`},
		{[]string{"trace", "--rport", "0"}, `invalid port "0"`},
		{[]string{"trace", "-o", "xml"}, `"xml"`},
		{[]string{"trace", "--addr", "10.0.0.0/40"}, `"10.0.0.0/40"`},
		{[]string{"trace", "--addr", "example.com"}, `"example.com"`},
		{[]string{"trace", "--pid", "abc"}, `invalid process ID "abc"`},
		{[]string{"trace", "--pid", "4294967295"}, "no process ID is above 4194304"},
		{[]string{"serve", "--listen", "127.0.0.1:99999"}, "a port is 0 to 65535"},
		{[]string{"serve", "--listen", "127.0.0.1:-1"}, "a port is 0 to 65535"},
		{[]string{"version", "--bogus"}, `version takes no arguments: "--bogus"`},
		{[]string{"trace", "-4", "-6"}, "exclude each other"},
		{[]string{"trace", "--ringbuf-size", "1000"}, `"1000"`},
		{[]string{"trace", "--ringbuf-size", "lots"}, `"lots"`},
		{[]string{"trace", "--duration", "soon"}, `"soon"`},
		{[]string{"trace", "--duration", "-5s"}, `"-5s"`},
		{[]string{"trace", "--netns", "no-such-namespace"}, `"no-such-namespace"`},
		{[]string{"trace", "--comm", "sixteen-chars-xx"}, "at most 15 bytes"},
		{[]string{"trace", "--no-such-flag"}, "no-such-flag"},
		{[]string{"trace", "extra"}, "takes no arguments"},
		{[]string{"verify", "--expect", "keepalive_time=soon"}, `"keepalive_time=soon"`},
		{[]string{"verify", "--expect", "rmem=1"}, `"rmem"`},
		{[]string{"verify", "--state", "close-wait"}, "does not apply to verify"},
		{[]string{"watch", "--interval", "0"}, "--interval must be positive"},
		{[]string{"watch", "--max-connections", "0"}, "--max-connections 0"},
		{[]string{"trace", "-r", "/nonexistent.tcpstate", "--max-connections", "0"}, "--max-connections 0"},
		// A filter given empty is not the absence of the filter.
		{[]string{"trace", "--port", ""}, "--port: empty value"},
		{[]string{"trace", "--port", ","}, "--port: empty value"},
		{[]string{"trace", "--lport", " , "}, "--lport: empty value"},
		{[]string{"watch", "--rport", ""}, "--rport: empty value"},
		{[]string{"trace", "--addr", ""}, "--addr: empty value"},
		{[]string{"trace", "--state", ""}, "--state: empty value"},
		{[]string{"record", "-w", "x", "--state", ","}, "--state: empty value"},
		{[]string{"trace", "--pid", ""}, "--pid: empty value"},
		{[]string{"report", "--comm", "", "f"}, "--comm: empty value"},
		{[]string{"trace", "--netns", ""}, "--netns: empty value"},
		{[]string{"trace", "-r", ""}, "--read: empty file name"},
		{[]string{"trace", "-w", ""}, "--write: empty file name"},
		{[]string{"watch", "--top", "-5"}, "--top -5"},
		{[]string{"watch", "--container", ""}, "--container: empty value"},
		{[]string{"trace", "--container", "ab"}, "--container \"ab\": give at least 4 digits"},
		{[]string{"trace", "-r", "x", "--cgroup", "/system.slice"}, "not with -r/--read"},
		{[]string{"record", "-w", "x", "--container", "abcd"}, "unknown flag: --container"},
		{[]string{"serve", "--top", "0"}, "--top 0: want 1 to 1000"},
		{[]string{"serve", "--top-remotes", "5000"}, "--top-remotes 5000"},
		{[]string{"serve", "--listen", "nonsense"}, "--listen \"nonsense\": want host:port"},
		{[]string{"serve", "x"}, "serve takes no arguments"},
		{[]string{"report", "--html", "", "f"}, "--html: empty file name"},
		{[]string{"trace", "--netns", "/etc/passwd"}, `"/etc/passwd" is not a namespace`},
		{[]string{"trace", "--max-timewait", "10000000"}, "--max-timewait 10000000: must be between 1 and"},
		{[]string{"trace", "--max-timewait", "4294967297"}, "--max-timewait 4294967297"},
		{[]string{"watch", "--max-connections", "2000000000"}, "--max-connections 2000000000: at most"},
		{[]string{"record", "-w", "x", "--max-size", "10K"}, "--max-size 10K: at least 64K"},
		{[]string{"trace", "--ringbuf-size", "150M"}, `--ringbuf-size "150M": must be a power of two`},
	} {
		code, stdout, stderr := runCmd(context.Background(), tc.args...)
		if code != exitUsage {
			t.Errorf("%q: exit %d, want %d", tc.args, code, exitUsage)
		}
		if !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: stderr %q does not name %q", tc.args, stderr, tc.want)
		}
		if strings.Contains(stderr, "panic") || strings.Count(stderr, "\n") > 2 && len(tc.args) > 0 {
			t.Errorf("%q: stderr is not one clear line: %q", tc.args, stderr)
		}
		if stdout != "" {
			t.Errorf("%q: wrote to stdout: %q", tc.args, stdout)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		code, stdout, _ := runCmd(context.Background(), args...)
		if code != exitOK || !strings.Contains(stdout, "Commands:") {
			t.Errorf("%q: exit %d, stdout %q", args, code, stdout)
		}
	}
	for _, args := range [][]string{{"trace", "--help"}, {"help", "trace"}, {"trace", "-h"}} {
		code, stdout, _ := runCmd(context.Background(), args...)
		if code != exitOK || !strings.Contains(stdout, "--state") || !strings.Contains(stdout, "Usage: tcpstate trace") {
			t.Errorf("%q: exit %d, stdout %q", args, code, stdout)
		}
	}
	code, stdout, _ := runCmd(context.Background(), "version")
	if code != exitOK || !strings.HasPrefix(stdout, "tcpstate ") {
		t.Errorf("version: exit %d, %q", code, stdout)
	}
}

var updateREADME = flag.Bool("update-readme", false, "rewrite the usage sections of README.md from the real --help")

// The usage in README.md is the real --help: the sections between
// <!-- help:CMD --> and <!-- /help:CMD --> markers.
func TestREADMEShowsRealHelp(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	traceFS, _ := newTraceFlags()
	watchFS, _ := newWatchFlags()
	verifyFS, _ := newVerifyFlags()
	recordFS, _ := newRecordFlags()
	reportFS, _ := newReportFlags()
	checkFS, _ := newCheckFlags()
	serveFS, _ := newServeFlags()
	updated := string(readme)
	for _, sec := range []struct{ name, cmd, help string }{
		{"main", "tcpstate --help", mainUsage},
		{"trace", "tcpstate trace --help", traceHelp(traceFS)},
		{"watch", "tcpstate watch --help", watchHelp(watchFS)},
		{"verify", "tcpstate verify --help", verifyHelp(verifyFS)},
		{"record", "tcpstate record --help", recordHelp(recordFS)},
		{"report", "tcpstate report --help", reportHelp(reportFS)},
		{"serve", "tcpstate serve --help", serveHelp(serveFS)},
		{"check", "tcpstate check --help", checkHelp(checkFS)},
	} {
		begin, end := "<!-- help:"+sec.name+" -->\n", "<!-- /help:"+sec.name+" -->"
		i, j := strings.Index(updated, begin), strings.Index(updated, end)
		if i < 0 || j < i {
			t.Errorf("README.md has no %s...%s section", strings.TrimSpace(begin), end)
			continue
		}
		want := "```\n$ " + sec.cmd + "\n" + sec.help + "```\n"
		if updated[i+len(begin):j] != want {
			if !*updateREADME {
				t.Errorf("README.md's %s section is not the real %s; run: go test ./cmd/tcpstate -run README -update-readme", sec.name, sec.cmd)
			}
			updated = updated[:i+len(begin)] + want + updated[j:]
		}
	}
	if *updateREADME && updated != string(readme) {
		if err := os.WriteFile("../../README.md", []byte(updated), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds tcpstate into a directory any user may enter.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tcpstate-test-")
		if err != nil {
			buildErr = err
			return
		}
		_ = os.Chmod(dir, 0o755)
		binPath = filepath.Join(dir, "tcpstate")
		if bin := os.Getenv("TCPSTATE_BIN"); bin != "" {
			binPath = bin // scripts/vmtest: built for the VM, which has no Go
			return
		}
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = err
			t.Logf("%s", out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building tcpstate: %v", buildErr)
	}
	return binPath
}

// Without privileges: one clear line and exit 1. As root the test drops to
// the nobody user to see it.
func TestWithoutPrivileges(t *testing.T) {
	cmd := exec.Command(binary(t), "trace")
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitError {
		t.Fatalf("exit: %v, want %d; stderr %q", err, exitError, stderr.String())
	}
	if got := stderr.String(); !strings.Contains(got, "needs root") || !strings.Contains(got, "CAP_BPF") || strings.Count(got, "\n") != 1 {
		t.Errorf("stderr %q: want one line saying root (CAP_BPF, CAP_PERFMON) is needed", got)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root (CAP_BPF and CAP_PERFMON) to load the tracer; run `go test` as root")
	}
}

// check loads and attaches everything, names each feature, and takes the
// kernel's types from --btf when asked (for kernels that ship BTF apart).
func TestCheck(t *testing.T) {
	requireRoot(t)
	code, stdout, stderr := runCmd(context.Background(), "check", "-o", "json", "--btf", "/sys/kernel/btf/vmlinux")
	if code != exitOK {
		t.Fatalf("exit %d: %s%s", code, stdout, stderr)
	}
	var rep checkReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("not one JSON object: %v: %q", err, stdout)
	}
	names := map[string]bool{}
	for _, f := range rep.Features {
		names[f.Name] = true
		if f.Detail == "" {
			t.Errorf("feature %s has no detail", f.Name)
		}
	}
	for _, n := range []string{"transitions", "timewait", "keepalive", "timewait walk", "start-up walk"} {
		if !names[n] {
			t.Errorf("no feature %q in %s", n, stdout)
		}
	}
	if !rep.Usable || rep.Kernel == "" {
		t.Errorf("report %+v", rep)
	}
	// The test machines have their kernel's config (and on most, jiffies
	// to measure): HZ is known, not assumed.
	if rep.HZ == 0 || !strings.HasPrefix(rep.HZFrom, "the kernel config") {
		t.Errorf("hz %d from %q, want the kernel config's", rep.HZ, rep.HZFrom)
	}
	code, stdout, _ = runCmd(context.Background(), "check", "-o", "json", "--btf", "/nonexistent/vmlinux")
	if code != exitError || !strings.Contains(stdout, `"usable":false`) || !strings.Contains(stdout, "--btf /nonexistent/vmlinux does not exist") {
		t.Errorf("without BTF: exit %d, %s", code, stdout)
	}
}

// A --btf file that is missing, or is not BTF: one line naming the file.
func TestMissingBTF(t *testing.T) {
	requireRoot(t)
	notBTF := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(notBTF, []byte("root:x:0:0::/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"/nonexistent/vmlinux": "--btf /nonexistent/vmlinux does not exist",
		notBTF:                 "--btf " + notBTF + " is not a BTF file",
	} {
		code, _, stderr := runCmd(context.Background(), "trace", "--btf", file)
		if code != exitError || !strings.Contains(stderr, want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("--btf %s: exit %d, stderr %q; want one line with %q", file, code, stderr, want)
		}
	}
}

// connectAndClose makes one connection to a fresh listener and closes both
// ends, server first, and returns the listener's port.
func connectAndClose(t *testing.T) int {
	t.Helper()
	port, _ := connectAndCloseTimed(t)
	return port
}

// closeWaitHold is how long connectAndClose's client waits before close().
const closeWaitHold = 50 * time.Millisecond

// connectAndCloseTimed is connectAndClose, also returning the span the test
// measured around the client's CLOSE_WAIT: from before the server's close()
// to after the client's. On any machine, however busy, the client's
// CLOSE_WAIT lasts at least closeWaitHold and at most that span.
func connectAndCloseTimed(t *testing.T) (port int, span time.Duration) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	s.Close()
	time.Sleep(closeWaitHold)
	c.Close()
	return ln.Addr().(*net.TCPAddr).Port, time.Since(begin)
}

// traceWhile runs `tcpstate trace args...` for d from the moment it is
// tracing, running load then.
func traceWhile(t *testing.T, d time.Duration, load func(), args ...string) (int, string, string) {
	t.Helper()
	wait := startCmd(t, append(append([]string{"trace"}, args...), "-d", d.String())...)
	load()
	r := wait()
	return r.code, r.stdout, r.stderr
}

func TestTraceJSON(t *testing.T) {
	requireRoot(t)
	var port int
	code, stdout, stderr := traceWhile(t, 3*time.Second, func() { port = connectAndClose(t) }, "-o", "json", "-4")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var client, server []string
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var ev struct {
			Type       string `json:"type"`
			Family     string `json:"family"`
			Sport      int    `json:"sport"`
			Dport      int    `json:"dport"`
			Old        string `json:"old"`
			New        string `json:"new"`
			PID        *int   `json:"pid"`
			DurationNS *int64 `json:"duration_ns"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		if ev.Family != "ipv4" {
			t.Errorf("-4 let through %q", line)
		}
		if ev.Type != "state" {
			continue // keepalive: Go enables it on every socket
		}
		tr := ev.Old + "->" + ev.New
		switch {
		case ev.Dport == port:
			client = append(client, tr)
		case ev.Sport == port && ev.Dport != 0:
			server = append(server, tr)
		default:
			continue
		}
		if ev.PID == nil || *ev.PID != os.Getpid() {
			t.Errorf("owner of %q is not this process (%d)", line, os.Getpid())
		}
	}
	if got := strings.Join(client, " "); got != "CLOSE->SYN_SENT SYN_SENT->ESTABLISHED ESTABLISHED->CLOSE_WAIT CLOSE_WAIT->LAST_ACK LAST_ACK->CLOSE" {
		t.Errorf("client: %s", got)
	}
	// The server's FIN_WAIT2 goes on in a timewait socket (and may turn TIME_WAIT there).
	if got := strings.TrimSuffix(strings.Join(server, " "), " FIN_WAIT2->TIME_WAIT"); got != "LISTEN->SYN_RECV SYN_RECV->ESTABLISHED ESTABLISHED->FIN_WAIT1 FIN_WAIT1->FIN_WAIT2" {
		t.Errorf("server: %s", got)
	}
	if !strings.Contains(stderr, "events seen") || !strings.Contains(stderr, " 0 lost") {
		t.Errorf("summary: %q", stderr)
	}
}

// A dual-stack listener older than tcpstate ([::], as Go's net.Listen(":port")
// makes) names the owner of the IPv4 connections it accepts under -4 or
// --addr 127.0.0.1, which exclude the listener itself.
func TestFilteredChildrenOfOldDualStackListenerNamed(t *testing.T) {
	requireRoot(t)
	for _, filter := range [][]string{{"-4"}, {"--addr", "127.0.0.1"}} {
		t.Run(strings.Join(filter, " "), func(t *testing.T) {
			ns := testnet.New(t)
			ln := ns.Listen(t, "tcp", "[::]:0")
			port := ln.Addr().(*net.TCPAddr).Port
			args := append([]string{"-o", "json", "--netns", ns.Name}, filter...)
			code, stdout, stderr := traceWhile(t, 2*time.Second, func() {
				c := ns.Dial(t, "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
				s, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
				c.Close()
			}, args...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var server []string
			for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
				var ev struct {
					Type  string `json:"type"`
					Sport int    `json:"sport"`
					Dport int    `json:"dport"`
					Old   string `json:"old"`
					New   string `json:"new"`
					PID   *int   `json:"pid"`
				}
				if err := json.Unmarshal([]byte(line), &ev); err != nil {
					t.Fatalf("not JSON: %q: %v", line, err)
				}
				if ev.Type != "state" || ev.Sport != port || ev.Dport == 0 {
					continue
				}
				server = append(server, ev.Old+"->"+ev.New)
				if ev.PID == nil || *ev.PID != os.Getpid() {
					t.Errorf("owner of the accepted socket's %q is not this process (%d)", line, os.Getpid())
				}
			}
			if len(server) < 2 || server[0] != "LISTEN->SYN_RECV" {
				t.Errorf("the accepted socket's transitions: %v", server)
			}
		})
	}
}

func TestTraceTextStateFilter(t *testing.T) {
	requireRoot(t)
	var port int
	code, stdout, stderr := traceWhile(t, 3*time.Second, func() { port = connectAndClose(t) }, "--state", "close-wait", "--comm", testnet.SelfComm(t))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if !strings.HasPrefix(lines[0], "TIME ") {
		t.Errorf("no header: %q", lines[0])
	}
	// Other processes of the same name may run meanwhile (another test
	// binary): they pass --comm, and their sockets in CLOSE_WAIT pass --state,
	// keepalive events included (those name the timer, not the state).
	comm := testnet.SelfComm(t)
	shown := comm[:min(8, len(comm))] // the text COMM column is 8 wide
	var ours int
	for _, l := range lines[1:] {
		if !strings.Contains(l, " "+shown) {
			t.Errorf("--comm %s let through %q", comm, l)
		}
		if !strings.Contains(l, "CLOSE_WAIT") && !strings.Contains(l, " keepalive ") {
			t.Errorf("--state close-wait let through %q", l)
		}
		if strings.Contains(l, "127.0.0.1:"+strconv.Itoa(port)) && !strings.Contains(l, " keepalive ") {
			ours++
		}
	}
	if ours != 2 {
		t.Errorf("%d lines for our connection, want ESTABLISHED -> CLOSE_WAIT and CLOSE_WAIT -> LAST_ACK:\n%s", ours, stdout)
	}
	// stderr: the kernel's warnings (older kernels lack some hooks), then
	// one summary line.
	errLines := strings.Split(strings.TrimSpace(stderr), "\n")
	for _, l := range errLines[:len(errLines)-1] {
		if !strings.HasPrefix(l, "tcpstate: warning: ") {
			t.Errorf("stderr line %q is neither a warning nor the summary", l)
		}
	}
	if summary := errLines[len(errLines)-1]; !strings.Contains(summary, "shown") {
		t.Errorf("summary: %q", summary)
	}
}

// SIGINT ends a trace cleanly: exit 0 and the summary.
func TestInterrupt(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command(binary(t), "trace", "--port", "9")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	_ = cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after SIGINT: %v; stderr %q", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "events seen") {
		t.Errorf("no summary: %q", stderr.String())
	}
}

// A live trace whose stdout nobody reads (a stalled pipe) still stops at
// Ctrl-C: within the second's grace, not never.
func TestInterruptWithStalledStdout(t *testing.T) {
	requireRoot(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	cmd := exec.Command(binary(t), "trace", "--port", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close() // read only until the first event shows tracing
	cmd.Stdout = w
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	defer func() { _ = cmd.Process.Kill() }()
	// Tracing once a connection of the port shows (seconds, emulated).
	port := []byte(":" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	var seen []byte
	for deadline := time.Now().Add(2 * time.Minute); !bytes.Contains(seen, port); {
		if time.Now().After(deadline) {
			t.Fatalf("no event of the port after 2 minutes; stdout %q", seen)
		}
		if c, err := net.Dial("tcp4", ln.Addr().String()); err == nil {
			c.Close()
		}
		buf := make([]byte, 4096)
		_ = r.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _ := r.Read(buf)
		seen = append(seen, buf[:n]...)
	}
	// Then nobody reads: far more lines than a pipe holds (64 KiB).
	for range 2000 {
		if c, err := net.Dial("tcp4", ln.Addr().String()); err == nil {
			c.Close()
		}
	}
	time.Sleep(500 * time.Millisecond)
	_ = cmd.Process.Signal(os.Interrupt)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatalf("still running 5 s after Ctrl-C with stdout stalled; stderr:\n%s", stderr.String())
	}
	// It says so, with what the kernel side counted (its summary is
	// behind the stalled write).
	if !regexp.MustCompile(`does not drain .*; [1-9][0-9]* seen in kernel, [0-9]+ filtered in kernel, [0-9]+ lost`).MatchString(stderr.String()) {
		t.Errorf("no line with the kernel side's counts on stderr:\n%s", stderr.String())
	}
}

// With CAP_BPF and CAP_PERFMON only (as `setcap cap_bpf,cap_perfmon+ep`
// gives), tcpstate runs and names, one warning each, what the capabilities
// it lacks cost.
func TestCapabilitiesOnly(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command(binary(t), "check")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: 65534, Gid: 65534},
		AmbientCaps: []uintptr{39 /* CAP_BPF */, 38 /* CAP_PERFMON */},
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if strings.Contains(err.Error(), "operation not permitted") {
			t.Skipf("cannot start a process with ambient capabilities here: %v", err)
		}
		t.Fatalf("check with CAP_BPF and CAP_PERFMON: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String() + stderr.String()
	for _, want := range []string{"no CAP_SYS_ADMIN", "no CAP_SYSLOG", "no CAP_SYS_PTRACE"} {
		if !strings.Contains(out, want) {
			t.Errorf("no warning %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "kptr_restrict?") {
		t.Errorf("blames kptr_restrict:\n%s", out)
	}
	// Its own namespace needs no CAP_SYS_ADMIN: the walk reads it.
	if !regexp.MustCompile(`start-up walk +yes`).MatchString(out) {
		t.Errorf("the start-up walk failed with capabilities only:\n%s", out)
	}
}

// A --pid or --netns that names nothing on this host now is taken (a process's
// sockets outlive it; a namespace may be held by an open file only), with a
// warning that says so; one that names something gets none.
func TestFiltersNamingNothingWarn(t *testing.T) {
	requireRoot(t)
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	gonePID := strconv.Itoa(exited.Process.Pid)
	held := netnsHeldByFile(t)
	own, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ownNetNS := strconv.FormatUint(own.Sys().(*syscall.Stat_t).Ino, 10)
	for _, c := range []struct {
		name string
		args []string
		warn string // "": none
	}{
		{"process gone", []string{"--pid", gonePID}, "warning: --pid " + gonePID + ": no such process runs now"},
		{"process running", []string{"--pid", strconv.Itoa(os.Getpid())}, ""},
		{"no such namespace", []string{"--netns", "12345"}, "warning: --netns 12345: no process runs in, mounts or holds open a network namespace with this inode"},
		{"own namespace", []string{"--netns", ownNetNS}, ""},
		{"namespace only a file holds", []string{"--netns", strconv.FormatUint(uint64(held), 10)}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCmd(context.Background(), append([]string{"watch", "--once", "-o", "json"}, c.args...)...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			// (the tracer's own warnings aside: an older kernel's, a
			// capability's)
			mine := strings.Contains(stderr, "warning: --pid") || strings.Contains(stderr, "warning: --netns")
			if c.warn == "" && mine || c.warn != "" && !strings.Contains(stderr, c.warn) {
				t.Errorf("stderr %q, want warning %q", stderr, c.warn)
			}
		})
	}
}

// netnsHeldByFile makes a network namespace that no process runs in and
// nothing mounts: only an open file of this process holds it, until the test
// ends.
func netnsHeldByFile(t *testing.T) uint32 {
	t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	f, err := os.Open("/proc/thread-self/ns/net")
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// (the thread stays locked: the runtime ends it with the test)
		t.Fatalf("back to the test's namespace: %v", err)
	}
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return uint32(st.Sys().(*syscall.Stat_t).Ino)
}

// A live trace shows its header as soon as it runs, not with its first event
// (which may be long in coming): here, none comes. JSON has no header.
func TestTraceHeaderBeforeEvents(t *testing.T) {
	requireRoot(t)
	ns := testnet.New(t) // (nothing happens in it)
	for _, c := range []struct {
		args []string
		want string // the first line; "": no output
	}{
		{nil, "TIME        PID COMM     LPORT REMOTE             DUR TRANSITION"},
		{[]string{"--timeline"}, "END         PID COMM     LOCAL                 REMOTE                STATES"},
		{[]string{"-W"}, "TIME               PID     TID COMM"},
		{[]string{"--no-header"}, ""},
		{[]string{"-o", "json"}, ""},
	} {
		code, stdout, stderr := runCmd(context.Background(), append([]string{"trace", "-d", "300ms", "--netns", ns.Name}, c.args...)...)
		if code != exitOK {
			t.Fatalf("%q: exit %d: %s", c.args, code, stderr)
		}
		if c.want == "" && stdout != "" || c.want != "" && !strings.HasPrefix(stdout, c.want) || strings.Count(stdout, "\n") > 1 {
			t.Errorf("%q: stdout %q, want %q and nothing else", c.args, stdout, c.want)
		}
	}
}
