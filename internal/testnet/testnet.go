// SPDX-License-Identifier: Apache-2.0

// Package testnet makes network namespaces for kernel tests: loopback up,
// sysctls set inside (never on the host), removed when the test ends.
package testnet

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NetNS is a network namespace made for one test.
type NetNS struct {
	Name  string
	Inode uint32
}

// New makes a namespace and sets sysctls ("net.ipv4.tcp_fin_timeout=2") in it.
func New(t testing.TB, sysctls ...string) *NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root to make a network namespace; run `go test` as root")
	}
	n := &NetNS{Name: fmt.Sprintf("tcpstate-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)}
	run(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.Name).Run() })
	run(t, "ip", "-n", n.Name, "link", "set", "lo", "up")
	n.Sysctl(t, sysctls...)
	var st unix.Stat_t
	if err := unix.Stat("/run/netns/"+n.Name, &st); err != nil {
		t.Fatal(err)
	}
	n.Inode = uint32(st.Ino)
	return n
}

// Sysctl sets sysctls inside the namespace.
func (n *NetNS) Sysctl(t testing.TB, kvs ...string) {
	t.Helper()
	for _, kv := range kvs {
		run(t, "ip", "netns", "exec", n.Name, "sysctl", "-q", "-w", kv)
	}
}

// LoopbackDown makes every packet inside the namespace go nowhere.
func (n *NetNS) LoopbackDown(t testing.TB) {
	t.Helper()
	run(t, "ip", "-n", n.Name, "link", "set", "lo", "down")
}

// Do runs f with the calling goroutine's thread inside the namespace: the
// sockets f creates belong to it for their whole life.
func (n *NetNS) Do(t testing.TB, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + n.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			panic(err) // the thread is unusable; never hand it back
		}
	}()
	f()
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}
