// SPDX-License-Identifier: Apache-2.0

package htmlreport

import (
	"math"
	"testing"
)

func TestDurationLabel(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{
		{1e-9, "1ns"}, {1e-8, "10ns"}, {1e-7, "100ns"}, {1e-6, "1.0us"}, {1e-3, "1.00ms"}, {1, "1.00s"}, {100, "1m40s"},
	} {
		if got := durationLabel(c.v); got != c.want {
			t.Errorf("durationLabel(%g) = %q, want %q", c.v, got, c.want)
		}
	}
	// As the chart makes them: powers of ten, not always exact.
	for e, want := range map[float64]string{-8: "10ns", -5: "10us", -2: "10.0ms", 1: "10.0s"} {
		if got := durationLabel(math.Pow(10, e)); got != want {
			t.Errorf("durationLabel(1e%g) = %q, want %q", e, got, want)
		}
	}
}
