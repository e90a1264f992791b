// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/internal/testnet"
)

type verifyLine struct {
	Type        string `json:"type"`
	Check       string `json:"check"`
	Status      string `json:"status"`
	Detail      string `json:"detail"`
	Sport       int    `json:"sport"`
	ArmedWithNS int64  `json:"armed_with_ns"`
	ExpiresInNS int64  `json:"expires_in_ns"`
	AdoptedAt   string `json:"adopted_at"`
	FinWait2NS  int64  `json:"fin_wait2_ns"`
	Time        string `json:"time"`
	Name        string `json:"name"`
	Old, New    string
}

func parseVerify(t *testing.T, out string) []verifyLine {
	t.Helper()
	var lines []verifyLine
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var v verifyLine
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("not JSON: %q: %v", l, err)
		}
		lines = append(lines, v)
	}
	return lines
}

func statuses(lines []verifyLine, sport int, check string) []verifyLine {
	var out []verifyLine
	for _, l := range lines {
		if l.Type == "verify" && l.Sport == sport && l.Check == check {
			out = append(out, l)
		}
	}
	return out
}

func localPort(c net.Conn) int { return c.LocalAddr().(*net.TCPAddr).Port }

// The namespace's tcp_keepalive_time is lowered while sockets live: verify
// shows the expiry armed before the change as pending, then the moment the
// socket adopts the new value at its next fire; a socket with its own
// TCP_KEEPIDLE is unaffected. Exit 0 once all run with it.
func TestVerifyKeepaliveTimeChange(t *testing.T) {
	requireRoot(t)
	// Long enough for verify to start (and walk the sockets) before the
	// timer armed with it fires, even under emulation (9 to 17 s while
	// another emulated machine boots). (Armed after verify's start instead,
	// the socket would have no keepalive at first: verify finds nothing
	// left to wait for.) At most 16 s: at HZ=250 the kernel's timer
	// wheel fires a timer due within 16.4 s at most 256 ms late (64
	// jiffies); beyond, up to 2 s (512).
	const before = 16 * time.Second
	ns := testnet.New(t, fmt.Sprintf("net.ipv4.tcp_keepalive_time=%d", int(before.Seconds())), "net.ipv4.tcp_keepalive_intvl=1")
	var ln net.Listener
	var plain, own net.Conn
	ns.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		// SO_KEEPALIVE only: the namespace's values apply.
		d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}}
		if plain, err = d.Dial("tcp4", ln.Addr().String()); err != nil {
			t.Fatal(err)
		}
		// Its own idle time, longer than the test. At 3 s its timer
		// fired before verify's start-up walk under emulation, and the
		// socket was listed twice: a keepalive event of a socket whose
		// cookie nobody made yet is keyed by its address (a known gap).
		d.KeepAliveConfig.Idle = 30 * time.Second
		if own, err = d.Dial("tcp4", ln.Addr().String()); err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	defer plain.Close()
	defer own.Close()
	armed := time.Now()
	wait := startCmd(t, "verify", "--netns", ns.Name, "--rport", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port),
		"--expect", "keepalive_time=1", "--within", "40s", "-i", "200ms", "-o", "json")
	took := time.Since(armed)
	ns.Sysctl(t, "net.ipv4.tcp_keepalive_time=1")
	r := wait()
	// fail reports a check that a start too close to the timer's fire can
	// break (the fire seen before the change, or not at all): skipped then.
	fail := func(format string, args ...any) {
		t.Helper()
		if took > before-2*time.Second {
			t.Skipf("verify took %v to start, too close to the timer's fire at %v: "+format, append([]any{took, before}, args...)...)
		}
		t.Fatalf(format, args...)
	}
	if r.code != exitOK {
		t.Fatalf("exit %d after tracing for %v: %s\n%s", r.code, r.tracing, r.stderr, r.stdout)
	}
	lines := parseVerify(t, r.stdout)
	var changed bool
	for _, l := range lines {
		if l.Type == "sysctl" && l.Name == "net.ipv4.tcp_keepalive_time" && l.Old == strconv.Itoa(int(before.Seconds())) && l.New == "1" {
			changed = true
		}
	}
	if !changed {
		t.Errorf("the sysctl change was not reported:\n%s", r.stdout)
	}
	seq := statuses(lines, localPort(plain), "keepalive_time")
	var got []string
	for _, l := range seq {
		got = append(got, l.Status)
	}
	if strings.Join(got, " ") != "mismatch pending ok" {
		fail("plain socket statuses %v, want mismatch pending ok:\n%s", got, r.stdout)
	}
	if p := seq[1]; p.ArmedWithNS != int64(before) || p.ExpiresInNS <= 0 || !strings.Contains(p.Detail, "picks up 1s") {
		t.Errorf("pending: armed with %v, expires in %v, %q; want the 8s expiry from before the change",
			time.Duration(p.ArmedWithNS), time.Duration(p.ExpiresInNS), p.Detail)
	}
	ok := seq[2]
	adopted, err := time.Parse(time.RFC3339Nano, ok.AdoptedAt)
	if err != nil {
		t.Fatalf("ok without adopted_at: %+v", ok)
	}
	// Armed at connect: it fires, and reads the new value, `before` later
	// (the kernel's timer: within its wheel's slack, well under a second).
	if d := adopted.Sub(armed); d < before-500*time.Millisecond || d > before+time.Second {
		fail("adopted %v after the timer was armed, want about %v", d, before)
	}
	if own := statuses(lines, localPort(own), "keepalive_time"); len(own) != 1 || own[0].Status != "unaffected" || !strings.Contains(own[0].Detail, "TCP_KEEPIDLE=30s") {
		t.Errorf("socket with TCP_KEEPIDLE: %+v", own)
	}
	// The timer fires `before` after it was armed, before verify started;
	// verify must stop then, not at --within 40s.
	if r.tracing > before+4*time.Second {
		t.Errorf("verify ran %v after it began tracing: it should stop as soon as all sockets comply", r.tracing)
	}
}

