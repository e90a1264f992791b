// SPDX-License-Identifier: Apache-2.0

package output

import (
	"testing"
	"time"
)

// The cached formatting must print what AppendFormat prints, across second,
// zone and location changes.
func TestStamperMatchesAppendFormat(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		berlin = time.FixedZone("CET", 3600)
	}
	cases := []struct {
		s      stamper
		layout string
	}{
		{rfc3339Nano(), "2006-01-02T15:04:05.000000000Z07:00"},
		{stamper{layout: "15:04:05", digits: 6}, "15:04:05.000000"},
		{stamper{layout: "15:04:05"}, "15:04:05"},
	}
	base := time.Date(2026, 3, 29, 0, 59, 58, 999_999_999, time.UTC) // a DST change in Berlin at 01:00 UTC
	for _, c := range cases {
		for i := range 5000 {
			tm := base.Add(time.Duration(i) * 1_234_567 * time.Nanosecond)
			for _, loc := range []*time.Location{time.UTC, berlin, time.FixedZone("", -5*3600-1800)} {
				tm := tm.In(loc)
				if got, want := string(c.s.append(nil, tm)), tm.Format(c.layout); got != want {
					t.Fatalf("%s: got %q, want %q", c.layout, got, want)
				}
			}
		}
		if got, want := string(c.s.append(nil, time.Unix(0, 7))), time.Unix(0, 7).Format(c.layout); got != want {
			t.Fatalf("%s: got %q, want %q", c.layout, got, want)
		}
	}
}
