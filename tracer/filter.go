// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Filter selects events. Every condition that is set must hold; a list holds
// when any of its values does. The zero Filter matches everything.
//
// The tracer runs what it can of a Filter in the kernel so that filtered-out
// events cost no ring buffer space; Match is the full definition, applied again
// in user space and on replay.
type Filter struct {
	Ports  []uint16       // local or remote port
	LPorts []uint16       // local port
	RPorts []uint16       // remote port
	Addrs  []netip.Prefix // local or remote address
	Family Family         // FamilyAny, IPv4 or IPv6
	States StateSet       // old or new state
	PIDs   []uint32       // owner tgid
	Comm   string         // owner task name, exact (as the kernel keeps it: 15 bytes)
	NetNS  uint32         // network namespace inode
	// Owners, when set, must accept the owner's process: the conditions
	// only user space can check (--cgroup, --container). The kernel side
	// ignores it.
	Owners func(o *Owner) bool
}

// maxFilterValues bounds each list: the kernel-side sets are this big.
const maxFilterValues = 256

// Validate reports a filter the kernel side cannot hold.
func (f *Filter) Validate() error {
	for _, l := range []struct {
		name string
		n    int
	}{{"--port", len(f.Ports)}, {"--lport", len(f.LPorts)}, {"--rport", len(f.RPorts)}, {"--addr", len(f.Addrs)}, {"--pid", len(f.PIDs)}} {
		if l.n > maxFilterValues {
			return fmt.Errorf("%s: %d values, at most %d", l.name, l.n, maxFilterValues)
		}
	}
	if len(f.Comm) > 15 {
		return fmt.Errorf("--comm %q: the kernel keeps at most 15 bytes of a task name", f.Comm)
	}
	return nil
}

// Match reports whether e passes the filter. Lost-event reports always pass.
// A timewait re-arm passes whatever states the filter wants: it is never
// shown, and it is what tells the timeline that the timewait cancel before it
// (a move to CLOSE, which a states filter may want) was no kill.
func (f *Filter) Match(e *Event) bool {
	switch e.Type {
	case EventLost:
		return true
	case EventTWRearm:
		return f.matchConn(&e.Endpoints, &e.Owner)
	}
	return f.MatchConn(&e.Endpoints, &e.Owner, e.Old, e.New)
}

// MatchConn reports whether a connection at ep, owned by o, passes the
// filter in state old or new (the states filter wants either).
func (f *Filter) MatchConn(ep *Endpoints, o *Owner, old, new State) bool {
	if f.States != 0 && !f.States.Has(old) && !f.States.Has(new) {
		return false
	}
	return f.matchConn(ep, o)
}

// matchConn: MatchConn in any state.
func (f *Filter) matchConn(ep *Endpoints, o *Owner) bool {
	if f.Family != FamilyAny && ep.Family != f.Family {
		return false
	}
	if f.NetNS != 0 && ep.NetNS != f.NetNS {
		return false
	}
	lport, rport := ep.Local.Port(), ep.Remote.Port()
	if len(f.Ports) > 0 && !slices.Contains(f.Ports, lport) && !slices.Contains(f.Ports, rport) {
		return false
	}
	if len(f.LPorts) > 0 && !slices.Contains(f.LPorts, lport) {
		return false
	}
	if len(f.RPorts) > 0 && !slices.Contains(f.RPorts, rport) {
		return false
	}
	if len(f.Addrs) > 0 && !prefixesContain(f.Addrs, ep.Local.Addr()) && !prefixesContain(f.Addrs, ep.Remote.Addr()) {
		return false
	}
	if len(f.PIDs) > 0 && (!o.Known() || !slices.Contains(f.PIDs, o.PID)) {
		return false
	}
	if f.Comm != "" && (!o.Known() || string(o.Comm.Bytes()) != f.Comm) {
		return false
	}
	if f.Owners != nil && (!o.Known() || !f.Owners(o)) {
		return false
	}
	return true
}

func prefixesContain(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ParsePorts parses "80,443" (repeated flags are joined by the caller).
func ParsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range splitList(s) {
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("invalid port %q (want 1-65535)", f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

// ParsePrefix accepts an address (IPv4 or IPv6) or a CIDR. IPv4-mapped IPv6
// is taken as IPv4, as the tracer reports such connections.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid address or CIDR %q", s)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid address or CIDR %q", s)
	}
	a = a.Unmap().WithZone("")
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ParseStates parses a list of state names (see ParseState).
func ParseStates(s string) (StateSet, error) {
	var set StateSet
	for _, f := range splitList(s) {
		st, err := ParseState(f)
		if err != nil {
			return 0, err
		}
		set.Add(st)
	}
	return set, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
