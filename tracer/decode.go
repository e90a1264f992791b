// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
	"unsafe"
)

// Offsets into struct event, taken from the bpf2go-generated mirror of the C
// struct so that a change on the C side moves them too.
var rawEvent tcpstateEvent

const (
	rawEventSize = int(unsafe.Sizeof(rawEvent))

	offTs       = unsafe.Offsetof(rawEvent.TsNs)
	offCookie   = unsafe.Offsetof(rawEvent.Cookie)
	offDuration = unsafe.Offsetof(rawEvent.DurationNs)
	offExpires  = unsafe.Offsetof(rawEvent.TimerExpires)
	offJiffies  = unsafe.Offsetof(rawEvent.Jiffies)
	offRstRsn   = unsafe.Offsetof(rawEvent.RstReason)
	offReason   = unsafe.Offsetof(rawEvent.Reason)
	offKaEvent  = unsafe.Offsetof(rawEvent.KaEvent)
	offKaProbe  = unsafe.Offsetof(rawEvent.KaProbe)
	offKaCount  = unsafe.Offsetof(rawEvent.KaCount)
	offKaSrc    = unsafe.Offsetof(rawEvent.KaSrc)
	offKaIdle   = unsafe.Offsetof(rawEvent.KaIdle)
	offKaIntvl  = unsafe.Offsetof(rawEvent.KaIntvl)
	offKaUTO    = unsafe.Offsetof(rawEvent.KaUserTimeout)
	offNetns    = unsafe.Offsetof(rawEvent.Netns)
	offPid      = unsafe.Offsetof(rawEvent.Pid)
	offCgroup   = unsafe.Offsetof(rawEvent.Cgroup)
	offTid      = unsafe.Offsetof(rawEvent.Tid)
	offCPUPid   = unsafe.Offsetof(rawEvent.CpuPid)
	offCPU      = unsafe.Offsetof(rawEvent.Cpu)
	offSkErr    = unsafe.Offsetof(rawEvent.SkErr)
	offFamily   = unsafe.Offsetof(rawEvent.Family)
	offSport    = unsafe.Offsetof(rawEvent.Sport)
	offDport    = unsafe.Offsetof(rawEvent.Dport)
	offType     = unsafe.Offsetof(rawEvent.Type)
	offOld      = unsafe.Offsetof(rawEvent.OldState)
	offNew      = unsafe.Offsetof(rawEvent.NewState)
	offOwnerSrc = unsafe.Offsetof(rawEvent.OwnerSrc)
	offFlags    = unsafe.Offsetof(rawEvent.Flags)
	offSaddr    = unsafe.Offsetof(rawEvent.Saddr)
	offDaddr    = unsafe.Offsetof(rawEvent.Daddr)
	offComm     = unsafe.Offsetof(rawEvent.Comm)
	offCPUComm  = unsafe.Offsetof(rawEvent.CpuComm)
)

const (
	evfDuration    = uint8(tcpstateEventFlagEVF_DURATION)
	evfOwner       = uint8(tcpstateEventFlagEVF_OWNER)
	evfTimewait    = uint8(tcpstateEventFlagEVF_TIMEWAIT)
	evfDurationMin = uint8(tcpstateEventFlagEVF_DURATION_MIN)
	evfUnseen      = uint8(tcpstateEventFlagEVF_UNSEEN)
)

const (
	kaOn          = uint8(tcpstateKaSrcKA_ON)
	kaIdleSocket  = uint8(tcpstateKaSrcKA_IDLE_SOCKET)
	kaIntvlSocket = uint8(tcpstateKaSrcKA_INTVL_SOCKET)
	kaCountSocket = uint8(tcpstateKaSrcKA_COUNT_SOCKET)
	kaPending     = uint8(tcpstateKaSrcKA_PENDING)
)

const (
	afInet  = 2
	afInet6 = 10
)

