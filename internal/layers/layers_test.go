// SPDX-License-Identifier: Apache-2.0

// Package layers holds a test of how tcpstate's packages depend on each
// other: data flows one way, kernel -> decode (tracer) -> timeline -> filter
// (pipeline) -> output, a capture re-entering after decode; no package
// imports a command or a stage after its own.
package layers

import (
	"go/build"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/tcpstate/tcpstate/"

// allowed lists, for each package, the module's packages it may import.
var allowed = map[string][]string{
	"internal/netns":    nil,
	"internal/cgroup":   nil, // where a process runs: a leaf the outputs use
	"internal/testnet":  {"internal/netns"},
	"tracer":            {"internal/netns"},
	"tracer/timeline":   {"tracer"},
	"tracer/verify":     {"tracer"},
	"output/capture":    {"tracer"},
	"output":            {"tracer", "tracer/timeline", "tracer/verify", "internal/cgroup"},
	"output/metrics":    {"tracer", "tracer/timeline"},
	"output/htmlreport": {"tracer", "tracer/timeline", "output", "output/capture"},
	"output/tui":        {"tracer", "output"},
	"pipeline":          {"tracer", "tracer/timeline", "tracer/verify", "output", "output/capture", "output/metrics", "internal/cgroup"},
	"cmd/tcpstate": {"tracer", "tracer/timeline", "tracer/verify", "output", "output/capture", "output/metrics", "pipeline",
		"internal/cgroup", "output/htmlreport", "output/tui"},
}

func TestDataFlowsOneWay(t *testing.T) {
	ctx := build.Default
	// Every package of the module is placed (scripts are programs of their
	// own, layers is this test).
	root := filepath.Join("..", "..")
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if strings.HasPrefix(d.Name(), ".") && rel != "." || rel == "scripts" || rel == "bpf" || rel == "internal/layers" {
			return filepath.SkipDir
		}
		if p, err := ctx.ImportDir(path, 0); err == nil && p.Name != "" && rel != "." {
			if _, ok := allowed[rel]; !ok {
				t.Errorf("package %s is not placed in the layers (add it to allowed)", rel)
			}
		}
		return nil
	})
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
