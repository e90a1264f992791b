// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// EventType says what an Event reports.
type EventType uint8

const (
	// EventState is a TCP state transition.
	EventState EventType = EventType(tcpstateEventTypeEVENT_STATE)
	// EventLost reports events the kernel could not deliver (ring buffer full).
	EventLost EventType = 100
)

func (t EventType) String() string {
	switch t {
	case EventState:
		return "state"
	case EventLost:
		return "lost"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Family is the address family of a connection.
type Family uint8

const (
	FamilyAny Family = iota
	IPv4
	IPv6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return "any"
}

// OwnerSource says how the owner of a socket was learnt, weakest first.
type OwnerSource uint8

const (
	OwnerUnknown  = OwnerSource(tcpstateOwnerSrcOWNER_NONE)
	OwnerListener = OwnerSource(tcpstateOwnerSrcOWNER_LISTENER) // inherited from the listening socket
	OwnerIO       = OwnerSource(tcpstateOwnerSrcOWNER_IO)       // first task to read or write it
	OwnerConnect  = OwnerSource(tcpstateOwnerSrcOWNER_CONNECT)  // called connect()
	OwnerListen   = OwnerSource(tcpstateOwnerSrcOWNER_LISTEN)   // called listen()
	OwnerClose    = OwnerSource(tcpstateOwnerSrcOWNER_CLOSE)    // called close() or shutdown()
)

func (o OwnerSource) String() string {
	switch o {
	case OwnerListener:
		return "listener"
	case OwnerIO:
		return "io"
	case OwnerConnect:
		return "connect"
	case OwnerListen:
		return "listen"
	case OwnerClose:
		return "close"
	}
	return "unknown"
}

// Comm is a task name as the kernel keeps it: at most 15 bytes, NUL padded.
type Comm [16]byte

func (c Comm) String() string {
	if i := bytes.IndexByte(c[:], 0); i >= 0 {
		return string(c[:i])
	}
	return string(c[:])
}

// Bytes returns the name without its padding; it aliases c.
func (c *Comm) Bytes() []byte {
	if i := bytes.IndexByte(c[:], 0); i >= 0 {
		return c[:i]
	}
	return c[:]
}

// CommFrom makes a Comm of s, cut to 15 bytes as the kernel does.
func CommFrom(s string) Comm {
	var c Comm
	copy(c[:15], s)
	return c
}

// Task names a process: its tgid (PID), the thread (TID) and the thread's name.
type Task struct {
	PID  uint32
	TID  uint32
	Comm Comm
}

// Event is one observation, decoded from the kernel or read from a capture.
// The tracer reuses one Event for every call of the handler: copy what you keep.
type Event struct {
	Type   EventType
	Time   uint64 // nanoseconds since boot (CLOCK_BOOTTIME); see Clock
	Cookie uint64 // socket cookie: one id for the connection's whole life
	NetNS  uint32 // network namespace inode
	Family Family
	Local  netip.AddrPort
	Remote netip.AddrPort
	Old    State
	New    State

	// Duration is the time spent in Old, valid when HasDuration: the tracer saw
	// the socket enter Old. It is never a made-up zero.
	Duration    time.Duration
	HasDuration bool

	// Owner is the process the socket belongs to, valid when OwnerFrom is not
	// OwnerUnknown. OnCPU is whatever task the kernel was running.
	Owner     Task
	OwnerFrom OwnerSource
	OnCPU     Task

	SkErr int32 // sk->sk_err (an errno) on transitions to CLOSE

	Lost uint64 // EventLost: events lost since the previous report
}

// OwnerKnown reports whether the event names the socket's owner.
func (e *Event) OwnerKnown() bool { return e.OwnerFrom != OwnerUnknown }

// State is a TCP state, numbered as in the kernel (include/net/tcp_states.h).
type State uint8

const (
	StateUnknown State = iota
	Established
	SynSent
	SynRecv
	FinWait1
	FinWait2
	TimeWait
	Close
	CloseWait
	LastAck
	Listen
	Closing
	NewSynRecv
	BoundInactive
	numStates
)

var stateNames = [numStates]string{
	"UNKNOWN", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
	"CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE",
}

// String is the kernel's name without TCP_, e.g. "CLOSE_WAIT".
func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("STATE_%d", uint8(s))
}

// Other spellings people type, keyed with '-', '_' and case folded away.
var stateAliases = map[string]State{
	"ESTAB":       Established,
	"CLOSED":      Close,
	"SYNRECEIVED": SynRecv,
	"SYNRCVD":     SynRecv,
}

func foldStateName(s string) string {
	s = strings.ToUpper(strings.TrimSpace(s))
	s = strings.TrimPrefix(s, "TCP_")
	s = strings.TrimPrefix(s, "TCP-")
	return strings.NewReplacer("_", "", "-", "", " ", "").Replace(s)
}

// ParseState accepts the kernel names and the usual variants: CLOSE_WAIT,
// close-wait, CLOSE-WAIT, FIN_WAIT2, FIN_WAIT_2, fin-wait-2, TCP_LISTEN, ESTAB.
func ParseState(s string) (State, error) {
	key := foldStateName(s)
	if key != "" {
		for st := Established; st < numStates; st++ {
			if foldStateName(stateNames[st]) == key {
				return st, nil
			}
		}
		if st, ok := stateAliases[key]; ok {
			return st, nil
		}
	}
	return StateUnknown, fmt.Errorf("unknown TCP state %q (one of %s)", s, strings.Join(StateNames(), ", "))
}

// StateNames lists the states a user can name.
func StateNames() []string {
	return append([]string(nil), stateNames[Established:]...)
}

// StateSet is a set of states, one bit each.
type StateSet uint32

func (s StateSet) Has(st State) bool { return st < 32 && s&(1<<st) != 0 }
func (s *StateSet) Add(st State)     { *s |= 1 << st }
