// SPDX-License-Identifier: Apache-2.0

package output

import (
	"github.com/tcpstate/tcpstate/internal/cgroup"
	"github.com/tcpstate/tcpstate/tracer"
)

// Attribute tells where a process runs: its cgroup, container, pod and
// systemd service (cgroup.Resolver.Lookup). nil: not shown (a replayed
// capture: its processes are not this host's).
type Attribute func(pid uint32, cgroupID uint64) cgroup.Info

// place is where the owner runs, when attr knows.
func (attr Attribute) place(o *tracer.Owner) cgroup.Info {
	if attr == nil || !o.Known() {
		return cgroup.Info{}
	}
	return attr(o.PID, o.Cgroup)
}

// appendPlaceJSON appends cgroup, container_id, pod_uid and unit, each only
// when known.
func appendPlaceJSON(b []byte, info cgroup.Info) []byte {
	for _, f := range []struct{ name, value string }{
		{`,"cgroup":`, info.Path}, {`,"container_id":`, info.ContainerID}, {`,"pod_uid":`, info.PodUID}, {`,"unit":`, info.Unit},
	} {
		if f.value != "" {
			b = append(b, f.name...)
			b = appendJSONString(b, []byte(f.value))
		}
	}
	return b
}

// appendPlaceText appends the CONTAINER column: the container's id as
// docker ps shortens it, else the pod, the systemd service, or "-".
func appendPlaceText(b []byte, info cgroup.Info) []byte {
	switch {
	case info.ContainerID != "":
		return append(b, info.ContainerID[:12]...)
	case info.PodUID != "":
		return append(append(b, "pod:"...), info.PodUID[:8]...)
	case info.Unit != "":
		return appendPrintable(b, []byte(info.Unit))
	}
	return append(b, '-')
}
