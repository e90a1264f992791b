// SPDX-License-Identifier: Apache-2.0

package output

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate/internal/cgroup"
	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
	"github.com/tcpstate/tcpstate/tracer/verify"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// 2026-11-21T10:00:00Z at boot time 0.
var clock = tracer.Clock{BootWall: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano()}

var kernel = tracer.KernelInfo{HZ: 250, RstReasons: map[uint16]string{11: "TCP_ABORT_ON_CLOSE"}}

func events() []tracer.Event {
	owner := tracer.Task{PID: 4242, TID: 4243, Comm: tracer.CommFrom("curl")}
	swapper := tracer.Task{Comm: tracer.CommFrom("swapper/1")}
	v4l, v4r := netip.MustParseAddrPort("10.0.0.1:43210"), netip.MustParseAddrPort("10.0.0.20:8443")
	v6l, v6r := netip.MustParseAddrPort("[2001:db8::1]:50000"), netip.MustParseAddrPort("[2001:db8:ffff::1234]:8443")
	return []tracer.Event{
		{Type: tracer.EventState, Time: 1_000_000, Cookie: 1, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: netip.AddrPortFrom(v4l.Addr(), 0), Remote: v4r}, Old: tracer.Close, New: tracer.SynSent,
			Owner: tracer.Owner{Task: owner, From: tracer.OwnerConnect}, OnCPU: owner},
		{Type: tracer.EventState, Time: 1_250_000, Cookie: 1, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: v4r}, Old: tracer.SynSent, New: tracer.Established, Duration: 250 * time.Microsecond,
			HasDuration: true, Owner: tracer.Owner{Task: owner, From: tracer.OwnerConnect}, OnCPU: swapper},
		{Type: tracer.EventState, Time: 1_501_250_000, Cookie: 1, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: v4r}, Old: tracer.Established, New: tracer.CloseWait, Duration: 1500 * time.Millisecond,
			HasDuration: true, Owner: tracer.Owner{Task: owner, From: tracer.OwnerConnect}, OnCPU: swapper},
		{Type: tracer.EventLost, Time: 2_000_000_000, Lost: 17},
		{Type: tracer.EventState, Time: 3_000_000_000, Cookie: 9, Endpoints: tracer.Endpoints{NetNS: 4026532000, Family: tracer.IPv6, Local: v6l, Remote: v6r}, Old: tracer.Established, New: tracer.CloseWait, OnCPU: swapper},
		{Type: tracer.EventState, Time: 3_100_000_000, Cookie: 10, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: netip.MustParseAddrPort("127.0.0.1:1")}, Old: tracer.SynSent, New: tracer.Close,
			Duration: 40 * time.Microsecond, HasDuration: true, SkErr: 111,
			Owner: tracer.Owner{Task: tracer.Task{PID: 7, TID: 7, Comm: tracer.CommFrom("we\"ird\\name\x01\xff")}, From: tracer.OwnerClose},
			OnCPU: tracer.Task{PID: 7, Comm: tracer.CommFrom("a-very-long-name")}},
		{Type: tracer.EventState, Time: 4_000_000_000, Cookie: 11, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: netip.MustParseAddrPort("93.184.216.34:443")}, Old: tracer.FinWait2, New: tracer.Close, Duration: 61 * time.Minute,
			HasDuration: true, Owner: tracer.Owner{Task: owner, From: tracer.OwnerListener}, OnCPU: swapper},
		{Type: tracer.EventState, Time: 5_000_000_000, Cookie: 12, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: v4r}, Old: tracer.FinWait2, New: tracer.TimeWait, Duration: 2100 * time.Millisecond, HasDuration: true,
			Timewait: true, ExpiresIn: 60 * time.Second, Owner: tracer.Owner{Task: owner, From: tracer.OwnerClose}}, // (found after it happened: no task on the CPU)
		{Type: tracer.EventState, Time: 65_000_000_000, Cookie: 12, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: v4r}, Old: tracer.TimeWait, New: tracer.Close, Duration: 60 * time.Second, HasDuration: true,
			Timewait: true, Reason: tracer.ReasonTWExpired, Owner: tracer.Owner{Task: owner, From: tracer.OwnerClose}, OnCPU: swapper},
		{Type: tracer.EventState, Time: 66_000_000_000, Cookie: 13, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: v4r}, Old: tracer.Established, New: tracer.Close, Duration: 2 * time.Second, HasDuration: true,
			DurationMin: true, Reason: tracer.ReasonRSTSent, RstReason: 11, Owner: tracer.Owner{Task: owner, From: tracer.OwnerProc}, OnCPU: owner},
		{Type: tracer.EventLinger, Time: 67_000_000_000, Cookie: 14, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: v4r}, Old: tracer.CloseWait, New: tracer.CloseWait, Duration: 30 * time.Second, HasDuration: true,
			Owner: tracer.Owner{Task: owner, From: tracer.OwnerConnect}},
		{Type: tracer.EventReset, Time: 68_000_000_000, Cookie: 15, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: v4r}, Old: tracer.Close, New: tracer.Close, RstReason: 99, Reason: tracer.ReasonRSTSent, OnCPU: swapper},
		{Type: tracer.EventKeepalive, Time: 69_000_000_000, Cookie: 16, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: v4r}, Old: tracer.Established, New: tracer.Established, ExpiresIn: time.Second,
			Keepalive: tracer.Keepalive{Event: tracer.KeepaliveArmed, On: true, Idle: time.Second, Intvl: 75 * time.Second, Count: 9, IdleFromSocket: true},
			Owner:     tracer.Owner{Task: owner, From: tracer.OwnerConnect}, OnCPU: owner},
		{Type: tracer.EventKeepalive, Time: 70_000_000_000, Cookie: 16, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: v4r}, Old: tracer.Established, New: tracer.Established, ExpiresIn: time.Second,
			Keepalive: tracer.Keepalive{Event: tracer.KeepaliveProbe, On: true, Probes: 2, Idle: time.Second, Intvl: time.Second, Count: 3,
				IdleFromSocket: true, IntvlFromSocket: true, CountFromSocket: true},
			Owner: tracer.Owner{Task: owner, From: tracer.OwnerConnect}, OnCPU: swapper},
		{Type: tracer.EventKeepalive, Time: 71_000_000_000, Cookie: 16, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: v4l, Remote: v4r}, Old: tracer.Close, New: tracer.Close, SkErr: 110, Reason: tracer.ReasonTimeout, RstReason: 11,
			Keepalive: tracer.Keepalive{Event: tracer.KeepaliveTimeout, On: true, Probes: 3, Idle: time.Second, Intvl: time.Second, Count: 3,
				IdleFromSocket: true, IntvlFromSocket: true, CountFromSocket: true},
			Owner: tracer.Owner{Task: owner, From: tracer.OwnerConnect}, OnCPU: swapper},
	}
}

