// SPDX-License-Identifier: Apache-2.0

// Package layers holds a test of how tcpstate's packages depend on each
// other: data flows one way, kernel -> decode (tracer) -> timeline -> filter
// (pipeline) -> output, a capture re-entering after decode; no package
// imports a command or a stage after its own.
package layers

import (
	"go/build"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/tcpstate/tcpstate/"

// allowed lists, for each package, the module's packages it may import.
var allowed = map[string][]string{
	"internal/netns":   nil,
	"internal/testnet": {"internal/netns"},
	"tracer":           {"internal/netns"},
	"tracer/timeline":  {"tracer"},
	"tracer/verify":    {"tracer"},
	"output/capture":   {"tracer"},
	"output":           {"tracer", "tracer/timeline", "tracer/verify"},
	"pipeline":         {"tracer", "tracer/timeline", "tracer/verify", "output", "output/capture"},
	"cmd/tcpstate":     {"tracer", "tracer/timeline", "tracer/verify", "output", "output/capture", "pipeline"},
}

func TestDataFlowsOneWay(t *testing.T) {
	ctx := build.Default
	for pkg, may := range allowed {
		p, err := ctx.Import(mod+pkg, "", 0)
		if err != nil {
			t.Fatalf("%s: %v", pkg, err)
		}
		for _, imp := range p.Imports {
			rel, ok := strings.CutPrefix(imp, mod)
			if !ok {
				continue
			}
			if !slices.Contains(may, rel) {
				t.Errorf("%s imports %s: against the flow (allowed: %v)", pkg, rel, may)
			}
		}
		if p.Doc == "" && pkg != "cmd/tcpstate" {
			t.Errorf("%s has no package doc comment saying what it owns", pkg)
		}
	}
}
