// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/internal/testnet"
	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/tracer"
)

// placeFields are the JSON fields only a live trace has.
var placeFields = regexp.MustCompile(`,"(cgroup|container_id|pod_uid|unit)":"[^"]*"`)

// Trace and record the same scenario at once: the replay prints exactly what
// the live trace printed, timestamps included.
func TestReplayEqualsLive(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "c.tcpstate")
	code, live, stderr := traceWhile(t, 3*time.Second, func() {
		connectAndClose(t)
		if c, err := net.Dial("tcp4", "127.0.0.1:1"); err == nil {
			c.Close()
		}
	}, "-o", "json", "-w", path)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("capture %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	code, replayed, stderr := runCmd(context.Background(), "trace", "-r", path, "-o", "json")
	if code != exitOK {
		t.Fatalf("replay: exit %d: %s", code, stderr)
	}
	// Where the owners run is looked up on this host, live only: a
	// capture carries no cgroup (README, "JSON output").
	live = placeFields.ReplaceAllString(live, "")
	if live == "" || replayed != live {
		t.Fatalf("replay differs from live:\n--- live\n%s--- replay\n%s", live, replayed)
	}
	// Filters and renderers apply to captures as to live tracing.
	code, text, _ := runCmd(context.Background(), "trace", "-r", path, "--state", "syn-sent", "--no-header")
	if code != exitOK || !strings.Contains(text, "SYN_SENT -> CLOSE (refused)") || strings.Contains(text, "LISTEN") {
		t.Errorf("filtered text replay (exit %d):\n%s", code, text)
	}
	code, rep, _ := runCmd(context.Background(), "report", "-o", "json", path)
	var r struct {
		Transitions map[string]int `json:"transitions"`
		Reasons     map[string]int `json:"close_reasons"`
	}
	if err := json.Unmarshal([]byte(rep), &r); code != exitOK || err != nil {
		t.Fatalf("report: exit %d, %v", code, err)
	}
	if r.Transitions["CLOSE -> SYN_SENT"] < 2 || r.Reasons["refused"] < 1 {
		t.Errorf("report: %+v", r)
	}
}

func TestReadingBadFiles(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, nil, 0o600)
	for _, path := range []string{empty, "/etc/hostname", dir, filepath.Join(dir, "missing")} {
		for _, args := range [][]string{{"trace", "-r", path}, {"report", path}} {
			code, stdout, stderr := runCmd(context.Background(), args...)
			if code != exitError || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, path) || stdout != "" {
				t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
			}
		}
	}
}

// churn makes short loopback connections until stop is closed.
func churn(t *testing.T, stop chan struct{}) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Error(err)
		return
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
	for {
		select {
		case <-stop:
			return
		default:
		}
		if c, err := net.Dial("tcp4", ln.Addr().String()); err == nil {
			c.Close()
		}
	}
}

// A recorder killed with SIGKILL under load leaves a file whose complete
// blocks all read back.
func TestRecordSurvivesSIGKILL(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "killed.tcpstate")
	cmd := startBinary(t, "recording to", "record", "-w", path)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { churn(t, stop); close(done) }()
	time.Sleep(2500 * time.Millisecond) // churn meanwhile: the kill comes mid-block
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	close(stop)
	<-done
	rd, f, err := capture.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n int
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Event != nil {
			n++
		}
	}
	for _, w := range rd.Warnings() {
		if !strings.HasPrefix(w, "truncated at offset") {
			t.Errorf("damage other than the block being written: %s (%d events back)", w, n)
		}
	}
	if len(rd.Warnings()) > 1 || n < 1000 {
		t.Errorf("%d events back, warnings %v", n, rd.Warnings())
	}
	t.Logf("%d events read back after SIGKILL; %v", n, rd.Warnings())
}

// The flight recorder writes nothing until SIGUSR1, then the latest events.
func TestFlightRecorderDumpsOnSIGUSR1(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "flight.tcpstate")
	cmd := startBinary(t, "flight recorder running", "record", "--flight-recorder", "--keep-time", "10s", "-w", path)
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	connectAndClose(t)
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(path); err == nil {
		t.Fatal("the flight recorder wrote before being asked")
	}
	_ = cmd.Process.Signal(syscall.SIGUSR1)
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no file after SIGUSR1")
		}
		time.Sleep(50 * time.Millisecond)
	}
	code, out, stderr := runCmd(context.Background(), "trace", "-r", path, "--no-header", "--comm", testnet.SelfComm(t))
	if code != exitOK || !strings.Contains(out, "CLOSE -> SYN_SENT") {
		t.Errorf("replay of the dump: exit %d\n%s%s", code, out, stderr)
	}
	first, _ := os.ReadFile(path)
	// The next dump, and the exit's, keep the first: FILE.1, then FILE.2.
	_ = cmd.Process.Signal(syscall.SIGUSR1)
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(path + ".1"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no FILE.1 after the second SIGUSR1")
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("flight recorder exit: %v", err)
	}
	if kept, err := os.ReadFile(path + ".2"); err != nil || !bytes.Equal(kept, first) {
		t.Errorf("the first dump is not FILE.2 after two more (%v)", err)
	}
}