func render(t *testing.T, r Renderer) {
	t.Helper()
	for _, e := range events() {
		if err := r.Render(&e); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s--- want\n%s", name, got, want)
	}
}

func TestTextGolden(t *testing.T) {
	var out, diag bytes.Buffer
	render(t, NewText(&out, TextOptions{Clock: clock, Kernel: kernel, Location: time.UTC, Diag: &diag}))
	golden(t, "trace.txt", out.Bytes())
	if diag.String() != "tcpstate: 17 events lost (ring buffer full); raise --ringbuf-size or filter more\n" {
		t.Errorf("lost report: %q", diag.String())
	}
	// Lines fit 80 columns when the remote endpoint fits its 15 columns (a
	// longer one pushes the line, it is never cut), the note in parentheses aside.
	evs := events()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")[1:]
	for i, e := range evs {
		if e.Type == tracer.EventLost {
			evs = append(evs[:i:i], evs[i+1:]...)
			break
		}
	}
	for i, line := range lines {
		line, _, _ = strings.Cut(line, " (")
		if n := len([]rune(line)); n > 80 && len(evs[i].Remote.String()) <= 15 {
			t.Errorf("line %d is %d columns wide: %q", i, n, line)
		}
	}
}

// attribute places pid 4242 (curl) in a docker container and 7 in a
// systemd service; others are unknown.
func attribute(pid uint32, _ uint64) cgroup.Info {
	switch pid {
	case 4242:
		return cgroup.Parse("/system.slice/docker-3f4b2c1d0e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c.scope")
	case 7:
		return cgroup.Parse("/system.slice/weird.service")
	}
	return cgroup.Info{}
}

// netnsName names the host's namespace (4026531840); others go by inode.
func netnsName(inode uint32) string {
	if inode == 4026531840 {
		return "host"
	}
	return ""
}

func TestTextWideGolden(t *testing.T) {
	var out bytes.Buffer
	render(t, NewText(&out, TextOptions{Wide: true, Clock: clock, Kernel: kernel, Location: time.UTC, Attribute: attribute, NetNSName: netnsName}))
	golden(t, "trace-wide.txt", out.Bytes())
}

func TestTextNoHeader(t *testing.T) {
	var out bytes.Buffer
	render(t, NewText(&out, TextOptions{NoHeader: true, Clock: clock, Location: time.UTC}))
	if strings.HasPrefix(out.String(), "TIME") {
		t.Error("header printed with NoHeader")
	}
}

