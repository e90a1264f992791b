// SPDX-License-Identifier: Apache-2.0

// Package netns runs code inside another network namespace, on one thread.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrStranded: the thread could not go back to its own namespace. It stays
// locked to the calling goroutine, which must end (Go then discards the
// thread) rather than run anything else.
var ErrStranded = errors.New("thread stranded in another network namespace")

// Do runs f with the calling goroutine's thread inside the network namespace
// at path (/proc/PID/ns/net, /run/netns/NAME), and brings the thread back.
func Do(path string, f func() error) error {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer self.Close()
	target, err := os.Open(path)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if same(self, target) {
		// Already there: no setns (which needs CAP_SYS_ADMIN even for the
		// namespace one is in).
		runtime.UnlockOSThread()
		return f()
	}
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering namespace %s: %w", path, err)
	}
	ferr := f()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		return errors.Join(ErrStranded, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Go runs f inside the namespace at path on a goroutine of its own, whose
// thread is discarded if it cannot come back.
func Go(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- Do(path, f) }()
	return <-errc
}

// same reports whether two namespace files are one namespace.
func same(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	return unix.Fstat(int(a.Fd()), &sa) == nil && unix.Fstat(int(b.Fd()), &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
