// SPDX-License-Identifier: Apache-2.0

// Package verify tells whether live sockets run with the TCP settings an
// operator expects: keepalive time, interval and count, and fin_timeout. The
// values are per network namespace, a socket's own options override them,
// keepalive may be off, and a keepalive timer already armed keeps its expiry
// until it next fires. A Checker follows the keepalive events of the tracer
// and the namespaces' sysctls, and rates each socket.
package verify

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

// Status of one socket against one setting.
type Status string

const (
	OK         Status = "ok"         // runs with the expected value
	Pending    Status = "pending"    // will, when its timer next fires (or ends)
	Unaffected Status = "unaffected" // the setting does not apply: socket option, keepalive off
	Mismatch   Status = "mismatch"   // the namespace (or the socket) says otherwise
)

// Setting names, as the sysctl without net.ipv4.tcp_.
const (
	KeepaliveTime   = "keepalive_time"
	KeepaliveIntvl  = "keepalive_intvl"
	KeepaliveProbes = "keepalive_probes"
	FinTimeout      = "fin_timeout"
)

// Expect holds the expected values, in the sysctls' own units (seconds,
// probes). A missing name is not checked; with none at all, each socket is
// checked against its namespace's current sysctls.
type Expect map[string]int

// ParseExpect parses "keepalive_time=60,keepalive_intvl=10".
func ParseExpect(s string) (Expect, error) {
	e := Expect{}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		name, val, ok := strings.Cut(kv, "=")
		name = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(name), "net.ipv4."), "tcp_")
		if !ok {
			return nil, fmt.Errorf("%q: want name=value", kv)
		}
		switch name {
		case KeepaliveTime, KeepaliveIntvl, KeepaliveProbes, FinTimeout:
		default:
			return nil, fmt.Errorf("%q: unknown setting (one of keepalive_time, keepalive_intvl, keepalive_probes, fin_timeout)", name)
		}
		n, err := strconv.Atoi(strings.TrimSpace(val))
		if err != nil || n <= 0 || n > math.MaxInt32 {
			return nil, fmt.Errorf("%q: the value must be a positive whole number in the sysctl's unit", kv)
		}
		e[name] = n
	}
	return e, nil
}

// Socket is what the checker knows of one connection.
type Socket struct {
	Cookie uint64
	tracer.Endpoints
	State tracer.State
	Owner tracer.Owner

	KeepaliveOn                                      bool
	Idle, Intvl                                      time.Duration // effective
	Count                                            uint8
	IdleFromSocket, IntvlFromSocket, CountFromSocket bool
	sockIdle, sockIntvl                              time.Duration // from the walk, 0 unset
	sockCount                                        uint8

	// The keepalive timer: when it fires (CLOCK_BOOTTIME ns, 0 not armed),
	// and the idle time that expiry came from (0: unknown).
	Expires   uint64
	ArmedWith time.Duration
	ArmedAt   uint64 // when tcpstate saw it armed (0: before start)
	AdoptedAt uint64 // when it was first seen armed with the expected idle time
	Probes    []uint64

	// FIN_WAIT2: when it began, and when the socket was orphaned in it
	// (closed by its owner: tcp_fin_timeout counts from the later of the
	// two), with how long its timer was armed for then (0: not seen). Found
	// orphaned by the start-up walk: neither is known, only when its timer
	// ends. FinWait2Took is how long it lasted orphaned, once it timed out.
	FinWait2Since   uint64
	Orphaned        uint64
	FinWait2Armed   time.Duration
	FinWait2Expires uint64
	OrphanedBefore  bool
	FinWait2Took    time.Duration
}

// Result is one socket rated against one setting.
type Result struct {
	Socket *Socket
	Check  string
	Status Status
	Detail string
	Expect time.Duration // expected value (count for keepalive_probes)
}

// Change is a sysctl that changed while the checker ran.
type Change struct {
	Time     uint64
	NetNS    uint32
	Name     string
	Old, New string
}