func TestJSONGolden(t *testing.T) {
	var out bytes.Buffer
	render(t, NewJSON(&out, JSONOptions{Clock: clock, Kernel: kernel, Attribute: attribute}))
	golden(t, "trace.jsonl", out.Bytes())

	// Every line is valid JSON with the documented fields and types.
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(events()) {
		t.Fatalf("%d lines for %d events", len(lines), len(events()))
	}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, line)
		}
		ts, err := time.Parse(time.RFC3339Nano, m["time"].(string))
		if err != nil || ts.Location() != time.UTC {
			t.Errorf("line %d: time %v: %v", i, m["time"], err)
		}
		if m["type"] == "lost" {
			if m["count"] != 17.0 || m["total"] != 17.0 {
				t.Errorf("lost line: %s", line)
			}
			continue
		}
		if m["type"] == "linger" {
			if m["state"] != "CLOSE_WAIT" || m["age_ns"] != 3e10 {
				t.Errorf("linger line: %s", line)
			}
			continue
		}
		// (a transition found after it happened has no task on the CPU:
		// both absent)
		_, hasCPU := m["cpu_comm"]
		if cpuPID, ok := m["cpu_pid"]; ok != hasCPU || !ok && !(m["old"] == "FIN_WAIT2" && m["new"] == "TIME_WAIT") {
			t.Errorf("line %d: cpu_pid %v, cpu_comm present %v: want both, or neither on the one found late", i, cpuPID, hasCPU)
		}
		for _, k := range []string{"cookie", "netns", "sport", "dport", "cpu_pid"} {
			if k == "cpu_pid" && !hasCPU {
				continue
			}
			if _, ok := m[k].(float64); !ok {
				t.Errorf("line %d: %s is %T, want a number", i, k, m[k])
			}
		}
		for _, k := range []string{"family", "saddr", "daddr", "old", "new", "cpu_comm"} {
			if m["type"] == "linger" || m["type"] == "keepalive" && (k == "old" || k == "new") || k == "cpu_comm" && !hasCPU {
				continue
			}
			if _, ok := m[k].(string); !ok {
				t.Errorf("line %d: %s is %T, want a string", i, k, m[k])
			}
		}
	}
	// Absent, never zero, when unknown.
	var first map[string]any
	_ = json.Unmarshal([]byte(lines[0]), &first)
	if _, ok := first["duration_ns"]; ok {
		t.Error("duration_ns present for an unobserved state")
	}
	var unknown map[string]any
	_ = json.Unmarshal([]byte(lines[4]), &unknown)
	for _, k := range []string{"pid", "comm", "duration_ns"} {
		if _, ok := unknown[k]; ok {
			t.Errorf("%s present for an unknown owner", k)
		}
	}
	var weird map[string]any
	_ = json.Unmarshal([]byte(lines[5]), &weird)
	if weird["comm"] != "we\"ird\\name\x01\uFFFD" || weird["error"] != "ECONNREFUSED" || weird["sk_err"] != 111.0 {
		t.Errorf("escaping or error: comm %q error %v sk_err %v", weird["comm"], weird["error"], weird["sk_err"])
	}
}

func TestAppendDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                               "0.0us",
		4200 * time.Nanosecond:          "4.2us",
		13 * time.Microsecond:           "13us",
		999 * time.Microsecond:          "999us",
		time.Millisecond:                "1.00ms",
		4520 * time.Microsecond:         "4.52ms",
		45200 * time.Microsecond:        "45.2ms",
		500 * time.Millisecond:          "500ms",
		1520 * time.Millisecond:         "1.52s",
		60 * time.Second:                "60.0s",
		12*time.Minute + 5*time.Second:  "12m05s",
		99*time.Minute + 59*time.Second: "99m59s",
		3*time.Hour + 20*time.Minute:    "3h20m",
		103 * time.Hour:                 "4d07h",
	} {
		got := string(AppendDuration(nil, d))
		if got != want {
			t.Errorf("AppendDuration(%v) = %q, want %q", d, got, want)
		}
		if len(got) > 6 {
			t.Errorf("AppendDuration(%v) = %q, wider than its column", d, got)
		}
	}
}

