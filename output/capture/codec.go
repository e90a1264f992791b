// SPDX-License-Identifier: Apache-2.0

// Package capture writes and reads tcpstate capture files: what the tracer
// saw, to replay and report on later, on any machine. The format is described
// in FORMAT.md beside this file.
package capture

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net/netip"
	"time"

	"github.com/tcpstate/tcpstate/tracer"
)

// Version is the format version this package writes; it reads 1 to Version.
const Version = 1

const (
	fileMagic   = "TCPSTATE"
	blockMagic  = "TSB1"
	fileHdrSize = 20 // magic, version, reserved, header length, header CRC
	blkHdrSize  = 20 // magic, type, reserved, payload length, record count, CRC

	// EventSize is the size of one encoded event.
	EventSize = 168

	// maxBlock bounds a block's payload: a larger length is corruption.
	maxBlock = 16 << 20
)

// Block types. Readers skip types they do not know.
const (
	blockEvents  = 1 // EventSize records
	blockSockets = 2 // JSON: the start-up walk
	blockSysctls = 3 // JSON: a sysctl snapshot per namespace
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrNotCapture is returned for a file that is not a capture.
var ErrNotCapture = errors.New("not a tcpstate capture")

// event flag bits
const (
	flHasDuration = 1 << iota
	flDurationMin
	flTimewait
	flKaOn
	flKaIdleSocket
	flKaIntvlSocket
	flKaCountSocket
	flUnseen
)

var le = binary.LittleEndian

// appendEvent encodes e in EventSize bytes, little-endian whatever the host.
func appendEvent(b []byte, e *tracer.Event) []byte {
	var r [EventSize]byte
	k := &e.Keepalive
	fl := bit(e.HasDuration, flHasDuration) | bit(e.DurationMin, flDurationMin) | bit(e.Timewait, flTimewait) |
		bit(k.On, flKaOn) | bit(k.IdleFromSocket, flKaIdleSocket) | bit(k.IntvlFromSocket, flKaIntvlSocket) |
		bit(k.CountFromSocket, flKaCountSocket) | bit(e.Unseen, flUnseen)
	r[0], r[1], r[2], r[3] = uint8(e.Type), uint8(e.Family), uint8(e.Old), uint8(e.New)
	r[4], r[5], r[6], r[7] = uint8(e.Owner.From), uint8(e.Reason), fl, uint8(k.Event)
	le.PutUint16(r[8:], e.Local.Port())
	le.PutUint16(r[10:], e.Remote.Port())
	le.PutUint16(r[12:], e.RstReason)
	r[14], r[15] = k.Probes, k.Count
	le.PutUint32(r[16:], e.NetNS)
	le.PutUint32(r[20:], e.Owner.PID)
	le.PutUint32(r[24:], e.Owner.TID)
	le.PutUint32(r[28:], e.OnCPU.PID)
	le.PutUint32(r[32:], uint32(e.SkErr))
	if e.HasCPU {
		le.PutUint32(r[36:], e.CPU+1)
	}
	le.PutUint64(r[40:], e.Time)
	le.PutUint64(r[48:], e.Cookie)
	le.PutUint64(r[56:], e.Lost)
	le.PutUint64(r[64:], uint64(e.Duration))
	le.PutUint64(r[72:], uint64(e.ExpiresIn))
	le.PutUint64(r[80:], uint64(k.Idle))
	le.PutUint64(r[88:], uint64(k.Intvl))
	le.PutUint64(r[96:], uint64(k.UserTimeout))
	la, ra := e.Local.Addr().As16(), e.Remote.Addr().As16()
	copy(r[104:120], la[:])
	copy(r[120:136], ra[:])
	copy(r[136:152], e.Owner.Comm[:])
	copy(r[152:168], e.OnCPU.Comm[:])
	return append(b, r[:]...)
}

// decodeEvent is the inverse of appendEvent; it allocates nothing.
func decodeEvent(r []byte, e *tracer.Event) {
	fl := r[6]
	*e = tracer.Event{
		Type: tracer.EventType(r[0]), Endpoints: tracer.Endpoints{Family: tracer.Family(r[1]), NetNS: le.Uint32(r[16:])}, Old: tracer.State(r[2]), New: tracer.State(r[3]),
		Owner: tracer.Owner{From: tracer.OwnerSource(r[4])}, Reason: tracer.Reason(r[5]), RstReason: le.Uint16(r[12:]), SkErr: int32(le.Uint32(r[32:])),
		Time: le.Uint64(r[40:]), Cookie: le.Uint64(r[48:]), Lost: le.Uint64(r[56:]),
		Duration: time.Duration(le.Uint64(r[64:])), ExpiresIn: time.Duration(le.Uint64(r[72:])),
		HasDuration: fl&flHasDuration != 0, DurationMin: fl&flDurationMin != 0, Timewait: fl&flTimewait != 0, Unseen: fl&flUnseen != 0,
		Keepalive: tracer.Keepalive{
			Event: tracer.KeepaliveEvent(r[7]), On: fl&flKaOn != 0, Probes: r[14], Count: r[15],
			Idle: time.Duration(le.Uint64(r[80:])), Intvl: time.Duration(le.Uint64(r[88:])),
			UserTimeout:    time.Duration(le.Uint64(r[96:])),
			IdleFromSocket: fl&flKaIdleSocket != 0, IntvlFromSocket: fl&flKaIntvlSocket != 0, CountFromSocket: fl&flKaCountSocket != 0,
		},
	}
	e.Owner.PID, e.Owner.TID = le.Uint32(r[20:]), le.Uint32(r[24:])
	e.OnCPU.PID = le.Uint32(r[28:])
	if cpu := le.Uint32(r[36:]); cpu != 0 {
		e.CPU, e.HasCPU = cpu-1, true
	}
	copy(e.Owner.Comm[:], r[136:152])
	copy(e.OnCPU.Comm[:], r[152:168])
	if e.Family == tracer.FamilyAny {
		return // loss reports have no endpoints
	}
	la, ra := netip.AddrFrom16([16]byte(r[104:120])), netip.AddrFrom16([16]byte(r[120:136]))
	if e.Family == tracer.IPv4 {
		la, ra = la.Unmap(), ra.Unmap()
	}
	e.Local = netip.AddrPortFrom(la, le.Uint16(r[8:]))
	e.Remote = netip.AddrPortFrom(ra, le.Uint16(r[10:]))
}

// blockHeader lays out a block's header; crc covers the header (with a zero
// crc field) and the payload.
func blockHeader(typ uint8, payload []byte, count uint32) [blkHdrSize]byte {
	var h [blkHdrSize]byte
	copy(h[0:4], blockMagic)
	h[4] = typ
	le.PutUint32(h[8:], uint32(len(payload)))
	le.PutUint32(h[12:], count)
	crc := crc32.Update(crc32.Checksum(h[:], castagnoli), castagnoli, payload)
	le.PutUint32(h[16:], crc)
	return h
}

func blockCRCOK(h []byte, payload []byte) bool {
	var z [blkHdrSize]byte
	copy(z[:], h)
	le.PutUint32(z[16:], 0)
	return crc32.Update(crc32.Checksum(z[:], castagnoli), castagnoli, payload) == le.Uint32(h[16:])
}

func bit(on bool, b uint8) uint8 {
	if on {
		return b
	}
	return 0
}
