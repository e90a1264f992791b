// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set at release time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func versionString() string {
	rev, dirty, ebpfVersion := "unknown", "", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
				if len(rev) > 12 {
					rev = rev[:12]
				}
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		for _, d := range bi.Deps {
			if d.Path == "github.com/cilium/ebpf" {
				ebpfVersion = d.Version
			}
		}
	}
	return fmt.Sprintf("tcpstate %s (commit %s%s, %s, %s/%s, cilium/ebpf %s)",
		version, rev, dirty, runtime.Version(), runtime.GOOS, runtime.GOARCH, ebpfVersion)
}