func benchmarkRender(b *testing.B, r Renderer) {
	evs := events()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e := &evs[i%len(evs)]
		if e.Type == tracer.EventLost {
			e = &evs[0]
		}
		if err := r.Render(e); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkRenderText(b *testing.B) {
	benchmarkRender(b, NewText(discard{}, TextOptions{Clock: clock, Location: time.UTC}))
}

func BenchmarkRenderTextWide(b *testing.B) {
	benchmarkRender(b, NewText(discard{}, TextOptions{Wide: true, Clock: clock, Location: time.UTC}))
}

func BenchmarkRenderJSON(b *testing.B) {
	benchmarkRender(b, NewJSON(discard{}, JSONOptions{Clock: clock}))
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func TestJSONReasonsAndTimewait(t *testing.T) {
	var out bytes.Buffer
	render(t, NewJSON(&out, JSONOptions{Clock: clock, Kernel: kernel}))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var tw, expired, rst, reset map[string]any
	_ = json.Unmarshal([]byte(lines[7]), &tw)
	_ = json.Unmarshal([]byte(lines[8]), &expired)
	_ = json.Unmarshal([]byte(lines[9]), &rst)
	_ = json.Unmarshal([]byte(lines[11]), &reset)
	if tw["timewait"] != true || tw["expires_in_ns"] != 6e10 || tw["reason"] != nil {
		t.Errorf("entering TIME_WAIT: %s", lines[7])
	}
	if expired["reason"] != "timewait_expired" || expired["timewait"] != true || expired["expires_in_ns"] != nil {
		t.Errorf("TIME_WAIT end: %s", lines[8])
	}
	if rst["reason"] != "rst_sent" || rst["rst_reason"] != "TCP_ABORT_ON_CLOSE" || rst["since_start"] != true || rst["owner_from"] != "proc" {
		t.Errorf("reset close: %s", lines[9])
	}
	if reset["type"] != "reset" || reset["rst_reason"] != "reason 99" {
		t.Errorf("standalone reset: %s", lines[11])
	}
}

func conns() []*timeline.Conn {
	owner := tracer.Task{PID: 4242, TID: 4242, Comm: tracer.CommFrom("curl")}
	cs := []*timeline.Conn{{
		Cookie: 1,
		Owner:  tracer.Owner{Task: owner, From: tracer.OwnerConnect}, Reason: tracer.ReasonTWExpired, State: tracer.Close, Since: 70_000_000_000,
	}, {
		Cookie: 2,
		Reason: tracer.ReasonRSTSent, RstReason: 11, State: tracer.Close, Since: 71_000_000_000,
	}}
	cs[0].SetEndpoints(tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4,
		Local: netip.MustParseAddrPort("10.0.0.1:43210"), Remote: netip.MustParseAddrPort("10.0.0.20:8443")})
	cs[0].SetSpans([]timeline.Span{
		{State: tracer.SynSent, Duration: 95 * time.Microsecond, Known: true},
		{State: tracer.Established, Duration: 1520 * time.Millisecond, Known: true},
		{State: tracer.FinWait1, Duration: 41 * time.Microsecond, Known: true},
		{State: tracer.FinWait2, Duration: 2100 * time.Millisecond, Known: true},
		{State: tracer.TimeWait, Duration: 60 * time.Second, Known: true, Timewait: true},
	})
	cs[1].SetEndpoints(tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv6,
		Local: netip.MustParseAddrPort("[::1]:8080"), Remote: netip.MustParseAddrPort("[::1]:50000")})
	cs[1].SetSpans([]timeline.Span{
		{State: tracer.Established, Duration: 3 * time.Second, Known: true, Min: true},
		{State: tracer.CloseWait},
	})
	return cs
}

func TestTimelineGolden(t *testing.T) {
	var txt, js bytes.Buffer
	tr := NewText(&txt, TextOptions{Clock: clock, Kernel: kernel, Location: time.UTC})
	jr := NewJSON(&js, JSONOptions{Clock: clock, Kernel: kernel})
	for _, c := range conns() {
		if err := tr.RenderConn(c); err != nil {
			t.Fatal(err)
		}
		if err := jr.RenderConn(c); err != nil {
			t.Fatal(err)
		}
	}
	_ = tr.Flush()
	_ = jr.Flush()
	golden(t, "timeline.txt", txt.Bytes())
	golden(t, "timeline.jsonl", js.Bytes())
	for _, line := range strings.Split(strings.TrimSpace(js.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
	}
}

func watchRows() []Socket {
	app := tracer.Task{PID: 77, Comm: tracer.CommFrom("leaky")}
	var rows []Socket
	for i := range 4 {
		rows = append(rows, Socket{Cookie: uint64(i + 1), Endpoints: tracer.Endpoints{Family: tracer.IPv4, NetNS: 1, Local: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(40000+i)), Remote: netip.MustParseAddrPort("10.0.0.9:5432")},
			State: tracer.CloseWait, Age: time.Duration(i+1) * time.Minute, Owner: tracer.Owner{Task: app, From: tracer.OwnerConnect}, SinceStart: i == 3})
	}
	rows = append(rows, Socket{Cookie: 9, Endpoints: tracer.Endpoints{Family: tracer.IPv4, NetNS: 1, Local: netip.MustParseAddrPort("10.0.0.1:80"), Remote: netip.MustParseAddrPort("10.0.0.7:51000")}, State: tracer.TimeWait, Timewait: true, Age: 30 * time.Second})
	SortByAge(rows)
	return rows
}

func TestWatchGolden(t *testing.T) {
	var txt, js bytes.Buffer
	if err := NewWatch(&txt, WatchOptions{Clock: clock, Location: time.UTC, Top: 3}).Render(5e9, watchRows(), 2); err != nil {
		t.Fatal(err)
	}
	if err := NewWatch(&js, WatchOptions{Clock: clock, JSON: true}).Render(5e9, watchRows(), 0); err != nil {
		t.Fatal(err)
	}
	golden(t, "watch.txt", txt.Bytes())
	golden(t, "watch.jsonl", js.Bytes())
	byProc, byRemote := Groups(watchRows())
	if len(byProc) != 2 || byProc[0].Count != 4 || byProc[0].Oldest != 4*time.Minute || byProc[0].Owner.PID != 77 {
		t.Errorf("by process: %+v", byProc)
	}
	// Clients on ephemeral ports group by address.
	if len(byRemote) != 2 || byRemote[0].Remote != "10.0.0.9:5432" || byRemote[1].Remote != "10.0.0.7:*" {
		t.Errorf("by remote: %+v", byRemote)
	}
}

