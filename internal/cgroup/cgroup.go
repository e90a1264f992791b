// SPDX-License-Identifier: Apache-2.0

// Package cgroup tells which container, pod or service a process runs in,
// from its cgroup (v2) path: the kernel's id of the group the process ran in
// when it took the socket (its directory's inode number in a cgroup2 mount),
// else /proc/PID/cgroup's "0::" line. Container
// runtimes name their groups after the container's id, and Kubernetes after
// the pod's UID; the shapes are those of docker (systemd and cgroupfs
// drivers), containerd and CRI-O under Kubernetes (both drivers), podman and
// systemd's own services.
package cgroup

import (
	"bufio"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
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

	// The groups by id, from a walk of a cgroup2 mount: walked again for an
	// id it did not have, at most once a second (a container started since).
	mountinfo string // "/proc/self/mountinfo"; tests set another
	byID      map[uint64]string
	walked    time.Time
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
	return &Resolver{procRoot: "/proc", mountinfo: "/proc/self/mountinfo", max: max, ttl: resolverTTL,
		cache: map[uint32]entry{}, parsed: map[string]Info{}}
}

// Lookup returns where the owner of a socket runs: the group with the
// kernel's id when a cgroup2 mount has it (the owner may be gone), else
// where process pid runs now. The zero Info when not known (the process is
// gone, the host has no cgroup v2 hierarchy in use, or pid is 0).
func (r *Resolver) Lookup(pid uint32, id uint64) Info {
	if r == nil || pid == 0 && id == 0 {
		return Info{}
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if id != 0 {
		if path := r.pathOfID(id, now); path != "" {
			return r.parse(path)
		}
	}
	if pid == 0 {
		return Info{}
	}
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
		info = r.parse(path)
	}
	// (a process gone is remembered too: its sockets' events keep coming)
	r.cache[pid] = entry{info, now}
	return info
}

// parse is Parse, remembered.
func (r *Resolver) parse(path string) Info {
	info, ok := r.parsed[path]
	if !ok {
		if len(r.parsed) >= r.max {
			clear(r.parsed)
		}
		info = Parse(path)
		r.parsed[path] = info
	}
	return info
}

// pathOfID is the path of the group with id, "" when no cgroup2 mount has
// it, or it is the root, which says nothing (kept as "", so that owners in
// the root group do not make a walk a second).
func (r *Resolver) pathOfID(id uint64, now time.Time) string {
	path, ok := r.byID[id]
	if !ok && now.Sub(r.walked) >= time.Second {
		r.walked = now
		r.byID = walkGroups(cgroup2Mount(r.mountinfo), r.max)
		path = r.byID[id]
	}
	return path
}

// Mount is where this host's cgroup v2 hierarchy is mounted whole; "" when
// it is not (a cgroup v1 host).
func Mount() string { return cgroup2Mount("/proc/self/mountinfo") }

// cgroup2Mount is where the cgroup v2 hierarchy is mounted whole (its
// root), from a mountinfo file; "" when it is not.
func cgroup2Mount(mountinfo string) string {
	data, err := os.ReadFile(mountinfo)
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(data)) {
		// 36 35 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw
		pre, post, ok := strings.Cut(line, " - ")
		f, fsType := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) >= 5 && len(fsType) > 0 && fsType[0] == "cgroup2" && f[3] == "/" {
			return unescapeMount(f[4])
		}
	}
	return ""
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// walkGroups maps the groups under mount, at most max of them, by id (the
// inode number of their directory) to their path from the hierarchy's root.
func walkGroups(mount string, max int) map[uint64]string {
	groups := map[uint64]string{}
	if mount == "" {
		return groups
	}
	_ = filepath.WalkDir(mount, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil // (a group removed meanwhile)
		}
		if len(groups) >= max {
			return filepath.SkipAll
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			if path == mount {
				groups[st.Ino] = "" // the root
			} else {
				groups[st.Ino] = "/" + strings.TrimPrefix(path, mount+"/")
			}
		}
		return nil
	})
	return groups
}