// tcp_fin_timeout lowered: an orphaned FIN_WAIT2 made after the change ends
// at the new value and verify says so; one armed before leaves when it ends.
func TestVerifyFinTimeoutLowered(t *testing.T) {
	requireRoot(t)
	// The FIN_WAIT2 armed before the change outlasts verify's start-up
	// (9 to 17 s emulated) and the one made after it: its peer closes once
	// that one has ended, and verify ends when no socket is left to wait for.
	ns := testnet.New(t, "net.ipv4.tcp_fin_timeout=60")
	var ln net.Listener
	orphan := func() (client, peer net.Conn) {
		client = ns.Dial(t, "tcp4", ln.Addr().String())
		peer, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { peer.Close() }) // the peer never closes
		client.Close()
		return client, peer
	}
	ns.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	before, beforePeer := orphan()
	wait := startCmd(t, "verify", "--netns", ns.Name, "--rport", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port),
		"--expect", "fin_timeout=2", "--within", "30s", "-i", "200ms", "-o", "json")
	ns.Sysctl(t, "net.ipv4.tcp_fin_timeout=2")
	time.Sleep(500 * time.Millisecond) // past verify's sysctl poll (-i 200ms), so the new socket is made after it saw the change
	after, _ := orphan()
	time.Sleep(3 * time.Second) // (its FIN_WAIT2 ends 2 s after its close)
	beforePeer.Close()          // the peer's FIN ends the other: nothing left to wait for
	r := wait()
	if r.code != exitOK {
		t.Fatalf("exit %d: %s\n%s", r.code, r.stderr, r.stdout)
	}
	lines := parseVerify(t, r.stdout)
	got := statuses(lines, localPort(after), "fin_timeout")
	if len(got) == 0 || got[len(got)-1].Status != "ok" {
		t.Fatalf("the FIN_WAIT2 made after the change (port %d, before %d): %+v\n%s", localPort(after), localPort(before), got, r.stdout)
	}
	// The timer counts whole jiffies from the one FIN_WAIT2 began in: up to
	// a jiffy (10 ms at the lowest HZ) short, and late by the wheel's slack.
	if d := time.Duration(got[len(got)-1].FinWait2NS); d < 2*time.Second-10*time.Millisecond || d > 2400*time.Millisecond {
		t.Errorf("it lasted %v, want the new tcp_fin_timeout 2s (-1 jiffy, +400 ms)", d)
	}
	for _, l := range statuses(lines, localPort(before), "fin_timeout") {
		if l.Status == "ok" {
			t.Errorf("the FIN_WAIT2 armed before the change rated ok: %+v", l)
		}
	}
}