func TestKeepaliveJSON(t *testing.T) {
	var out bytes.Buffer
	render(t, NewJSON(&out, JSONOptions{Clock: clock, Kernel: kernel}))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var armed, probe, kill map[string]any
	_ = json.Unmarshal([]byte(lines[12]), &armed)
	_ = json.Unmarshal([]byte(lines[13]), &probe)
	_ = json.Unmarshal([]byte(lines[14]), &kill)
	if armed["type"] != "keepalive" || armed["event"] != "armed" || armed["expires_in_ns"] != 1e9 || armed["idle_from"] != "socket" ||
		armed["intvl_from"] != "sysctl" || armed["count"] != 9.0 || armed["keepalive"] != true || armed["probe"] != nil {
		t.Errorf("armed: %s", lines[12])
	}
	if probe["event"] != "probe" || probe["probe"] != 2.0 || probe["expires_in_ns"] != nil {
		t.Errorf("probe: %s", lines[13])
	}
	if kill["event"] != "timeout" || kill["error"] != "ETIMEDOUT" || kill["rst_reason"] != "TCP_ABORT_ON_CLOSE" || kill["reason"] != "timeout" {
		t.Errorf("timeout: %s", lines[14])
	}
}

func TestVerifyGolden(t *testing.T) {
	k := &verify.Socket{Cookie: 3, Endpoints: tracer.Endpoints{NetNS: 4026531840, Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.9:5432")}, State: tracer.Established,
		Owner:       tracer.Owner{Task: tracer.Task{PID: 77, TID: 77, Comm: tracer.CommFrom("app")}, From: tracer.OwnerProc},
		KeepaliveOn: true, Idle: time.Minute, Intvl: 75 * time.Second, Count: 9, ArmedWith: 2 * time.Hour,
		Expires: 7_000_000_000_000, AdoptedAt: 0}
	rs := []verify.Result{{Socket: k, Check: verify.KeepaliveTime, Status: verify.Pending, Expect: time.Minute,
		Detail: "armed with 2h0m0s from before the change; picks up 1m0s when it fires in 1h56m40s"}}
	for _, js := range []bool{false, true} {
		var out bytes.Buffer
		v := NewVerify(&out, VerifyOptions{Clock: clock, Location: time.UTC, JSON: js})
		if err := v.Change(verify.Change{Time: 1e9, NetNS: 4026531840, Name: "keepalive_time", Old: "7200", New: "60"}); err != nil {
			t.Fatal(err)
		}
		if err := v.Result(rs[0], 2e9); err != nil {
			t.Fatal(err)
		}
		_ = v.Flush()
		name := "verify.txt"
		if js {
			name = "verify.jsonl"
			for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("%v: %s", err, line)
				}
			}
		}
		golden(t, name, out.Bytes())
	}
}

func TestHistQuantiles(t *testing.T) {
	var h Hist
	for i := 1; i <= 1000; i++ {
		h.Add(time.Duration(i) * time.Millisecond)
	}
	for q, want := range map[float64]time.Duration{0.5: 500 * time.Millisecond, 0.9: 900 * time.Millisecond, 0.99: 990 * time.Millisecond, 1: time.Second} {
		got := h.Quantile(q)
		if d := float64(got-want) / float64(want); d < -0.02 || d > 0.02 {
			t.Errorf("q%.2f = %v, want %v within 2%%", q, got, want)
		}
	}
	b := h.Buckets()
	// 1ms..9ms, 10ms..99ms, 100ms..999ms, 1s
	if b[1] != 9 || b[2] != 90 || b[3] != 900 || b[4] != 1 {
		t.Errorf("buckets %v", b)
	}
}

func TestReportAggregates(t *testing.T) {
	r := NewReport()
	app := tracer.Task{PID: 9, Comm: tracer.CommFrom("leaky")}
	for i := range 5 {
		e := tracer.Event{Type: tracer.EventState, Time: uint64(i+1) * 1e9, Cookie: uint64(i), Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")},
			Old: tracer.Established, New: tracer.CloseWait, Owner: tracer.Owner{Task: app, From: tracer.OwnerConnect}}
		_ = r.Event(&e)
		e.Old, e.New, e.Duration, e.HasDuration = tracer.CloseWait, tracer.LastAck, time.Duration(i+1)*time.Second, true
		_ = r.Event(&e)
	}
	_ = r.Event(&tracer.Event{Type: tracer.EventLost, Time: 3e9, Lost: 7})
	var out bytes.Buffer
	if err := r.Render(&out, clock, time.UTC, true); err != nil {
		t.Fatal(err)
	}
	var js struct {
		Lost      uint64 `json:"lost"`
		CloseWait []struct {
			PID   uint32 `json:"pid"`
			Count uint64 `json:"count"`
		} `json:"close_wait_by_process"`
		States []struct {
			State string `json:"state"`
			Max   int64  `json:"max_ns"`
		} `json:"states"`
		Lingers []struct {
			Duration int64 `json:"duration_ns"`
		} `json:"longest_lingering"`
	}
	if err := json.Unmarshal(out.Bytes(), &js); err != nil {
		t.Fatal(err)
	}
	if js.Lost != 7 || len(js.CloseWait) != 1 || js.CloseWait[0].Count != 5 || js.States[0].State != "CLOSE_WAIT" ||
		js.States[0].Max != 5e9 || js.Lingers[0].Duration != 5e9 {
		t.Errorf("report %s", out.String())
	}
	out.Reset()
	if err := r.Render(&out, clock, time.UTC, false); err != nil || !strings.Contains(out.String(), "PROCESSES WITH THE MOST CLOSE_WAIT") {
		t.Errorf("text report: %v\n%s", err, out.String())
	}
	// The lingering connections, laid out by their column table.
	if want := "  CLOSE_WAIT    5.00s 10.0.0.1:40000           10.0.0.2:80                   9 leaky\n"; !strings.Contains(out.String(), want) {
		t.Errorf("text report has no line %q:\n%s", want, out.String())
	}
}

