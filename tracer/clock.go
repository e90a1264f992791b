// SPDX-License-Identifier: Apache-2.0

package tracer

import (
	"time"

	"golang.org/x/sys/unix"
)

// Clock turns event times (nanoseconds since boot, CLOCK_BOOTTIME, which keeps
// counting through suspend) into wall-clock time.
type Clock struct {
	// BootWall is the wall-clock time of boot in Unix nanoseconds:
	// wall = BootWall + boot time.
	BootWall int64
}

// NewClock reads the mapping from this machine's clocks now. It takes the
// closest of a few paired readings, so the error is below a microsecond.
func NewClock() Clock {
	best, bestGap := int64(0), time.Duration(1<<62)
	for range 5 {
		before := time.Now()
		var ts unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
		after := time.Now()
		gap := after.Sub(before)
		if gap < bestGap {
			mid := before.Add(gap / 2)
			best, bestGap = mid.UnixNano()-ts.Nano(), gap
		}
	}
	return Clock{BootWall: best}
}

// BootNow is the current CLOCK_BOOTTIME in nanoseconds, the clock of Event.Time.
func BootNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}

// Wall converts an event time to wall-clock time (UTC).
func (c Clock) Wall(boot uint64) time.Time {
	return time.Unix(0, c.BootWall+int64(boot)).UTC()
}