// Checker is a tracer.Sink. Not safe for concurrent use.
type Checker struct {
	expect  Expect
	filter  *tracer.Filter
	socks   map[uint64]*Socket
	sysctls map[uint32]map[string]string
	changed map[uint32]map[string]uint64 // when each sysctl last changed
	Changes []Change
}

// New returns a Checker for the sockets passing filter.
func New(expect Expect, filter *tracer.Filter) *Checker {
	return &Checker{expect: expect, filter: filter, socks: map[uint64]*Socket{},
		sysctls: map[uint32]map[string]string{}, changed: map[uint32]map[string]uint64{}}
}

// Seed takes the start-up walk: sockets and their namespaces' sysctls.
func (c *Checker) Seed(socks []tracer.Socket, nss []tracer.NetNS) {
	for _, ns := range nss {
		c.sysctls[ns.Inode] = ns.Sysctls
	}
	for i := range socks {
		s := &socks[i]
		if s.Timewait && s.State != tracer.FinWait2 || s.State == tracer.Listen || s.State == tracer.NewSynRecv {
			continue
		}
		k := &Socket{Cookie: s.Cookie, Endpoints: s.Endpoints, State: s.State, Owner: s.Owner,
			KeepaliveOn: s.KeepaliveOn, sockIdle: s.SockIdle, sockIntvl: s.SockIntvl, sockCount: s.SockCount}
		if !c.match(k) {
			continue
		}
		c.effective(k)
		if s.KeepaliveArmed {
			k.Expires = s.Scanned + uint64(s.KeepaliveIn)
			// keepalive re-arms for the rest of the idle time counted from
			// the last segment received: expiry - that is the idle time
			// the timer came from (probing: the interval).
			if s.LastRecv != 0 && s.ProbesOut == 0 && k.Expires > s.LastRecv {
				k.ArmedWith = roundSecond(time.Duration(k.Expires - s.LastRecv))
			}
		}
		// An orphan: a timewait socket, or a full socket no file holds
		// (tcp_fin_timeout above TCP_TIMEWAIT_LEN). Since is when its timer
		// says FIN_WAIT2 began if it ran with tcp_fin_timeout: no witness.
		if s.State == tracer.FinWait2 && (s.Timewait || s.Inode == 0) {
			k.OrphanedBefore = true
			if s.Timewait {
				k.FinWait2Expires = s.Scanned + uint64(s.ExpiresIn)
			}
		}
		c.socks[s.Cookie] = k
	}
}

func (c *Checker) match(k *Socket) bool {
	if c.filter == nil {
		return true
	}
	return c.filter.MatchConn(&k.Endpoints, &k.Owner, k.State, k.State)
}

// sysctl reads a namespace's setting in its unit (seconds or count).
func (c *Checker) sysctl(netns uint32, name string) (int, bool) {
	v, err := strconv.Atoi(c.sysctls[netns][name])
	return v, err == nil
}

// effective fills the values the kernel applies to k now.
func (c *Checker) effective(k *Socket) {
	k.Idle, k.IdleFromSocket = k.sockIdle, k.sockIdle != 0
	k.Intvl, k.IntvlFromSocket = k.sockIntvl, k.sockIntvl != 0
	k.Count, k.CountFromSocket = k.sockCount, k.sockCount != 0
	if !k.IdleFromSocket {
		v, _ := c.sysctl(k.NetNS, KeepaliveTime)
		k.Idle = time.Duration(v) * time.Second
	}
	if !k.IntvlFromSocket {
		v, _ := c.sysctl(k.NetNS, KeepaliveIntvl)
		k.Intvl = time.Duration(v) * time.Second
	}
	if !k.CountFromSocket {
		v, _ := c.sysctl(k.NetNS, KeepaliveProbes)
		k.Count = uint8(v)
	}
}

