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
	// EventReset: the socket sent a RST after it reached CLOSE. The timeline
	// joins it to that CLOSE; alone, it is shown as a reset.
	EventReset EventType = EventType(tcpstateEventTypeEVENT_RESET)
	// EventTWCancel: a timewait timer was removed before it was due: the
	// connection was killed, unless an EventTWRearm follows at once.
	EventTWCancel EventType = EventType(tcpstateEventTypeEVENT_TW_CANCEL)
	// EventTWRearm: a timewait timer was armed again in the same state.
	EventTWRearm EventType = EventType(tcpstateEventTypeEVENT_TW_REARM)
	// EventKeepalive: the keepalive timer acted; see Keepalive.
	EventKeepalive EventType = EventType(tcpstateEventTypeEVENT_KEEPALIVE)
	// EventTWHandover: a timewait socket took over the connection in the
	// same state (an orphaned FIN_WAIT2): not a transition, only where the
	// connection lives now (Timewait). The timeline keeps it to itself.
	EventTWHandover EventType = EventType(tcpstateEventTypeEVENT_TW_HANDOVER)

	// EventLost reports events the kernel could not deliver (ring buffer full).
	EventLost EventType = 100
	// EventLinger: a socket has sat longer than a threshold in CLOSE_WAIT or
	// FIN_WAIT2 and is still there (made by the timeline).
	EventLinger EventType = 101
)