// Ages the kernel only bounds print as ranges and rank by their upper end; a
// timewait socket's owner is the process that closed it; the clients of a
// listening port group by address whatever their port; a namespace column
// appears when the rows span namespaces.
func TestWatchBoundsOwnersNamespaces(t *testing.T) {
	app := tracer.Task{PID: 77, Comm: tracer.CommFrom("grpc-server")}
	cli := tracer.Task{PID: 88, Comm: tracer.CommFrom("client")}
	svc := netip.MustParseAddrPort("10.0.0.1:50051")
	rows := []Socket{
		{Cookie: 1, Endpoints: tracer.Endpoints{Family: tracer.IPv4, NetNS: 1, Local: svc, Remote: netip.MustParseAddrPort("10.0.0.8:50100")},
			State: tracer.CloseWait, Age: 5 * time.Second, Owner: tracer.Owner{Task: app, From: tracer.OwnerIO}, Service: true},
		{Cookie: 2, Endpoints: tracer.Endpoints{Family: tracer.IPv4, NetNS: 1, Local: svc, Remote: netip.MustParseAddrPort("10.0.0.8:50200")},
			State: tracer.CloseWait, Age: 300 * time.Millisecond, AgeMax: 13200 * time.Millisecond, SinceStart: true,
			Owner: tracer.Owner{Task: app, From: tracer.OwnerProc}, Service: true},
		{Cookie: 3, Endpoints: tracer.Endpoints{Family: tracer.IPv4, NetNS: 2, Local: netip.MustParseAddrPort("10.0.0.8:50300"), Remote: svc},
			State: tracer.FinWait2, Timewait: true, Age: 2 * time.Second, AgeMax: 2*time.Second + 4*time.Millisecond, SinceStart: true,
			Owner: tracer.Owner{Task: cli, From: tracer.OwnerClose}},
		{Cookie: 5, Endpoints: tracer.Endpoints{NetNS: 1, Family: tracer.IPv6, Local: netip.MustParseAddrPort("[::1]:50051"), Remote: netip.MustParseAddrPort("[::1]:50500")},
			State: tracer.CloseWait, Age: 500 * time.Millisecond, Owner: tracer.Owner{Task: app, From: tracer.OwnerIO}, Service: true},
		{Cookie: 4, Endpoints: tracer.Endpoints{Family: tracer.IPv4, NetNS: 2, Local: netip.MustParseAddrPort("10.0.0.8:50400"), Remote: svc},
			State: tracer.FinWait1, Age: time.Second, SinceStart: true},
	}
	SortByAge(rows)
	if rows[0].Cookie != 2 {
		t.Errorf("first row %d, want the CLOSE_WAIT that may be 13.2s old", rows[0].Cookie)
	}
	names := func(inode uint32) string {
		if inode == 2 {
			return "client-ns"
		}
		return ""
	}
	var txt, js bytes.Buffer
	if err := NewWatch(&txt, WatchOptions{Clock: clock, Location: time.UTC, NetNSName: names}).Render(5e9, rows, 0); err != nil {
		t.Fatal(err)
	}
	if err := NewWatch(&js, WatchOptions{Clock: clock, JSON: true}).Render(5e9, rows, 0); err != nil {
		t.Fatal(err)
	}
	golden(t, "watch-bounds.txt", txt.Bytes())
	golden(t, "watch-bounds.jsonl", js.Bytes())
	_, byRemote := Groups(rows)
	if byRemote[0].Remote != "10.0.0.8:*" || byRemote[0].Count != 2 || byRemote[0].Oldest != 13200*time.Millisecond {
		t.Errorf("by remote: %+v, want the service's two clients as 10.0.0.8:*, oldest 13.2s", byRemote)
	}
	if !slices.ContainsFunc(byRemote, func(g Group) bool { return g.Remote == "[::1]:*" }) {
		t.Errorf("by remote: %+v, want the IPv6 client as [::1]:*", byRemote)
	}
}

