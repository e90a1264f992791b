// SPDX-License-Identifier: Apache-2.0

// Package testnet makes network namespaces for kernel tests: loopback up,
// sysctls set inside (never on the host), removed when the test ends.
//
// It needs no tools (no iproute2): the kernel tests also run in the small
// virtual machines of scripts/vmtest, which hold only busybox and the tests.
// A namespace is made as `ip netns add` makes it, a bind mount of the
// namespace on a file under /run/netns, so tcpstate's --netns NAME and its
// walk of /run/netns find it as they would find one made by `ip netns`.
package testnet

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate/internal/netns"
)

// Dir is where named network namespaces live (as for `ip netns`).
const Dir = "/run/netns"

// NetNS is a network namespace made for one test.
type NetNS struct {
	Name  string
	Path  string // Dir/Name
	Inode uint32
}

// New makes a namespace and sets sysctls ("net.ipv4.tcp_fin_timeout=2") in it.
func New(t testing.TB, sysctls ...string) *NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root to make a network namespace; run `go test` as root")
	}
	name := fmt.Sprintf("tcpstate-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	n := &NetNS{Name: name, Path: filepath.Join(Dir, name)}
	if err := create(n.Path); err != nil {
		t.Fatalf("making network namespace %s: %v", n.Path, err)
	}
	t.Cleanup(func() {
		_ = unix.Unmount(n.Path, unix.MNT_DETACH)
		_ = os.Remove(n.Path)
	})
	var st unix.Stat_t
	if err := unix.Stat(n.Path, &st); err != nil {
		t.Fatal(err)
	}
	n.Inode = uint32(st.Ino)
	n.setLoopback(t, true)
	n.Sysctl(t, sysctls...)
	return n
}

// create makes a new network namespace and bind-mounts it on path.
func create(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread goes back to its namespace afterwards: a thread left
		// in the new one would have to die with its goroutine, and the
		// process's main thread cannot (it would stay there, and
		// /proc/self/ns/net with it).
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		err = unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, "")
		if err != nil {
			err = fmt.Errorf("bind mount: %w", err)
		}
		if serr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("leaving the new namespace: %w", serr)) // the thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

// Sysctl sets sysctls inside the namespace: /proc/sys/net shows the
// namespace of the thread that opens it.
func (n *NetNS) Sysctl(t testing.TB, kvs ...string) {
	t.Helper()
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("sysctl %q: want name=value", kv)
		}
		path := "/proc/sys/" + strings.ReplaceAll(strings.TrimSpace(k), ".", "/")
		var err error
		n.Do(t, func() { err = os.WriteFile(path, []byte(strings.TrimSpace(v)), 0o644) })
		if err != nil {
			t.Fatalf("setting %s in %s: %v", kv, n.Name, err)
		}
	}
}

// LoopbackDown makes every packet inside the namespace go nowhere.
func (n *NetNS) LoopbackDown(t testing.TB) {
	t.Helper()
	n.setLoopback(t, false)
}

func (n *NetNS) setLoopback(t testing.TB, up bool) {
	t.Helper()
	var err error
	n.Do(t, func() { err = setLinkUp("lo", up) })
	if err != nil {
		t.Fatalf("setting lo up=%v in %s: %v", up, n.Name, err)
	}
}

// setLinkUp sets or clears IFF_UP on a link of the calling thread's namespace.
func setLinkUp(name string, up bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS: %w", err)
	}
	flags := ifr.Uint16()
	if up {
		flags |= unix.IFF_UP
	} else {
		flags &^= unix.IFF_UP
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCSIFFLAGS: %w", err)
	}
	return nil
}

// Do runs f with the calling goroutine's thread inside the namespace: the
// sockets f creates belong to it for their whole life.
func (n *NetNS) Do(t testing.TB, f func()) {
	t.Helper()
	if err := n.do(f); err != nil {
		t.Fatal(err)
	}
}

func (n *NetNS) do(f func()) error {
	err := netns.Do(n.Path, func() error { f(); return nil })
	if errors.Is(err, netns.ErrStranded) {
		panic(fmt.Errorf("leaving test namespace %s: %w", n.Name, err)) // the thread is unusable; never hand it back
	}
	return err
}

// SelfComm is this process's task name: the test binary's name cut to 15
// bytes (tcpstate.test, tracer.test; cmd.test in scripts/vmtest).
func SelfComm(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// Listen listens on addr ("127.0.0.1:0") inside the namespace; the listener
// is closed when the test ends.
func (n *NetNS) Listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	n.Do(t, func() { ln, err = net.Listen(network, addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Dial connects from inside the namespace to addr; the connection is closed
// when the test ends, if it was not before.
func (n *NetNS) Dial(t testing.TB, network, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	n.Do(t, func() { c, err = net.Dial(network, addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
