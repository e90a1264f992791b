package main

import (
	"strings"
	"testing"
)

// A failing subtest's output reaches the harness's own output, bounded.
func TestConsoleKeepsWhatFailedTestsPrinted(t *testing.T) {
	log := `vmtest: kernel 6.12.107+deb13-cloud-arm64 aarch64
=== RUN   TestA
    a_test.go:1: fine
--- PASS: TestA (0.01s)
=== RUN   TestB
=== RUN   TestB/one
    b_test.go:2: attached
=== RUN   TestB/two
    b_test.go:3: attached
    b_test.go:4: differ:
         got [x]
        want [y]
=== RUN   TestB/three
    b_test.go:5: attached
--- FAIL: TestB (1.00s)
    --- PASS: TestB/one (0.30s)
    --- FAIL: TestB/two (0.30s)
    --- PASS: TestB/three (0.30s)
FAIL
vmtest: result tracer 1
vmtest: done`
	var r result
	c := newConsole(&r)
	for _, l := range strings.Split(log, "\n") {
		c.read(l)
	}
	if !r.booted || !r.done || r.rc["tracer"] != 1 || r.passed != 3 {
		t.Errorf("booted %v done %v rc %v passed %d", r.booted, r.done, r.rc, r.passed)
	}
	if strings.Join(r.failed, " ") != "TestB TestB/two" {
		t.Errorf("failed %q", r.failed)
	}
	want := "b_test.go:3: attached\nb_test.go:4: differ:\n     got [x]\n    want [y]"
	if got := strings.Join(r.output["TestB/two"], "\n"); got != want {
		t.Errorf("TestB/two printed\n%s\nwant\n%s", got, want)
	}
	if !strings.Contains(r.why(), "| b_test.go:4: differ:") {
		t.Errorf("why:\n%s", r.why())
	}

	var long result
	c = newConsole(&long)
	c.read("=== RUN   TestC")
	for range 2 * maxFailLines {
		c.read("    noise")
	}
	c.read("--- FAIL: TestC (1.00s)")
	if n := len(long.output["TestC"]); n != maxFailLines {
		t.Errorf("kept %d lines, want the last %d", n, maxFailLines)
	}
}