// Decode fills e from one ring buffer record; hz converts timer jiffies (0:
// leave ExpiresIn unset). It allocates nothing.
func Decode(b []byte, e *Event, hz uint32) error {
	if len(b) < rawEventSize {
		return fmt.Errorf("decoding event: %d bytes, want %d", len(b), rawEventSize)
	}
	ne := binary.NativeEndian
	*e = Event{
		Type:      EventType(b[offType]),
		Time:      ne.Uint64(b[offTs:]),
		Cookie:    ne.Uint64(b[offCookie:]),
		Endpoints: Endpoints{NetNS: ne.Uint32(b[offNetns:])},
		Old:       State(b[offOld]),
		New:       State(b[offNew]),
		SkErr:     int32(ne.Uint32(b[offSkErr:])),
	}
	switch e.Type {
	case EventState, EventReset, EventTWCancel, EventTWRearm, EventKeepalive, EventTWHandover:
	default:
		return fmt.Errorf("decoding event: unknown type %d", b[offType])
	}
	e.Reason = Reason(b[offReason])
	e.RstReason = ne.Uint16(b[offRstRsn:])
	flags := b[offFlags]
	e.Timewait = flags&evfTimewait != 0
	e.DurationMin = flags&evfDurationMin != 0
	e.Unseen = flags&evfUnseen != 0
	if (e.Timewait || e.Type == EventKeepalive) && hz != 0 {
		e.ExpiresIn = JiffiesToDuration(int64(ne.Uint64(b[offExpires:])-ne.Uint64(b[offJiffies:])), hz)
	}
	if e.Type == EventKeepalive {
		src := b[offKaSrc]
		e.Keepalive = Keepalive{
			Event: KeepaliveEvent(b[offKaEvent]), On: src&kaOn != 0, Probes: b[offKaProbe], Count: b[offKaCount],
			IdleFromSocket: src&kaIdleSocket != 0, IntvlFromSocket: src&kaIntvlSocket != 0, CountFromSocket: src&kaCountSocket != 0,
			UserTimeout: time.Duration(ne.Uint32(b[offKaUTO:])) * time.Millisecond,
		}
		if hz != 0 {
			e.Keepalive.Idle = JiffiesToDuration(int64(ne.Uint32(b[offKaIdle:])), hz)
			e.Keepalive.Intvl = JiffiesToDuration(int64(ne.Uint32(b[offKaIntvl:])), hz)
		}
	}
	if flags&evfDuration != 0 {
		e.Duration = time.Duration(ne.Uint64(b[offDuration:]))
		e.HasDuration = true
	}
	if flags&evfOwner != 0 {
		e.Owner.From = OwnerSource(b[offOwnerSrc])
		e.Owner.PID = ne.Uint32(b[offPid:])
		e.Owner.TID = ne.Uint32(b[offTid:])
		e.Owner.Cgroup = ne.Uint64(b[offCgroup:])
		copy(e.Owner.Comm[:], b[offComm:offComm+16])
	}
	e.OnCPU.PID = ne.Uint32(b[offCPUPid:])
	e.CPU, e.HasCPU = ne.Uint32(b[offCPU:]), true
	copy(e.OnCPU.Comm[:], b[offCPUComm:offCPUComm+16])

	sport, dport := ne.Uint16(b[offSport:]), ne.Uint16(b[offDport:])
	switch ne.Uint16(b[offFamily:]) {
	case afInet:
		e.Family = IPv4
		e.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[offSaddr:offSaddr+4])), sport)
		e.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[offDaddr:offDaddr+4])), dport)
	case afInet6:
		e.Family = IPv6
		e.Local = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[offSaddr:offSaddr+16])), sport)
		e.Remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[offDaddr:offDaddr+16])), dport)
	default:
		return fmt.Errorf("decoding event: unknown address family %d", ne.Uint16(b[offFamily:]))
	}
	return nil
}

// JiffiesToDuration converts a count of kernel ticks at hz per second.
func JiffiesToDuration(j int64, hz uint32) time.Duration {
	return time.Duration(j) * time.Second / time.Duration(hz)
}