// record and trace -w refuse, before loading anything, to write a capture
// through a symbolic link, over a device, or where no file can be made: one
// line, exit 1, and what is there untouched. No root needed.
func TestCapturePathsRefused(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "passwd")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "x")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"record", "-w", link},
		{"record", "--flight-recorder", "-w", link},
		{"record", "--flight-recorder", "-w", "/dev/null"},
		{"record", "-w", "/dev/null"},
		{"record", "--flight-recorder", "-w", filepath.Join(dir, "missing", "c")},
		{"trace", "-w", link},
	} {
		code, stdout, stderr := runCmd(context.Background(), args...)
		if code != exitError || stdout != "" || strings.Count(stderr, "\n") != 1 ||
			!strings.Contains(stderr, "symbolic link") && !strings.Contains(stderr, "not a regular file") && !strings.Contains(stderr, "cannot write") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("written through the link: %q", b)
	}
}

// A dump that cannot be written (here: a directory stands where the file
// goes) keeps the events in memory and the recorder running; SIGHUP (the
// terminal closed) ends it like SIGTERM, writing what it holds.
func TestFlightRecorderSurvivesFailedDump(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "flight.tcpstate")
	errf, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer errf.Close()
	cmd := exec.Command(binary(t), "record", "--flight-recorder", "-w", path)
	cmd.Stderr = errf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	stderrHas := func(want string) bool {
		b, _ := os.ReadFile(errf.Name())
		return strings.Contains(string(b), want)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(errf.Name())
				t.Fatalf("no %s; stderr:\n%s", what, b)
			}
		}
	}
	waitFor("start", func() bool { return stderrHas("flight recorder running") })
	if err := os.Mkdir(path, 0o755); err != nil { // in the way
		t.Fatal(err)
	}
	connectAndClose(t)
	time.Sleep(300 * time.Millisecond)
	_ = cmd.Process.Signal(syscall.SIGUSR1)
	waitFor("report of the failed dump", func() bool { return stderrHas("not written") })
	if !stderrHas("the events stay in memory") {
		t.Error("the failed dump does not say the events are kept")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	if err := cmd.Wait(); err != nil {
		b, _ := os.ReadFile(errf.Name())
		t.Fatalf("after SIGHUP: %v\n%s", err, b)
	}
	code, out, stderr := runCmd(context.Background(), "trace", "-r", path, "--no-header", "--comm", testnet.SelfComm(t))
	if code != exitOK || !strings.Contains(out, "CLOSE -> SYN_SENT") {
		t.Errorf("replay of the dump written at SIGHUP: exit %d\n%s%s", code, out, stderr)
	}
}

// The walk of a file streams in after its header: it holds the traced
// namespace's sockets, each with its owner, and none of the host's.
func TestRecordWalksIntoTheFile(t *testing.T) {
	requireRoot(t)
	ns := testnet.New(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	const held = 3
	pid, _ := hold(t, ns, ln.Addr().String(), held)
	for range held {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
	}
	path := filepath.Join(t.TempDir(), "c.tcpstate")
	if r := startCmd(t, "record", "-w", path, "--netns", ns.Name, "-d", "1s")(); r.code != exitOK {
		t.Fatalf("record: exit %d: %s", r.code, r.stderr)
	}
	rd, f, err := capture.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if len(rd.Header.Namespaces) == 0 {
		t.Errorf("the header names no namespace")
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	var clients, accepted, listeners, other int
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range rec.Sockets {
			switch {
			case s.NetNS != ns.Inode:
				other++
			case s.State == tracer.Listen && s.Local.Port() == port:
				listeners++
			case s.State == tracer.Established && s.Remote.Port() == port && s.Owner.PID == uint32(pid):
				clients++
			case s.State == tracer.Established && s.Local.Port() == port && s.Owner.PID == uint32(os.Getpid()):
				accepted++
			default:
				t.Errorf("walked a socket of no one's: %+v", s)
			}
		}
	}
	if listeners != 1 || clients != held || accepted != held || other != 0 {
		t.Errorf("walk: %d listeners, %d clients of pid %d, %d accepted by this test, %d of other namespaces; want 1, %d, %d, 0",
			listeners, clients, pid, accepted, other, held, held)
	}
}

// More sockets than --max-connections: trace says so as it starts, not only
// in its summary at the end (watch and serve do too).
func TestTraceWarnsOfAFullTableAtStart(t *testing.T) {
	requireRoot(t)
	ns := testnet.New(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	hold(t, ns, ln.Addr().String(), 20)
	for range 20 {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
	}
	// 41 sockets: the listener and both ends of 20 connections.
	for _, w := range [][]string{nil, {"-w", filepath.Join(t.TempDir(), "c")}} {
		args := append([]string{"trace", "--netns", ns.Name, "--max-connections", "10", "-d", "300ms"}, w...)
		code, _, stderr := runCmd(context.Background(), args...)
		if code != exitOK || !strings.Contains(stderr, "warning: 31 of the 41 sockets found do not fit --max-connections 10") {
			t.Errorf("%q: exit %d, stderr:\n%s", args, code, stderr)
		}
	}
}