func roundSecond(d time.Duration) time.Duration {
	return (d + 250*time.Millisecond) / time.Second * time.Second
}

// UpdateSysctls takes a fresh reading of a namespace's sysctls at time now
// and records what changed.
func (c *Checker) UpdateSysctls(netns uint32, now uint64, vals map[string]string) {
	old := c.sysctls[netns]
	for name, v := range vals {
		if o, ok := old[name]; ok && o != v {
			c.Changes = append(c.Changes, Change{Time: now, NetNS: netns, Name: name, Old: o, New: v})
			if c.changed[netns] == nil {
				c.changed[netns] = map[string]uint64{}
			}
			c.changed[netns][name] = now
		}
	}
	c.sysctls[netns] = vals
	for _, k := range c.socks {
		if k.NetNS == netns {
			c.effective(k)
		}
	}
}

// Orphaned notes where an owner's close() leaves a socket in FIN_WAIT2: the
// timewait socket taking it over (EVENT_TW_HANDOVER, which the timeline does
// not pass on), or the FIN_WAIT2 timer armed (tcp_fin_timeout above
// TCP_TIMEWAIT_LEN). Only the first: at the end of an armed excess the kernel
// hands over again.
func (c *Checker) orphaned(k *Socket, e *tracer.Event) {
	if k.Orphaned != 0 || k.OrphanedBefore {
		return
	}
	k.Orphaned, k.FinWait2Armed = e.Time, e.ExpiresIn
	k.FinWait2Expires = e.Time + uint64(max(e.ExpiresIn, 0))
}

// Handover takes an event the timeline keeps to itself: a timewait socket
// took over a connection in the same state (for FIN_WAIT2: orphaned now).
func (c *Checker) Handover(e *tracer.Event) {
	if k := c.socks[e.Cookie]; k != nil && e.Type == tracer.EventTWHandover && e.New == tracer.FinWait2 {
		c.orphaned(k, e)
	}
}

// Event follows the tracer: keepalive timers, FIN_WAIT2 and TIME_WAIT ends.
func (c *Checker) Event(e *tracer.Event) error {
	if e.Cookie == 0 || e.Type == tracer.EventLost {
		return nil
	}
	k := c.socks[e.Cookie]
	if k == nil {
		if e.New == tracer.Close || e.Type == tracer.EventLinger {
			return nil
		}
		k = &Socket{Cookie: e.Cookie, Endpoints: e.Endpoints, State: e.New, Owner: e.Owner}
		if !c.match(k) {
			return nil
		}
		c.socks[e.Cookie] = k
		c.effective(k)
	}
	if e.Owner.Known() {
		k.Owner = e.Owner
	}
	if e.Local.Port() != 0 { // not chosen yet at CLOSE -> SYN_SENT
		k.Local, k.Remote = e.Local, e.Remote
	}
	switch e.Type {
	case tracer.EventKeepalive:
		c.keepalive(k, e)
	case tracer.EventState:
		if e.New == tracer.FinWait2 {
			k.FinWait2Since = e.Time
		}
		k.State = e.New
		// Only a FIN_WAIT2 that timed out, orphaned after the last change
		// of fin_timeout, tells what fin_timeout the namespace applies: how
		// long it lasted from the later of its start and its orphaning. One
		// armed before keeps its timer: when it ends it leaves the scope.
		if e.Old == tracer.FinWait2 && e.Reason == tracer.ReasonFinTimeout && e.HasDuration && !e.DurationMin &&
			!k.OrphanedBefore {
			start := max(e.Time-uint64(e.Duration), k.Orphaned)
			if start > c.changed[k.NetNS][FinTimeout] {
				k.FinWait2Took = time.Duration(e.Time - start)
				return nil
			}
		}
		if e.New == tracer.Close || e.Old == tracer.FinWait2 && e.New == tracer.TimeWait {
			delete(c.socks, e.Cookie)
		}
	}
	return nil
}