func (t EventType) String() string {
	switch t {
	case EventState:
		return "state"
	case EventReset:
		return "reset"
	case EventTWCancel:
		return "tw_cancel"
	case EventTWRearm:
		return "tw_rearm"
	case EventKeepalive:
		return "keepalive"
	case EventTWHandover:
		return "tw_handover"
	case EventLost:
		return "lost"
	case EventLinger:
		return "linger"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Reason says why a connection reached CLOSE.
type Reason uint8

const (
	ReasonNone        = Reason(tcpstateCloseReasonREASON_NONE)
	ReasonFIN         = Reason(tcpstateCloseReasonREASON_FIN)          // orderly FIN exchange
	ReasonRSTReceived = Reason(tcpstateCloseReasonREASON_RST_RECEIVED) // the peer reset it
	ReasonRSTSent     = Reason(tcpstateCloseReasonREASON_RST_SENT)     // this side reset it; see RstReason
	ReasonTimeout     = Reason(tcpstateCloseReasonREASON_TIMEOUT)      // ETIMEDOUT: retransmission, keepalive or user timeout
	ReasonRefused     = Reason(tcpstateCloseReasonREASON_REFUSED)      // ECONNREFUSED
	ReasonClosed      = Reason(tcpstateCloseReasonREASON_CLOSED)       // closed with no connection (listener, unconnected)
	ReasonError       = Reason(tcpstateCloseReasonREASON_ERROR)        // another socket error
	ReasonTWExpired   = Reason(tcpstateCloseReasonREASON_TW_EXPIRED)   // TIME_WAIT ran its course
	ReasonFinTimeout  = Reason(tcpstateCloseReasonREASON_FIN_TIMEOUT)  // orphaned FIN_WAIT2 gave up (tcp_fin_timeout)
	ReasonTWKilled    = Reason(tcpstateCloseReasonREASON_TW_KILLED)    // timewait ended early (reuse, RST)
)

var reasonNames = map[Reason]string{
	ReasonFIN: "fin", ReasonRSTReceived: "rst_received", ReasonRSTSent: "rst_sent", ReasonTimeout: "timeout",
	ReasonRefused: "refused", ReasonClosed: "closed", ReasonError: "error", ReasonTWExpired: "timewait_expired",
	ReasonFinTimeout: "fin_timeout", ReasonTWKilled: "timewait_killed",
}

// String is the name used in JSON ("rst_sent"); "" for ReasonNone.
func (r Reason) String() string { return reasonNames[r] }

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
	// OwnerProc: found holding the socket in /proc/PID/fd (the start-up
	// walk, for sockets older than the tracer).
	OwnerProc OwnerSource = 50
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
	case OwnerProc:
		return "proc"
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

// Endpoints are where a connection is: its network namespace, its address
// family and its two ends.
type Endpoints struct {
	NetNS  uint32 // network namespace inode
	Family Family
	Local  netip.AddrPort
	Remote netip.AddrPort
}

// Owner is the process a socket belongs to, and how tcpstate learnt it.
type Owner struct {
	Task
	From OwnerSource // OwnerUnknown: no owner is known, Task is empty
	// Cgroup: the cgroup v2 id (its directory's inode number) the task ran
	// in when it became the owner, from the kernel; 0 when not known (an
	// owner a walk found in /proc, or a capture).
	Cgroup uint64
}

// Known reports whether the owner is known.
func (o *Owner) Known() bool { return o.From != OwnerUnknown }

// Event is one observation, decoded from the kernel or read from a capture.
// The tracer reuses one Event for every call of the handler: copy what you keep.
type Event struct {
	Type   EventType
	Time   uint64 // nanoseconds since boot (CLOCK_BOOTTIME); see Clock
	Cookie uint64 // socket cookie: one id for the connection's whole life
	Endpoints
	Old State
	New State

	// CPU is the CPU the event fired on, when HasCPU (the events the tracer
	// makes itself, and older captures, have none).
	HasCPU bool
	CPU    uint32

	// Duration is the time spent in Old, valid when HasDuration: the tracer saw
	// the socket enter Old. It is never a made-up zero.
	Duration    time.Duration
	HasDuration bool

	// Owner is the process the socket belongs to, if known. OnCPU is
	// whatever task the kernel was running; its Comm empty when not known
	// (a transition found after it happened, an event user space made).
	Owner Owner
	OnCPU Task

	SkErr int32 // sk->sk_err (an errno) on transitions to CLOSE

	// Reason is why the connection reached CLOSE; RstReason the kernel's
	// reset reason (enum sk_rst_reason, see RstReasonName) with ReasonRSTSent.
	Reason    Reason
	RstReason uint16

	// Timewait: the new state lives in a timewait socket (after close(), the
	// kernel keeps FIN_WAIT2 and TIME_WAIT there). ExpiresIn is the time left
	// on its timer, when known.
	Timewait  bool
	ExpiresIn time.Duration

	// DurationMin: the state began before the tracer started; Duration is
	// only how long the tracer saw of it.
	DurationMin bool

	// Unseen: the steps between Old and New were not seen. The timeline
	// found the connection in New, in a timewait socket, from an
	// EventTWRearm of a timewait socket the kernel side had not followed
	// (its Unseen), when the table last saw it in Old. No Duration then.
	Unseen bool

	// Keepalive describes EventKeepalive; ExpiresIn is when an armed timer fires.
	Keepalive Keepalive

	Lost uint64 // EventLost: events lost since the previous report
}

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

// KeepaliveEvent says what the keepalive timer did.
type KeepaliveEvent uint8

const (
	KeepaliveArmed    = KeepaliveEvent(tcpstateKaEventKA_ARMED)
	KeepaliveFired    = KeepaliveEvent(tcpstateKaEventKA_FIRED)
	KeepaliveProbe    = KeepaliveEvent(tcpstateKaEventKA_PROBE)
	KeepaliveAnswered = KeepaliveEvent(tcpstateKaEventKA_ANSWERED)
	KeepaliveTimeout  = KeepaliveEvent(tcpstateKaEventKA_TIMEOUT)
	KeepaliveFinWait2 = KeepaliveEvent(tcpstateKaEventKA_FIN_WAIT2)
)

var keepaliveNames = map[KeepaliveEvent]string{
	KeepaliveArmed: "armed", KeepaliveFired: "fired", KeepaliveProbe: "probe", KeepaliveAnswered: "answered",
	KeepaliveTimeout: "timeout", KeepaliveFinWait2: "fin_wait2",
}

func (k KeepaliveEvent) String() string {
	if n, ok := keepaliveNames[k]; ok {
		return n
	}
	return fmt.Sprintf("keepalive(%d)", uint8(k))
}

// Keepalive is a socket's keepalive as the kernel applies it at one moment:
// each value is the socket's own option when set, else its namespace's sysctl.
type Keepalive struct {
	Event                                            KeepaliveEvent
	On                                               bool          // SO_KEEPALIVE
	Probes                                           uint8         // probes sent and not answered (icsk_probes_out)
	Idle                                             time.Duration // tcp_keepalive_time / TCP_KEEPIDLE
	Intvl                                            time.Duration // tcp_keepalive_intvl / TCP_KEEPINTVL
	Count                                            uint8         // tcp_keepalive_probes / TCP_KEEPCNT
	IdleFromSocket, IntvlFromSocket, CountFromSocket bool
	UserTimeout                                      time.Duration // TCP_USER_TIMEOUT (0: unset)
}

// Source names where a value comes from: "socket" or "sysctl".
func Source(fromSocket bool) string {
	if fromSocket {
		return "socket"
	}
	return "sysctl"
}
