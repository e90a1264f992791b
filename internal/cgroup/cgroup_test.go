// SPDX-License-Identifier: Apache-2.0

package cgroup

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	id  = "3f4b2c1d0e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c"
	uid = "8d1f7c2e-4b3a-4e5f-9a8b-7c6d5e4f3a2b"
)

// The paths are the shapes each runtime makes (as seen in
// /proc/PID/cgroup on hosts running them).
func TestParse(t *testing.T) {
	uidUnderscored := "8d1f7c2e_4b3a_4e5f_9a8b_7c6d5e4f3a2b"
	for _, c := range []struct {
		path string
		want Info
	}{
		{"/system.slice/docker-" + id + ".scope", Info{ContainerID: id, Runtime: "docker"}},
		{"/docker/" + id, Info{ContainerID: id, Runtime: "docker"}},
		{"/system.slice/docker-" + id + ".scope/init", Info{ContainerID: id, Runtime: "docker"}}, // nested (docker-in-docker, systemd in the container)
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidUnderscored + ".slice/cri-containerd-" + id + ".scope",
			Info{ContainerID: id, Runtime: "containerd", PodUID: uid}},
		{"/kubepods.slice/kubepods-pod" + uidUnderscored + ".slice/cri-containerd-" + id + ".scope", // Guaranteed QoS
			Info{ContainerID: id, Runtime: "containerd", PodUID: uid}},
		{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnderscored + ".slice/crio-" + id + ".scope",
			Info{ContainerID: id, Runtime: "crio", PodUID: uid}},
		{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnderscored + ".slice/crio-conmon-" + id + ".scope",
			Info{PodUID: uid}}, // CRI-O's monitor: the pod's, not the container's
		{"/kubepods/burstable/pod" + uid + "/" + id, Info{ContainerID: id, PodUID: uid}}, // cgroupfs driver
		{"/kubepods/besteffort/pod" + uid, Info{PodUID: uid}},                            // the pod's own group (pause)
		{"/machine.slice/libpod-" + id + ".scope", Info{ContainerID: id, Runtime: "podman"}},
		{"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id + ".scope", Info{ContainerID: id, Runtime: "podman", Unit: "user@1000.service"}},
		{"/libpod_parent/libpod-" + id, Info{ContainerID: id, Runtime: "podman"}},
		{"/system.slice/containerd.service", Info{Unit: "containerd.service"}},
		{"/system.slice/nginx.service", Info{Unit: "nginx.service"}},
		{"/system.slice/system-getty.slice/getty@tty1.service", Info{Unit: "getty@tty1.service"}},
		{"/user.slice/user-1000.slice/session-3.scope", Info{}},
		{"/", Info{}},
		{"/docker-notanid.scope", Info{}},
		{"/docker/" + id[:12], Info{}}, // short ids are not how runtimes name groups
	} {
		c.want.Path = c.path
		if got := Parse(c.path); got != c.want {
			t.Errorf("Parse(%q)\n got  %+v\n want %+v", c.path, got, c.want)
		}
	}
}

func TestResolver(t *testing.T) {
	root := t.TempDir()
	write := func(pid, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, pid, "cgroup"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// hybrid host: v1 controllers, and the v2 line
	write("42", "9:name=systemd:/system.slice/docker-"+id+".scope\n4:memory:/docker/"+id+"\n0::/system.slice/docker-"+id+".scope\n")
	write("43", "0::/system.slice/nginx.service (deleted)\n")
	write("44", "4:memory:/\n1:cpu:/\n") // v1 only
	r := NewResolver(16)
	r.procRoot = root
	if got := r.Lookup(42, 0); got.ContainerID != id || got.Runtime != "docker" {
		t.Errorf("pid 42: %+v", got)
	}
	if got := r.Lookup(43, 0); got.Unit != "nginx.service" || got.Path != "/system.slice/nginx.service" {
		t.Errorf("pid 43: %+v", got)
	}
	for _, pid := range []uint32{44, 45, 0} {
		if got := r.Lookup(pid, 0); got.Known() {
			t.Errorf("pid %d: %+v, want unknown", pid, got)
		}
	}
	// Answers are kept for a while: a process that moved is seen moved
	// once its entry is old.
	write("42", "0::/system.slice/other.service\n")
	if got := r.Lookup(42, 0); got.ContainerID != id {
		t.Errorf("pid 42 looked up again at once: %+v, want the remembered answer", got)
	}
	r.ttl = 0
	if got := r.Lookup(42, 0); got.Unit != "other.service" || got.ContainerID != "" {
		t.Errorf("pid 42 after its entry aged: %+v", got)
	}
	// Gone since: the last answer stays.
	if err := os.RemoveAll(filepath.Join(root, "42")); err != nil {
		t.Fatal(err)
	}
	if got := r.Lookup(42, 0); got.Unit != "other.service" {
		t.Errorf("pid 42 after it exited: %+v, want what was known", got)
	}
}

// An owner's group by the kernel's id (its directory's inode in a cgroup2
// mount): known after the process exits, and for a group made since the
// last walk of the mount. The root group says nothing.
func TestResolverByID(t *testing.T) {
	mount := filepath.Join(t.TempDir(), "cgroup two") // (mountinfo escapes the space)
	group := filepath.Join(mount, "system.slice", "docker-"+id+".scope")
	if err := os.MkdirAll(group, 0o755); err != nil {
		t.Fatal(err)
	}
	mountinfo := filepath.Join(t.TempDir(), "mountinfo")
	escaped := strings.ReplaceAll(mount, " ", `\040`)
	if err := os.WriteFile(mountinfo, []byte("25 1 8:1 / / rw - ext4 /dev/sda1 rw\n"+
		"30 25 0:26 /sub /elsewhere rw - cgroup2 cgroup2 rw\n"+ // not the whole hierarchy
		"31 25 0:26 / "+escaped+" rw,nosuid - cgroup2 cgroup2 rw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ino := func(path string) uint64 {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	r := NewResolver(16)
	r.procRoot, r.mountinfo = t.TempDir(), mountinfo // no processes at all
	if got := r.Lookup(4242, ino(group)); got.ContainerID != id || got.Path != "/system.slice/docker-"+id+".scope" {
		t.Errorf("by id, the process gone: %+v", got)
	}
	if got := r.Lookup(4242, ino(mount)); got.Known() {
		t.Errorf("the root group: %+v, want unknown", got)
	}
	later := filepath.Join(mount, "system.slice", "nginx.service")
	if err := os.Mkdir(later, 0o755); err != nil {
		t.Fatal(err)
	}
	r.walked = time.Time{} // (a second later)
	if got := r.Lookup(0, ino(later)); got.Unit != "nginx.service" {
		t.Errorf("a group made after the walk: %+v", got)
	}
}