func (c *Checker) keepalive(k *Socket, e *tracer.Event) {
	ka := &e.Keepalive
	k.State = e.New
	if e.New == tracer.FinWait2 {
		// The timer stands for FIN_WAIT2 there, not keepalive: armed by the
		// orphaning.
		if ka.Event == tracer.KeepaliveArmed {
			c.orphaned(k, e)
		}
		return
	}
	k.KeepaliveOn = ka.On
	k.Idle, k.Intvl, k.Count = ka.Idle, ka.Intvl, ka.Count
	k.IdleFromSocket, k.IntvlFromSocket, k.CountFromSocket = ka.IdleFromSocket, ka.IntvlFromSocket, ka.CountFromSocket
	if k.IdleFromSocket {
		k.sockIdle = ka.Idle
	} else {
		k.sockIdle = 0
	}
	if k.IntvlFromSocket {
		k.sockIntvl = ka.Intvl
	} else {
		k.sockIntvl = 0
	}
	if k.CountFromSocket {
		k.sockCount = ka.Count
	} else {
		k.sockCount = 0
	}
	switch ka.Event {
	case tracer.KeepaliveArmed, tracer.KeepaliveFired:
		if ka.Event == tracer.KeepaliveArmed {
			k.Expires = e.Time + uint64(e.ExpiresIn)
			k.ArmedAt = e.Time
		}
		// The kernel read the idle time just now, to compute this expiry or
		// to decide at this fire: from here on the socket runs with it.
		k.ArmedWith = ka.Idle
		if want, ok := c.expectIdle(k); ok && ka.Idle == want && k.AdoptedAt == 0 {
			k.AdoptedAt = e.Time
		}
	case tracer.KeepaliveProbe:
		k.Probes = append(k.Probes, e.Time)
		if len(k.Probes) > 16 {
			k.Probes = k.Probes[1:]
		}
	case tracer.KeepaliveTimeout:
		k.Expires = 0
	}
}

// Idle does nothing: the caller decides when to look.
func (c *Checker) Idle() error { return nil }

// expectIdle is the idle time k should run with: expected, else the sysctl.
func (c *Checker) expectIdle(k *Socket) (time.Duration, bool) {
	if v, ok := c.expect[KeepaliveTime]; ok {
		return time.Duration(v) * time.Second, true
	}
	v, ok := c.sysctl(k.NetNS, KeepaliveTime)
	return time.Duration(v) * time.Second, ok
}

// checks are the settings to rate: expected ones, or all keepalive ones.
func (c *Checker) checks() []string {
	if len(c.expect) == 0 {
		return []string{KeepaliveTime, KeepaliveIntvl, KeepaliveProbes, FinTimeout}
	}
	var out []string
	for _, name := range []string{KeepaliveTime, KeepaliveIntvl, KeepaliveProbes, FinTimeout} {
		if _, ok := c.expect[name]; ok {
			out = append(out, name)
		}
	}
	return out
}

// Results rates every socket in scope at time now, by cookie order.
func (c *Checker) Results(now uint64) []Result {
	var out []Result
	cookies := make([]uint64, 0, len(c.socks))
	for ck := range c.socks {
		cookies = append(cookies, ck)
	}
	slices.Sort(cookies)
	for _, ck := range cookies {
		k := c.socks[ck]
		for _, name := range c.checks() {
			if r, ok := c.rate(k, name, now); ok {
				out = append(out, r)
			}
		}
	}
	return out
}

