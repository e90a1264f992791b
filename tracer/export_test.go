// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"errors"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Detach stops the programs and keeps the maps, for counters that hold still.
func (t *Tracer) Detach() error { return t.detach() }

// DiagTimewait is diagTimewait for the kernel tests.
var DiagTimewait = diagTimewait

// WithoutDiag makes FindHolders do without sock_diag (as where no inet_diag
// module can be loaded) until the returned func is called.
func WithoutDiag() (restore func()) {
	diagInodesOf = func([]HolderQuery, []int, []uint64) error { return errors.New("no sock_diag (test)") }
	return func() { diagInodesOf = diagInodes }
}

// EachDiagMessage is eachDiagMessage, to feed it made-up reads.
var EachDiagMessage = eachDiagMessage

// FinWait2Watched counts the timewait sockets watched for a turn to
// TIME_WAIT without timer_start (tw_fin_wait2).
func (t *Tracer) FinWait2Watched() (int, error) {
	keys, err := mapKeys[tcpstateFw2Entry](t.coll.Maps[tcpstateMapTwFinWait2])
	return len(keys), err
}

// mapKeys lists the keys of a map keyed by uint64 whose values are V.
func mapKeys[V any](m *ebpf.Map) ([]uint64, error) {
	var (
		key  uint64
		val  V
		keys []uint64
	)
	it := m.Iterate()
	for it.Next(&key, &val) {
		keys = append(keys, key)
	}
	return keys, it.Err()
}

// FinWait2Walks counts the walks of tw_fin_wait2 run so far.
func (t *Tracer) FinWait2Walks() uint64 { return t.fw2Walks.Load() }

// FinWait2Window is how long after its first arm a timewait FIN_WAIT2 is
// watched at hz (0: for ever).
func FinWait2Window(hz uint32) time.Duration {
	lead := fw2SilentLead(hz)
	if lead == 0 {
		return 0
	}
	return TimewaitLen - time.Duration(lead)*time.Second/time.Duration(hz)
}

// FillSetStateSeens takes every CPU's slots of set_state_seens, now, for
// calls that match no change (as left ones do).
func (t *Tracer) FillSetStateSeens() error {
	m := t.coll.Maps[tcpstateMapSetStateSeens]
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return err
	}
	vals := make([]tcpstateSetStateSeen, n)
	for c := range vals {
		for i := range vals[c].Ctx {
			vals[c].Ctx[i] = uint64(i + 1)
			vals[c].Sk[i] = uint64(i + 1)
			vals[c].Ts[i] = uint64(ts.Nano())
		}
	}
	return m.Update(uint32(0), vals, ebpf.UpdateAny)
}

// FilledSetStateSeens counts the slots of set_state_seens, on all CPUs, still
// holding what FillSetStateSeens put there, and all the slots.
func (t *Tracer) FilledSetStateSeens() (left, all int, err error) {
	var vals []tcpstateSetStateSeen
	if err := t.coll.Maps[tcpstateMapSetStateSeens].Lookup(uint32(0), &vals); err != nil {
		return 0, 0, err
	}
	for _, v := range vals {
		for i, c := range v.Ctx {
			all++
			if c == uint64(i+1) {
				left++
			}
		}
	}
	return left, all, nil
}

// ForgetTimewaits empties tw_infos, as if every timewait socket followed had
// been evicted: the kernel side no longer knows them.
func (t *Tracer) ForgetTimewaits() (int, error) {
	m := t.coll.Maps[tcpstateMapTwInfos]
	var (
		keys []uint64
		key  uint64
		val  tcpstateTwInfo
	)
	it := m.Iterate()
	for it.Next(&key, &val) {
		keys = append(keys, key)
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(keys), nil
}

// KeepaliveProbesKept lists the sockets (by ka_probes' key: the cookie where
// there is one) whose keepalive probe count the kernel side keeps.
func (t *Tracer) KeepaliveProbesKept() ([]uint64, error) {
	return mapKeys[uint8](t.coll.Maps[tcpstateMapKaProbes])
}

// HasSocketInfo reports whether the kernel side keeps socket storage
// (sk_infos) for the socket with descriptor fd.
func (t *Tracer) HasSocketInfo(fd int) (bool, error) {
	var v tcpstateSkInfo
	err := t.coll.Maps[tcpstateMapSkInfos].Lookup(int32(fd), &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	return err == nil, err
}

// TimewaitFollowed counts the timewait sockets the kernel side follows
// (tw_infos).
func (t *Tracer) TimewaitFollowed() (int, error) {
	keys, err := mapKeys[tcpstateTwInfo](t.coll.Maps[tcpstateMapTwInfos])
	return len(keys), err
}

// TimewaitSince tells, for the timewait socket the kernel side follows under
// key (its cookie, as the walk reports it), its state, when the kernel side
// dates that state's start (boot ns), and whether that is only a lower bound
// (the tracer's start, or a restart's); walkDated: the walk dated it from its
// timer, and no re-arm has been seen since. ok is false when it is not
// followed.
func (t *Tracer) TimewaitSince(key uint64) (state State, since uint64, lowerBound, walkDated, ok bool, err error) {
	var v tcpstateTwInfo
	err = t.coll.Maps[tcpstateMapTwInfos].Lookup(key, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, 0, false, false, false, nil
	}
	if err != nil {
		return 0, 0, false, false, false, err
	}
	return State(v.State), v.StateTs, v.Flags&infoSinceStart != 0, v.Flags&infoWalkDated != 0, true, nil
}

// TimewaitWalkedAt has the kernel side take the followed timewait socket
// under key for one the walk dated at jiffy walked, having read another
// expiry than its timer's now: the start-up walk's race with a FIN_WAIT2
// turning TIME_WAIT, made on purpose.
func (t *Tracer) TimewaitWalkedAt(key uint64, walked uint64) error {
	m := t.coll.Maps[tcpstateMapTwInfos]
	var v tcpstateTwInfo
	if err := m.Lookup(key, &v); err != nil {
		return err
	}
	v.Flags = v.Flags&^infoSinceStart | infoWalkDated
	v.Walked = uint32(walked)
	v.Expires = 0
	return m.Update(key, &v, ebpf.UpdateExist)
}

// JiffiesNow reads the kernel's jiffies (false: this kernel shows them
// nowhere tcpstate reads).
func JiffiesNow() (uint64, bool) {
	s := sampleJiffies()
	return s.jiffies, s.ok
}

// bpf/tcpstate.h's INFO_SINCE_START and INFO_WALK_DATED.
const (
	infoSinceStart = 1 << 0
	infoWalkDated  = 1 << 5
)