// The keepalive timer armed in FIN_WAIT2 is the FIN_WAIT2 timer: said so,
// without the keepalive settings that do not apply.
func TestFinWait2TimerText(t *testing.T) {
	var out bytes.Buffer
	r := NewText(&out, TextOptions{Clock: clock, Location: time.UTC, NoHeader: true})
	e := tracer.Event{Type: tracer.EventKeepalive, Time: 1e9, Cookie: 3, Old: tracer.FinWait2, New: tracer.FinWait2,
		Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: netip.MustParseAddrPort("127.0.0.1:80"), Remote: netip.MustParseAddrPort("127.0.0.1:40000")},
		ExpiresIn: 60 * time.Second, Keepalive: tracer.Keepalive{Event: tracer.KeepaliveArmed, Idle: 2 * time.Hour}}
	if err := r.Render(&e); err != nil {
		t.Fatal(err)
	}
	_ = r.Flush()
	if got := out.String(); !strings.Contains(got, "fin_wait2 timer armed (in 60.0s)") || strings.Contains(got, "SO_KEEPALIVE") {
		t.Errorf("got %q", got)
	}
}

// A namespace's name is a file name in /run/netns: any bytes. Its control
// characters reach no terminal, in watch's columns or trace's, and its column
// is as wide as it shows.
func TestNetNSNamesSanitised(t *testing.T) {
	names := func(inode uint32) string {
		if inode == 2 {
			return "é\x1b[2J"
		}
		return ""
	}
	rows := []Socket{
		{Cookie: 1, Endpoints: tracer.Endpoints{Family: tracer.IPv4, NetNS: 1, Local: netip.MustParseAddrPort("10.0.0.1:80"), Remote: netip.MustParseAddrPort("10.0.0.8:50100")},
			State: tracer.CloseWait, Age: 5 * time.Second},
		{Cookie: 2, Endpoints: tracer.Endpoints{Family: tracer.IPv4, NetNS: 2, Local: netip.MustParseAddrPort("10.0.0.8:50100"), Remote: netip.MustParseAddrPort("10.0.0.1:80")},
			State: tracer.FinWait2, Age: 5 * time.Second},
	}
	var w bytes.Buffer
	if err := NewWatch(&w, WatchOptions{Clock: clock, Location: time.UTC, NetNSName: names}).Render(5e9, rows, 0); err != nil {
		t.Fatal(err)
	}
	var tr bytes.Buffer
	text := NewText(&tr, TextOptions{Wide: true, Clock: clock, Location: time.UTC, NetNSName: names})
	e := tracer.Event{Type: tracer.EventState, Time: 1e9, Cookie: 2, Old: tracer.FinWait1, New: tracer.FinWait2, Endpoints: rows[1].Endpoints}
	if err := text.Render(&e); err != nil {
		t.Fatal(err)
	}
	_ = text.Flush()
	for _, out := range []string{w.String(), tr.String()} {
		if strings.Contains(out, "\x1b") || !strings.Contains(out, "é?[2J") {
			t.Errorf("got %q, want the name as é?[2J", out)
		}
	}
	// (the column: "é?[2J" is 5 wide, NETNS too; one space after it)
	if !strings.Contains(w.String(), "é?[2J 10.0.0.8:50100") {
		t.Errorf("watch's NETNS column padded by bytes, not by what shows:\n%s", w.String())
	}
}

// Reset reason names from a capture's header reach neither the terminal nor
// JSON unsanitised.
func TestRstReasonNamesSanitised(t *testing.T) {
	k := tracer.KernelInfo{RstReasons: map[uint16]string{7: "EVIL\x1b[2J\"},\"x\":\"y"}}
	got := string(appendRstReason(nil, &k, 7))
	if strings.ContainsAny(got, "\x1b\"{},:[") {
		t.Errorf("got %q", got)
	}
	var js bytes.Buffer
	j := NewJSON(&js, JSONOptions{Clock: clock, Kernel: k})
	e := tracer.Event{Type: tracer.EventState, Old: tracer.Established, New: tracer.Close, Reason: tracer.ReasonRSTSent, RstReason: 7}
	if err := j.Render(&e); err != nil {
		t.Fatal(err)
	}
	_ = j.Flush()
	var m map[string]any
	if err := json.Unmarshal(js.Bytes(), &m); err != nil || strings.ContainsAny(m["rst_reason"].(string), "\x1b\"") {
		t.Errorf("JSON %q: %v", js.String(), err)
	}
}

// A transition whose steps between were not seen says so, in text and JSON,
// with no duration.
func TestUnseenSteps(t *testing.T) {
	e := tracer.Event{Type: tracer.EventState, Time: 1e9, Cookie: 3, Old: tracer.FinWait1, New: tracer.TimeWait, Timewait: true, Unseen: true,
		Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: netip.MustParseAddrPort("127.0.0.1:40000"), Remote: netip.MustParseAddrPort("127.0.0.1:80")},
		ExpiresIn: 60 * time.Second}
	var text, js bytes.Buffer
	for _, r := range []Renderer{NewText(&text, TextOptions{Clock: clock, Location: time.UTC, NoHeader: true}), NewJSON(&js, JSONOptions{Clock: clock})} {
		if err := r.Render(&e); err != nil {
			t.Fatal(err)
		}
		_ = r.Flush()
	}
	if got := text.String(); !strings.Contains(got, " - ") || !strings.Contains(got, "FIN_WAIT1 -> TIME_WAIT (timewait, ends in 60.0s; steps between unseen)") {
		t.Errorf("text: %q", got)
	}
	var m map[string]any
	if err := json.Unmarshal(js.Bytes(), &m); err != nil || m["unseen"] != true || m["duration_ns"] != nil {
		t.Errorf("JSON: %s (%v)", js.String(), err)
	}
}

