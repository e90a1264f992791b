// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/internal/testnet"
)

// svgText is the text an SVG chart draws.
var svgText = regexp.MustCompile(`<text[^>]*>([^<]*)</text>`)

// debianTool finds program bin, installing Debian's package pkg as a user
// would when it is missing (the tests run as root); without apt-get, the
// test is skipped.
func debianTool(t *testing.T, bin, pkg string) string {
	t.Helper()
	if path, err := exec.LookPath(bin); err == nil {
		return path
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skipf("%s is not installed, and there is no apt-get to install it (Debian's %s package)", bin, pkg)
	}
	t.Logf("installing Debian's %s package", pkg)
	cmd := exec.Command("sh", "-c", "apt-get update -qq && apt-get install -y -qq --no-install-recommends "+pkg)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("installing %s: %v\n%s", pkg, err, out)
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// headless runs chromium on a local file with the flags a closed network
// needs; extra says what to do (--screenshot, --dump-dom).
func headless(t *testing.T, bin, page string, extra ...string) (stdout, stderr string) {
	t.Helper()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir(), "--enable-logging=stderr", "--v=0"}, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "file://"+page)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %q: %v\n%s", extra, err, e.String())
	}
	return o.String(), e.String()
}

// A postmortem as a person looks at it: a capture of a CLOSE_WAIT leak, a
// TIME_WAIT burst and a keepalive kill, reported as HTML, opened in
// headless Chromium: no console errors, every chart drawn with its title,
// and the numbers of the incident on the charts.
func TestReportHTML(t *testing.T) {
	requireRoot(t)
	// No TIME_WAIT reuse (on by default for loopback): once the wall clock's
	// second turns, a later connection of the burst below may take the port
	// of an earlier one's TIME_WAIT and kill it, and the burst's peak is then
	// short of its 20 (18 in a CI run under load).
	ns := testnet.New(t, "net.ipv4.tcp_tw_reuse=0")
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	dir := t.TempDir()
	capPath := filepath.Join(dir, "incident.tcpstate")
	wait := startCmd(t, "record", "-w", capPath, "--netns", ns.Name, "-d", "7s", "--sysctl-interval", "500ms")

	// The leak: a process keeps 6 connections its server hung up.
	const leaked = 6
	pid, _ := hold(t, ns, ln.Addr().String(), leaked)
	for range leaked {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	// An operator's change, marked on the time axis.
	time.Sleep(600 * time.Millisecond)
	ns.Sysctl(t, "net.ipv4.tcp_fin_timeout=7")
	time.Sleep(600 * time.Millisecond)
	// The burst: this side closes first, 20 times: 20 TIME_WAIT.
	const burst = 20
	ns.Do(t, func() {
		for range burst {
			c, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			time.Sleep(20 * time.Millisecond) // the server's FIN after ours
			s.Close()
		}
	})
	// The kill: keepalive after 1 s, one probe, and nothing answers.
	var ka net.Conn
	ns.Do(t, func() {
		d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 1}}
		var err error
		if ka, err = d.Dial("tcp4", ln.Addr().String()); err != nil {
			t.Fatal(err)
		}
	})
	defer ka.Close()
	kaSrv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer kaSrv.Close()
	time.Sleep(300 * time.Millisecond)
	ns.LoopbackDown(t)
	if r := wait(); r.code != exitOK {
		t.Fatalf("record: exit %d: %s", r.code, r.stderr)
	}

	page := filepath.Join(dir, "report.html")
	code, _, stderr := runCmd(context.Background(), "report", capPath, "--html", page)
	if code != exitOK {
		t.Fatalf("report --html: exit %d: %s", code, stderr)
	}
	// Never over a capture, the one read or another.
	other := filepath.Join(dir, "other.tcpstate")
	if err := os.Link(capPath, other); err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(dir, "copy.tcpstate")
	data, _ := os.ReadFile(capPath)
	if err := os.WriteFile(copyPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{capPath, other, copyPath} {
		code, _, stderr := runCmd(context.Background(), "report", capPath, "--html", out)
		if code != exitError || !strings.Contains(stderr, "refusing to write over it") {
			t.Errorf("report %s --html %s: exit %d, %q; want a refusal", capPath, out, code, stderr)
		}
		if b, _ := os.ReadFile(out); !bytes.Equal(b, data) {
			t.Errorf("%s changed", out)
		}
	}

	html, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(page); fi.Mode().Perm() != 0o600 {
		t.Errorf("page mode %v, want 0600 (addresses and process names)", fi.Mode().Perm())
	}
	if len(html) > 3<<20 {
		t.Errorf("page is %d bytes", len(html))
	}
	for _, bad := range []string{"<script", `src="http`, `href="http`, "url(http", "<link", "@import"} {
		if bytes.Contains(html, []byte(bad)) {
			t.Errorf("page has %q: it must open offline, on its own", bad)
		}
	}

	bin := debianTool(t, "chromium", "chromium")
	dom, logs := headless(t, bin, page, "--dump-dom", "--virtual-time-budget=2000")
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "CONSOLE") || strings.Contains(line, "Uncaught") {
			t.Errorf("console: %s", line)
		}
	}
	// Each chart, in the page as Chromium parsed it, with its title and drawn content.
	section := regexp.MustCompile(`(?s)<section class="chart" id="([a-z]+)">(.*?)</section>`)
	found := map[string]string{}
	for _, m := range section.FindAllStringSubmatch(dom, -1) {
		found[m[1]] = m[2]
	}
	// The peaks: the leak's CLOSE_WAITs, plus the one server end of the
	// burst that waits 20 ms in CLOSE_WAIT at a time; the burst's TIME_WAITs.
	want := map[string][]string{
		"states": {"Sockets per state over time", fmt.Sprintf("CLOSE_WAIT (peak %d)", leaked+1), fmt.Sprintf("TIME_WAIT (peak %d)", burst),
			"fin_timeout 60→7"},
		"durations":   {fmt.Sprintf("CLOSE_WAIT: %d sockets", burst), "p50", "SYN_SENT"},
		"closewait":   {"CLOSE_WAIT holders over time", fmt.Sprintf("%d %s", pid, testnet.SelfComm(t))},
		"connections": {"Longest-lingering connections", "CLOSE_WAIT"},
		"closes":      {"Closes by reason over time", "timeout"},
		"keepalive":   {"Keepalive probes, keepalive kills and resets sent over time", "keepalive kills"},
	}
	for id, texts := range want {
		body, ok := found[id]
		if !ok {
			t.Errorf("chart %q missing", id)
			continue
		}
		if !strings.Contains(body, "<h2>") {
			t.Errorf("chart %q has no title", id)
		}
		if n := strings.Count(body, "<path"); n < 10 {
			t.Errorf("chart %q: %d paths drawn", id, n)
		}
		var drawn []string
		for _, m := range svgText.FindAllStringSubmatch(body, -1) {
			drawn = append(drawn, m[1])
		}
		for _, s := range texts {
			if !slices.ContainsFunc(drawn, func(d string) bool { return strings.Contains(d, s) }) {
				t.Errorf("chart %q: no %q in its text %q", id, s, drawn)
			}
		}
	}

	if t.Failed() {
		// What the capture holds of the closes, to tell the kernel's doing
		// from the report's.
		_, out, _ := runCmd(context.Background(), "trace", "-r", capPath)
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "WAIT") || strings.Contains(l, "LAST_ACK") || strings.Contains(l, "lost") {
				lines = append(lines, l)
			}
		}
		t.Logf("the capture's closes:\n%s", strings.Join(lines, "\n"))
	}
	if !strings.Contains(dom, fmt.Sprintf("netns %d  net.ipv4.tcp_fin_timeout: 60 → 7", ns.Inode)) &&
		!strings.Contains(dom, fmt.Sprintf("netns %d  fin_timeout: 60 → 7", ns.Inode)) {
		t.Errorf("no sysctl change listed for netns %d", ns.Inode)
	}

	// What a person sees: a screenshot, not blank where the charts are.
	shot := filepath.Join(dir, "report.png")
	headless(t, bin, page, "--screenshot="+shot, "--window-size=1200,2400")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	b := img.Bounds()
	inked := 0
	for y := b.Min.Y; y < b.Max.Y; y += 4 {
		for x := b.Min.X; x < b.Max.X; x += 4 {
			if r, g, bl, _ := img.At(x, y).RGBA(); r < 0xf000 || g < 0xf000 || bl < 0xf000 {
				inked++
			}
		}
	}
	if total := (b.Dx() / 4) * (b.Dy() / 4); inked < total/20 {
		t.Errorf("screenshot mostly blank: %d of %d sampled pixels not white", inked, total)
	}
	if out := os.Getenv("TCPSTATE_SCREENSHOT"); out != "" {
		data, _ := os.ReadFile(shot)
		_ = os.WriteFile(out, data, 0o644)
	}
}