// rate rates k against one setting; false when the setting is not about
// this socket's state (keepalive for FIN_WAIT2, fin_timeout for ESTABLISHED).
func (c *Checker) rate(k *Socket, name string, now uint64) (Result, bool) {
	r := Result{Socket: k, Check: name}
	sys, haveSys := c.sysctl(k.NetNS, name)
	want, expected := c.expect[name]
	if !expected {
		want = sys
	}
	unit := time.Second
	if name == KeepaliveProbes {
		unit = 1
	}
	r.Expect = time.Duration(want) * unit
	keepaliveState := k.State == tracer.Established || k.State == tracer.CloseWait
	if name == FinTimeout {
		// (not orphaned: its owner may keep it in FIN_WAIT2 for ever)
		if k.FinWait2Took == 0 && (k.State != tracer.FinWait2 || k.Orphaned == 0 && !k.OrphanedBefore) {
			return r, false
		}
	} else if !keepaliveState {
		return r, false
	}
	if name != FinTimeout && !k.KeepaliveOn {
		r.Status, r.Detail = Unaffected, "SO_KEEPALIVE is off: no keepalive timer"
		return r, true
	}
	if name != FinTimeout && c.fromSocket(k, name) && c.value(k, name) != r.Expect {
		r.Status, r.Detail = Unaffected, fmt.Sprintf("%s set on the socket overrides the sysctl", socketOption(k, name))
		return r, true
	}
	if haveSys && sys != want {
		r.Status, r.Detail = Mismatch, fmt.Sprintf("namespace %d has net.ipv4.tcp_%s=%d, not %d", k.NetNS, name, sys, want)
		return r, true
	}
	switch name {
	case FinTimeout:
		return c.rateFinTimeout(r, k, now), true
	case KeepaliveTime:
		return c.rateIdle(r, k, now), true
	}
	// Interval and count are read at each fire: the effective value is it.
	switch {
	case c.value(k, name) != r.Expect:
		r.Status, r.Detail = Mismatch, fmt.Sprintf("runs with %s", c.socketValue(k, name))
	default:
		r.Status, r.Detail = OK, fmt.Sprintf("%s from the %s", c.socketValue(k, name), tracer.Source(c.fromSocket(k, name)))
		if name == KeepaliveIntvl && len(k.Probes) >= 2 {
			r.Detail += "; observed probe intervals " + intervals(k.Probes)
		}
	}
	return r, true
}

func (c *Checker) fromSocket(k *Socket, name string) bool {
	switch name {
	case KeepaliveTime:
		return k.IdleFromSocket
	case KeepaliveIntvl:
		return k.IntvlFromSocket
	case KeepaliveProbes:
		return k.CountFromSocket
	}
	return false
}

func (c *Checker) value(k *Socket, name string) time.Duration {
	switch name {
	case KeepaliveTime:
		return k.Idle
	case KeepaliveIntvl:
		return k.Intvl
	case KeepaliveProbes:
		return time.Duration(k.Count)
	}
	return 0
}

// socketOption names the socket option behind a setting, with its value.
func socketOption(k *Socket, name string) string {
	switch name {
	case KeepaliveTime:
		return fmt.Sprintf("TCP_KEEPIDLE=%s", k.Idle)
	case KeepaliveIntvl:
		return fmt.Sprintf("TCP_KEEPINTVL=%s", k.Intvl)
	}
	return fmt.Sprintf("TCP_KEEPCNT=%d", k.Count)
}

func (c *Checker) socketValue(k *Socket, name string) string {
	if name == KeepaliveProbes {
		return fmt.Sprintf("%s=%d", name, k.Count)
	}
	return fmt.Sprintf("%s=%s", name, c.value(k, name))
}

func (c *Checker) rateIdle(r Result, k *Socket, now uint64) Result {
	switch {
	case k.Idle != r.Expect:
		r.Status, r.Detail = Mismatch, fmt.Sprintf("runs with keepalive_time=%s", k.Idle)
	case k.Expires == 0:
		r.Status, r.Detail = Pending, "no keepalive timer armed yet"
	case k.ArmedWith == r.Expect:
		r.Status = OK
		r.Detail = fmt.Sprintf("armed with %s, fires in %s", k.ArmedWith, remaining(k.Expires, now))
		if k.AdoptedAt != 0 {
			r.Detail += fmt.Sprintf("; adopted %s ago", time.Duration(now-k.AdoptedAt).Round(time.Millisecond))
		}
	case k.ArmedWith == 0:
		r.Status, r.Detail = Pending, fmt.Sprintf("armed before tcpstate started with an unknown idle time; fires in %s", remaining(k.Expires, now))
	default:
		r.Status = Pending
		r.Detail = fmt.Sprintf("armed with %s from before the change; picks up %s when it fires in %s",
			k.ArmedWith, r.Expect, remaining(k.Expires, now))
	}
	return r
}

