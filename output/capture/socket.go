// SPDX-License-Identifier: Apache-2.0

package capture

import (
	"net/netip"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

// socketRecord is a socket of the start-up walk as a sockets block stores it
// (FORMAT.md): its JSON names are the file format, whatever tracer.Socket's
// fields are called. They are the names the first captures wrote.
type socketRecord struct {
	Cookie         uint64         `json:"Cookie"`
	NetNS          uint32         `json:"NetNS"`
	Family         uint8          `json:"Family"` // 0 any, 1 IPv4, 2 IPv6
	Local          netip.AddrPort `json:"Local"`
	Remote         netip.AddrPort `json:"Remote"`
	State          uint8          `json:"State"` // kernel numbering
	Timewait       bool           `json:"Timewait"`
	Since          uint64         `json:"Since"`         // CLOCK_BOOTTIME ns
	SinceEarliest  uint64         `json:"SinceEarliest"` // CLOCK_BOOTTIME ns; absent in older files
	ExpiresIn      int64          `json:"ExpiresIn"`     // ns
	KeepaliveOn    bool           `json:"KeepaliveOn"`
	SockIdle       int64          `json:"SockIdle"`  // ns
	SockIntvl      int64          `json:"SockIntvl"` // ns
	SockCount      uint8          `json:"SockCount"`
	KeepaliveArmed bool           `json:"KeepaliveArmed"`
	KeepaliveIn    int64          `json:"KeepaliveIn"` // ns
	LastRecv       uint64         `json:"LastRecv"`    // CLOCK_BOOTTIME ns
	ProbesOut      uint8          `json:"ProbesOut"`
	UserTimeout    int64          `json:"UserTimeout"` // ns
	Inode          uint64         `json:"Inode"`
	UID            uint32         `json:"UID"`
	Owner          taskRecord     `json:"Owner"`
	OwnerKnown     bool           `json:"OwnerKnown"`
	Scanned        uint64         `json:"Scanned"` // CLOCK_BOOTTIME ns
}

// taskRecord is a process: Comm is the 16 bytes of the kernel's task name.
type taskRecord struct {
	PID  uint32   `json:"PID"`
	TID  uint32   `json:"TID"`
	Comm [16]byte `json:"Comm"`
}

func socketRecordOf(s *tracer.Socket) socketRecord {
	return socketRecord{
		Cookie: s.Cookie, NetNS: s.NetNS, Family: uint8(s.Family), Local: s.Local, Remote: s.Remote,
		State: uint8(s.State), Timewait: s.Timewait, Since: s.Since, SinceEarliest: s.SinceEarliest,
		ExpiresIn: int64(s.ExpiresIn), KeepaliveOn: s.KeepaliveOn, SockIdle: int64(s.SockIdle),
		SockIntvl: int64(s.SockIntvl), SockCount: s.SockCount, KeepaliveArmed: s.KeepaliveArmed,
		KeepaliveIn: int64(s.KeepaliveIn), LastRecv: s.LastRecv, ProbesOut: s.ProbesOut,
		UserTimeout: int64(s.UserTimeout), Inode: s.Inode, UID: s.UID,
		Owner:      taskRecord{PID: s.Owner.PID, TID: s.Owner.TID, Comm: s.Owner.Comm},
		OwnerKnown: s.Owner.Known(), Scanned: s.Scanned,
	}
}

func (r *socketRecord) socket() tracer.Socket {
	s := tracer.Socket{
		Cookie: r.Cookie, Endpoints: tracer.Endpoints{NetNS: r.NetNS, Family: tracer.Family(r.Family), Local: r.Local, Remote: r.Remote},
		State: tracer.State(r.State), Timewait: r.Timewait, Since: r.Since, SinceEarliest: r.SinceEarliest,
		ExpiresIn: time.Duration(r.ExpiresIn), KeepaliveOn: r.KeepaliveOn, SockIdle: time.Duration(r.SockIdle),
		SockIntvl: time.Duration(r.SockIntvl), SockCount: r.SockCount, KeepaliveArmed: r.KeepaliveArmed,
		KeepaliveIn: time.Duration(r.KeepaliveIn), LastRecv: r.LastRecv, ProbesOut: r.ProbesOut,
		UserTimeout: time.Duration(r.UserTimeout), Inode: r.Inode, UID: r.UID,
		Owner: tracer.Owner{Task: tracer.Task{PID: r.Owner.PID, TID: r.Owner.TID, Comm: tracer.Comm(r.Owner.Comm)}}, Scanned: r.Scanned,
	}
	if r.OwnerKnown {
		s.Owner.From = tracer.OwnerProc // the walk found it holding the socket
	}
	return s
}