// tcp_fin_timeout counts from the close() that orphans a FIN_WAIT2, not from
// the shutdown() that began it: verify rates nothing while the owner holds
// the socket, then the timer the close() armed. An orphan older than verify
// is pending until it ends; then nothing was rated, and the exit status says
// so (4), not a vacuous success.
func TestVerifyFinTimeoutFromClose(t *testing.T) {
	requireRoot(t)
	// The orphan older than verify is armed for 60 s, to outlast two of
	// verify's start-ups (9 to 17 s emulated); its peer's FIN ends it early.
	ns := testnet.New(t, "net.ipv4.tcp_fin_timeout=60")
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	half := func() (*net.TCPConn, net.Conn) {
		c := ns.Dial(t, "tcp4", ln.Addr().String()).(*net.TCPConn)
		peer, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { peer.Close() })
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		return c, peer
	}

	// Orphaned before verify starts: pending, then out of scope at its end.
	old, oldPeer := half()
	old.Close()
	// Once: listed pending, and nothing checked (not a straggler: nothing
	// says it does not run with the value).
	code, stdout, stderr := runCmd(context.Background(), "verify", "--netns", ns.Name, "--rport", port, "--expect", "fin_timeout=60", "-o", "json")
	got := statuses(parseVerify(t, stdout), localPort(old), "fin_timeout")
	if code != exitNone || !strings.Contains(stderr, "could be rated") || len(got) != 1 || got[0].Status != "pending" {
		t.Errorf("verify once, an orphan older than verify: exit %d, its results %+v, stderr %q; want exit %d, one pending", code, got, stderr, exitNone)
	}
	wait := startCmd(t, "verify", "--netns", ns.Name, "--rport", port, "--expect", "fin_timeout=60", "--within", "3s", "-i", "200ms", "-o", "json")
	oldPeer.Close() // its FIN: the orphan goes on to TIME_WAIT, not rated
	r := wait()
	got = statuses(parseVerify(t, r.stdout), localPort(old), "fin_timeout")
	if r.code != exitNone || !strings.Contains(r.stderr, "could be rated") || len(got) != 1 || got[0].Status != "pending" {
		t.Errorf("an orphan older than verify: exit %d, its results %+v, stderr %q; want exit %d, one pending", r.code, got, r.stderr, exitNone)
	}

	ns.Sysctl(t, "net.ipv4.tcp_fin_timeout=2")
	wait = startCmd(t, "verify", "--netns", ns.Name, "--rport", port, "--expect", "fin_timeout=2", "--within", "20s", "-i", "200ms", "-o", "json")
	c, _ := half()
	time.Sleep(1500 * time.Millisecond) // in FIN_WAIT2, held: tcp_fin_timeout does not apply
	closed := time.Now()
	c.Close()
	r = wait()
	if r.code != exitOK {
		t.Fatalf("exit %d: %s\n%s", r.code, r.stderr, r.stdout)
	}
	got = statuses(parseVerify(t, r.stdout), localPort(c), "fin_timeout")
	// (ok: armed for 2 s less at most half a second, a jiffy or a stalled
	// virtual CPU between the arm and the tracer's read)
	if len(got) != 1 || got[0].Status != "ok" || !strings.Contains(got[0].Detail, "its timer armed for ") {
		t.Errorf("shut down, closed 1.5 s later: %+v, want one ok, armed for 2s at the close()", got)
	}
	if took := time.Since(closed); took > 1500*time.Millisecond {
		t.Errorf("verify ended %v after the close(), want as soon as the timer rated it", took)
	}
}

// verify with no socket in scope has checked nothing, and says so with an exit
// status of its own (4), not a vacuous success. With --within it waits for sockets to come (a
// service restarted after the change), and ends once they run as expected.
func TestVerifyNothingInScope(t *testing.T) {
	requireRoot(t)
	ns := testnet.New(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	// Only the listener: nothing to check (LISTEN has no keepalive timer).
	code, stdout, stderr := runCmd(context.Background(), "verify", "--netns", ns.Name, "--port", port)
	if code != exitNone || !strings.Contains(stderr, "no socket in scope: nothing was checked") || !strings.Contains(stdout, "0 checks") {
		t.Errorf("nothing in scope: exit %d, stdout %q, stderr %q; want %d, \"0 checks\" and why", code, stdout, stderr, exitNone)
	}
	wait := startCmd(t, "verify", "--netns", ns.Name, "--port", port, "--within", "60s", "-i", "200ms", "-o", "json")
	time.Sleep(time.Second) // (verify keeps waiting: tested by its end below)
	began := time.Now()
	cl := ns.Dial(t, "tcp4", ln.Addr().String())
	defer cl.Close()
	sv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sv.Close()
	r := wait()
	took := time.Since(began)
	if r.code != exitOK {
		t.Fatalf("a connection came while waiting: exit %d: %s\n%s", r.code, r.stderr, r.stdout)
	}
	if took > 30*time.Second {
		t.Errorf("verify ended %v after the connection came, want soon after (not at --within)", took)
	}
	if got := statuses(parseVerify(t, r.stdout), localPort(cl), "keepalive_time"); len(got) == 0 {
		t.Errorf("no keepalive_time check of the client (port %d):\n%s", localPort(cl), r.stdout)
	}
}