// renderReport renders r as text and as JSON.
func renderReport(t *testing.T, r *Report) (text, js *bytes.Buffer) {
	t.Helper()
	text, js = new(bytes.Buffer), new(bytes.Buffer)
	if err := r.Render(text, clock, time.UTC, false); err != nil {
		t.Fatal(err)
	}
	if err := r.Render(js, clock, time.UTC, true); err != nil {
		t.Fatal(err)
	}
	return text, js
}

// The report counts the transitions whose steps between were not seen, in
// text and JSON.
func TestReportCountsUnseen(t *testing.T) {
	r := NewReport()
	e := tracer.Event{Type: tracer.EventState, Time: 1e9, Cookie: 3, Old: tracer.FinWait1, New: tracer.TimeWait, Timewait: true, Unseen: true,
		Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: netip.MustParseAddrPort("127.0.0.1:40000"), Remote: netip.MustParseAddrPort("127.0.0.1:80")}}
	_ = r.Event(&e)
	e.Unseen, e.Cookie, e.Old = false, 4, tracer.FinWait2
	_ = r.Event(&e)
	text, js := renderReport(t, r)
	if !strings.Contains(text.String(), "\n1 transitions had steps between not seen") {
		t.Errorf("text:\n%s", text.String())
	}
	var got struct {
		Unseen uint64 `json:"unseen_transitions"`
	}
	if err := json.Unmarshal(js.Bytes(), &got); err != nil || got.Unseen != 1 {
		t.Errorf("JSON unseen_transitions %d (%v), want 1", got.Unseen, err)
	}
}

// TIME_WAIT by remote: a server that closed first counts its clients by
// address ("127.0.0.1:*": their ephemeral ports say nothing and cost it no
// port), a client by the service it left in TIME_WAIT, port and all.
func TestReportTimewaitRemotes(t *testing.T) {
	r := NewReport()
	for i, ends := range [][2]string{
		{"127.0.0.1:8080", "127.0.0.1:43434"}, {"127.0.0.1:8080", "127.0.0.1:43450"}, // server ends
		{"127.0.0.1:43462", "127.0.0.1:8080"}, // a client end
	} {
		e := tracer.Event{Type: tracer.EventState, Time: uint64(1e9 + i), Cookie: uint64(i + 1), Old: tracer.FinWait2, New: tracer.TimeWait, Timewait: true,
			Endpoints: tracer.Endpoints{Family: tracer.IPv4, Local: netip.MustParseAddrPort(ends[0]), Remote: netip.MustParseAddrPort(ends[1])}}
		_ = r.Event(&e)
	}
	text, js := renderReport(t, r)
	if !strings.Contains(text.String(), "         2  127.0.0.1:*\n") || !strings.Contains(text.String(), "         1  127.0.0.1:8080\n") {
		t.Errorf("text:\n%s", text.String())
	}
	var got struct {
		Remotes map[string]uint64 `json:"time_wait_by_remote"`
	}
	if err := json.Unmarshal(js.Bytes(), &got); err != nil || len(got.Remotes) != 2 || got.Remotes["127.0.0.1:*"] != 2 || got.Remotes["127.0.0.1:8080"] != 1 {
		t.Errorf("JSON time_wait_by_remote %v (%v)", got.Remotes, err)
	}
}

// BenchmarkWatchSnapshot is one refresh of watch over 100,000 lingering
// sockets: the snapshot into the last one's rows, then the text view (its
// top 30 rows and the groups). A pile of half-closed connections: servers in
// CLOSE_WAIT, their clients in FIN_WAIT2.
func BenchmarkWatchSnapshot(b *testing.B) {
	tl := timeline.New(nil, timeline.Options{MaxConns: 200_000})
	lo := netip.MustParseAddr("127.0.0.1")
	for i := range 50_000 {
		server := netip.AddrPortFrom(lo, uint16(8000+i%6))
		client := netip.AddrPortFrom(lo, uint16(32768+i%28000))
		tl.SeedSocket(&tracer.Socket{Cookie: uint64(2*i + 1), State: tracer.CloseWait,
			Endpoints: tracer.Endpoints{Family: tracer.IPv4, NetNS: 1, Local: server, Remote: client}})
		tl.SeedSocket(&tracer.Socket{Cookie: uint64(2*i + 2), State: tracer.FinWait2,
			Endpoints: tracer.Endpoints{Family: tracer.IPv4, NetNS: 1, Local: client, Remote: server}})
	}
	w := NewWatch(discard{}, WatchOptions{Clock: clock, Location: time.UTC, Top: 30})
	var rows []Socket
	b.ReportAllocs()
	for b.Loop() {
		rows = AppendSnapshot(rows, tl, 60e9, &tracer.Filter{}, LingerStates, 0)
		if err := w.Render(60e9, rows, 0); err != nil {
			b.Fatal(err)
		}
	}
	if len(rows) != 100_000 {
		b.Fatalf("%d rows, want 100000", len(rows))
	}
}
