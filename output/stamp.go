// SPDX-License-Identifier: Apache-2.0

package output

import "time"

// stamper formats times as AppendFormat does with a layout that ends at the
// seconds, then a fraction of fixed digits, then (with zone) the RFC 3339
// zone. The part up to the seconds and the zone are formatted once a second
// and reused: a trace writes hundreds of thousands of times a second, and
// AppendFormat was a sixth of a replay's CPU.
type stamper struct {
	layout string // up to the seconds: "2006-01-02T15:04:05", "15:04:05"
	digits int    // of the fraction; 0: none
	zone   bool

	sec        int64
	loc        *time.Location
	head, tail []byte
}

// rfc3339Nano is AppendFormat's "2006-01-02T15:04:05.000000000Z07:00".
func rfc3339Nano() stamper { return stamper{layout: "2006-01-02T15:04:05", digits: 9, zone: true} }

func (s *stamper) append(b []byte, t time.Time) []byte {
	if sec := t.Unix(); s.head == nil || sec != s.sec || t.Location() != s.loc {
		s.sec, s.loc = sec, t.Location()
		s.head = t.AppendFormat(s.head[:0], s.layout)
		s.tail = s.tail[:0]
		if s.zone {
			s.tail = t.AppendFormat(s.tail, "Z07:00")
		}
	}
	b = append(b, s.head...)
	if s.digits > 0 {
		v := t.Nanosecond()
		for range 9 - s.digits {
			v /= 10
		}
		b = append(b, '.')
		n := len(b)
		for range s.digits {
			b = append(b, '0')
		}
		for i := len(b) - 1; i >= n; i-- {
			b[i] = byte('0' + v%10)
			v /= 10
		}
	}
	return append(b, s.tail...)
}