func (c *Checker) rateFinTimeout(r Result, k *Socket, now uint64) Result {
	// The timer counts whole jiffies from the one it was armed in: up to a
	// jiffy short when read a tick later (or more, from a stalled virtual CPU).
	armedOK := k.FinWait2Armed > r.Expect-500*time.Millisecond && k.FinWait2Armed <= r.Expect
	switch {
	case k.FinWait2Took != 0:
		d := k.FinWait2Took
		if d >= r.Expect-50*time.Millisecond && d <= r.Expect+r.Expect/8+100*time.Millisecond {
			r.Status, r.Detail = OK, fmt.Sprintf("orphaned FIN_WAIT2 ended after %s", d.Round(time.Millisecond))
		} else {
			r.Status, r.Detail = Mismatch, fmt.Sprintf("orphaned FIN_WAIT2 ended after %s, not %s", d.Round(time.Millisecond), r.Expect)
		}
	case k.OrphanedBefore:
		r.Status, r.Detail = Pending, "orphaned in FIN_WAIT2 before tcpstate started: keeps its timer, leaves when it ends"
		if k.FinWait2Expires != 0 {
			r.Detail = fmt.Sprintf("orphaned in FIN_WAIT2 before tcpstate started: keeps its timer (ends in %s), leaves when it ends",
				remaining(k.FinWait2Expires, now))
		}
	case c.changedAfter(k.NetNS, FinTimeout, k.Orphaned):
		r.Status, r.Detail = Pending, "orphaned in FIN_WAIT2 before the change: keeps its timer, leaves when it ends"
	case armedOK:
		r.Status, r.Detail = OK, fmt.Sprintf("orphaned FIN_WAIT2, its timer armed for %s (ends in %s)",
			k.FinWait2Armed.Round(time.Millisecond), remaining(k.FinWait2Expires, now))
	default:
		r.Status, r.Detail = Pending, fmt.Sprintf("orphaned in FIN_WAIT2 %s ago, its timer armed for %s: rated when it ends",
			time.Duration(now-k.Orphaned).Round(time.Millisecond), k.FinWait2Armed.Round(time.Millisecond))
	}
	return r
}

func (c *Checker) changedAfter(netns uint32, name string, t uint64) bool {
	return c.changed[netns][name] > t
}

func remaining(expires, now uint64) string {
	if expires <= now {
		return "0s"
	}
	return time.Duration(expires - now).Round(time.Millisecond).String()
}

func intervals(ts []uint64) string {
	var parts []string
	for i := 1; i < len(ts); i++ {
		parts = append(parts, time.Duration(ts[i]-ts[i-1]).Round(time.Millisecond).String())
	}
	return strings.Join(parts, " ")
}

// Unratable reports whether r is pending for good: a FIN_WAIT2 orphaned
// before tcpstate started keeps a timer nothing dates, and leaves the scope
// when it ends. Such a socket is listed, but neither a straggler nor checked.
func Unratable(r Result) bool {
	return r.Status == Pending && r.Check == FinTimeout && r.Socket.OrphanedBefore
}

// Satisfied reports whether no result is pending or a mismatch; strict also
// counts unaffected sockets as stragglers.
func Satisfied(rs []Result, strict bool) bool {
	for _, r := range rs {
		if r.Status == Pending || r.Status == Mismatch || strict && r.Status == Unaffected {
			return false
		}
	}
	return true
}
