// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/internal/testnet"
)

// screen is what the tmux pane shows now.
func screen(t *testing.T, session string) []string {
	t.Helper()
	out, err := exec.Command("tmux", "capture-pane", "-p", "-t", session).Output()
	if err != nil {
		t.Fatalf("tmux capture-pane: %v", err)
	}
	return strings.Split(strings.TrimRight(string(out), "\n"), "\n")
}

// waitScreen polls the pane until ok accepts it.
func waitScreen(t *testing.T, session string, within time.Duration, what string, ok func([]string) bool) []string {
	t.Helper()
	var s []string
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if s = screen(t, session); ok(s) {
			return s
		}
	}
	t.Fatalf("%s: not within %v; the screen:\n%s", what, within, strings.Join(s, "\n"))
	return nil
}

// As a person in a 100x30 terminal: watch with a 60-socket CLOSE_WAIT leak
// fits the window with its header on top, a key sorts the rows, and q
// leaves within a second with the terminal as it was.
func TestWatchFullScreen(t *testing.T) {
	requireRoot(t)
	debianTool(t, "tmux", "tmux")
	ns := testnet.New(t)
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	const leaked = 60
	hold(t, ns, ln.Addr().String(), leaked)
	for range leaked {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}

	session := fmt.Sprintf("tcpstate-test-%d", os.Getpid())
	cmdline := fmt.Sprintf("%s watch --netns %s -i 500ms; echo EXITED $?; sleep 60", binary(t), ns.Name)
	if out, err := exec.Command("tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmdline).CombinedOutput(); err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}
	defer exec.Command("tmux", "kill-session", "-t", session).Run()

	want := fmt.Sprintf("%d CLOSE_WAIT", leaked)
	s := waitScreen(t, session, time.Minute, "the leak in the header", func(s []string) bool {
		return len(s) > 0 && strings.Contains(s[0], want)
	})
	check := func(s []string) {
		t.Helper()
		if !strings.HasPrefix(s[0], "tcpstate watch") {
			t.Errorf("first line %q, want the header", s[0])
		}
		if len(s) > 30 {
			t.Errorf("%d lines on a 30-line terminal", len(s))
		}
		for i, l := range s {
			if n := len([]rune(l)); n > 100 {
				t.Errorf("line %d: %d columns", i, n)
			}
		}
		if !slices.ContainsFunc(s, func(l string) bool { return strings.Contains(l, "more") }) {
			t.Errorf("120 sockets on 30 lines and no \"N more\":\n%s", strings.Join(s, "\n"))
		}
	}
	check(s)
	// Several refreshes later, the header is still on top.
	time.Sleep(1500 * time.Millisecond)
	check(screen(t, session))

	// r: rows by remote address.
	if err := exec.Command("tmux", "send-keys", "-t", session, "r").Run(); err != nil {
		t.Fatal(err)
	}
	s = waitScreen(t, session, 5*time.Second, "sort by remote", func(s []string) bool {
		return len(s) > 1 && strings.Contains(s[1], "sort: remote")
	})
	var remotes []string
	for _, l := range s[3:] {
		f := strings.Fields(l)
		if len(f) < 5 || strings.Contains(l, "more") || strings.HasPrefix(l, "q quit") {
			continue
		}
		remotes = append(remotes, f[len(f)-1])
	}
	sorted := slices.IsSortedFunc(remotes, func(a, b string) int {
		pa, _ := netipParse(a)
		pb, _ := netipParse(b)
		return pa.Compare(pb)
	})
	if len(remotes) < 20 || !sorted {
		t.Errorf("rows after r, want sorted by remote: %q", remotes)
	}
	check(s)

	// The window shrinks: the view follows.
	if out, err := exec.Command("tmux", "resize-window", "-t", session, "-x", "70", "-y", "15").CombinedOutput(); err != nil {
		t.Fatalf("tmux resize-window: %v: %s", err, out)
	}
	s = waitScreen(t, session, 5*time.Second, "the view redrawn for 70x15", func(s []string) bool {
		return len(s) <= 15 && len(s) > 0 && strings.HasPrefix(s[0], "tcpstate watch") && strings.HasPrefix(s[len(s)-1], "q quit")
	})
	for i, l := range s {
		if n := len([]rune(l)); n > 70 {
			t.Errorf("after the resize, line %d: %d columns", i, n)
		}
	}

	// q: gone within a second, the shell's screen back.
	start := time.Now()
	if err := exec.Command("tmux", "send-keys", "-t", session, "q").Run(); err != nil {
		t.Fatal(err)
	}
	s = waitScreen(t, session, 3*time.Second, "exit on q", func(s []string) bool {
		return slices.ContainsFunc(s, func(l string) bool { return strings.HasPrefix(l, "EXITED") })
	})
	if took := time.Since(start); took > time.Second {
		t.Errorf("q took %v to exit", took)
	}
	if !slices.Contains(s, "EXITED 0") || slices.ContainsFunc(s, func(l string) bool { return strings.HasPrefix(l, "tcpstate watch") }) {
		t.Errorf("after q, want exit 0 and the full-screen view gone:\n%s", strings.Join(s, "\n"))
	}
}

func netipParse(s string) (netip.AddrPort, error) { return netip.ParseAddrPort(s) }
