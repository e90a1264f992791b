// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"io"
	"path/filepath"
	"testing"

	"github.com/tcpstate/tcpstate/output/capture"
	"github.com/tcpstate/tcpstate/tracer"
)

// A walk streams into the capture after its header; a namespace the header
// does not name (made between the two) gets its sysctls right after it.
func TestWalkInto(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c")
	h := capture.Header{Tcpstate: "test", HZ: 250, Namespaces: []capture.Namespace{{Inode: 1, Sysctls: map[string]string{"fin_timeout": "60"}}}}
	w, err := capture.Create(path, h, capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	walked, nss, err := walkInto(w, h.Namespaces, func(each func(*tracer.Socket)) []tracer.NetNS {
		for i := range 2500 {
			each(&tracer.Socket{Cookie: uint64(i + 1), State: tracer.Established, Endpoints: tracer.Endpoints{NetNS: uint32(1 + i%2)}})
		}
		return []tracer.NetNS{{Inode: 1, Sysctls: map[string]string{"fin_timeout": "60"}}, {Inode: 2, Sysctls: map[string]string{"fin_timeout": "7"}}}
	})
	if err != nil || walked != 2500 || len(nss) != 2 {
		t.Fatalf("walked %d, %d namespaces, %v", walked, len(nss), err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rd, f, err := capture.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	socks, blocks := 0, 0
	var snaps []*capture.SysctlSnapshot
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Sockets != nil {
			if len(snaps) > 0 {
				t.Error("a walk block after the sysctl snapshot")
			}
			socks += len(rec.Sockets)
			blocks++
		}
		if rec.Sysctls != nil {
			snaps = append(snaps, rec.Sysctls)
		}
	}
	if socks != 2500 || blocks != 2 {
		t.Errorf("%d sockets in %d blocks, want 2500 in 2", socks, blocks)
	}
	if len(snaps) != 1 || len(snaps[0].Namespaces) != 1 || snaps[0].Namespaces[0].Inode != 2 || snaps[0].Namespaces[0].Sysctls["fin_timeout"] != "7" {
		t.Errorf("snapshots after the walk: %+v, want namespace 2's alone", snaps)
	}
}
