// SPDX-License-Identifier: Apache-2.0

// Package cgroup tells which container, pod or service a process runs in,
// from its cgroup (v2) path: /proc/PID/cgroup's "0::" line. Container
// runtimes name their groups after the container's id, and Kubernetes after
// the pod's UID; the shapes are those of docker (systemd and cgroupfs
// drivers), containerd and CRI-O under Kubernetes (both drivers), podman and
// systemd's own services.
package cgroup

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Info is where a process runs. Every field may be empty.
type Info struct {
	Path        string // cgroup v2 path, from the hierarchy's root: /system.slice/docker-<id>.scope
	ContainerID string // 64 hex digits, as the runtime names the container
	Runtime     string // docker, containerd, crio, podman; "" when unknown
	PodUID      string // Kubernetes pod UID, with dashes
	Unit        string // the innermost systemd service: nginx.service
}

// Known reports whether anything is known.
func (i Info) Known() bool { return i.Path != "" }

// Parse reads the container, pod and service out of a cgroup v2 path.
func Parse(path string) Info {
	info := Info{Path: path}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i, p := range parts {
		name := strings.TrimSuffix(p, ".scope")
		switch {
		case strings.HasSuffix(p, ".service"):
			info.Unit = p
		case strings.HasPrefix(p, "kubepods") && strings.HasSuffix(p, ".slice"):
			// kubepods-burstable-pod<uid with _ for ->.slice
			if j := strings.LastIndex(p, "-pod"); j >= 0 {
				if uid := strings.ReplaceAll(strings.TrimSuffix(p[j+4:], ".slice"), "_", "-"); isUID(uid) {
					info.PodUID = uid
				}
			}
		case strings.HasPrefix(p, "pod") && isUID(p[3:]):
			info.PodUID = p[3:] // cgroupfs driver: /kubepods/burstable/pod<uid>
		case name != p || strings.HasPrefix(p, "libpod-"):
			// <runtime>-<id>.scope (systemd driver), libpod-<id> (podman, cgroupfs)
			j := strings.LastIndexByte(name, '-')
			if j < 0 || !isID(name[j+1:]) {
				continue
			}
			switch prefix := name[:j]; prefix {
			case "docker":
				info.ContainerID, info.Runtime = name[j+1:], "docker"
			case "cri-containerd", "containerd":
				info.ContainerID, info.Runtime = name[j+1:], "containerd"
			case "crio":
				info.ContainerID, info.Runtime = name[j+1:], "crio"
			case "libpod":
				info.ContainerID, info.Runtime = name[j+1:], "podman"
			}
		case isID(p):
			// cgroupfs drivers: /docker/<id>, /kubepods/.../pod<uid>/<id>
			info.ContainerID = p
			if i > 0 && parts[i-1] == "docker" {
				info.Runtime = "docker"
			}
		}
	}
	return info
}

// isID: a container id, 64 lowercase hex digits.
func isID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// isUID: a UUID as Kubernetes spells pod UIDs, 8-4-4-4-12 hex digits.
func isUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range []byte(s) {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}

// PathOf reads the cgroup v2 path of process pid under procRoot ("/proc"):
// "" when the process is gone or the host has no cgroup v2 hierarchy.
func PathOf(procRoot string, pid uint32) string {
	data, err := os.ReadFile(procRoot + "/" + strconv.FormatUint(uint64(pid), 10) + "/cgroup")
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if path, ok := bytes.CutPrefix(sc.Bytes(), []byte("0::")); ok {
			// " (deleted)": the group was removed; the path still names it.
			// The root group says nothing (a host without cgroup v2 in use).
			if p := strings.TrimSuffix(string(path), " (deleted)"); p != "/" {
				return p
			}
			return ""
		}
	}
	return ""
}

// Resolver looks processes up, remembering the answers for a while: a
// socket's owner is looked up for each of its events, and a PID may be
// reused. A process that was looked up once stays known after it exits
// (until the resolver is full): look owners up as they are first seen.
// Safe for concurrent use.
type Resolver struct {
	procRoot string
	max      int
	ttl      time.Duration
	mu       sync.Mutex
	cache    map[uint32]entry
	parsed   map[string]Info // by path: many processes share a group
}

type entry struct {
	info Info
	at   time.Time
}

// resolverTTL is how long an answer is kept: a PID reused within it may be
// attributed to its previous process's group.
const resolverTTL = 10 * time.Second

// NewResolver returns a Resolver that remembers at most max processes
// (forgetting all of them when full).
func NewResolver(max int) *Resolver {
	return &Resolver{procRoot: "/proc", max: max, ttl: resolverTTL, cache: map[uint32]entry{}, parsed: map[string]Info{}}
}

// Lookup returns where process pid runs; the zero Info when not known (the
// process is gone, the host has no cgroup v2 hierarchy, or pid is 0).
func (r *Resolver) Lookup(pid uint32) Info {
	if pid == 0 || r == nil {
		return Info{}
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e, cached := r.cache[pid]
	if cached && now.Sub(e.at) < r.ttl {
		return e.info
	}
	if len(r.cache) >= r.max {
		clear(r.cache)
	}
	var info Info
	path := PathOf(r.procRoot, pid)
	if path == "" && cached {
		// Gone since: what was known stays the best answer (its sockets
		// outlive it, in TIME_WAIT, or held by a child).
		return e.info
	}
	if path != "" {
		var ok bool
		if info, ok = r.parsed[path]; !ok {
			if len(r.parsed) >= r.max {
				clear(r.parsed)
			}
			info = Parse(path)
			r.parsed[path] = info
		}
	}
	// (a process gone is remembered too: its sockets' events keep coming)
	r.cache[pid] = entry{info, now}
	return info
}
