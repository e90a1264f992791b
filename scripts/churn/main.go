// SPDX-License-Identifier: Apache-2.0

// Command churn makes short TCP connections on loopback as fast as it can (or
// at a set rate) for a while, and prints how many it made per second. The
// server closes first, so the clients never hold TIME_WAIT and never run out
// of ports. It can also hold idle keepalive sockets, to load the timer hooks:
// connections ESTABLISHED at both ends, on a listener of their own, with
// keepalive on both ends.
//
//	go run ./scripts/churn -d 5s -c 2 -keepalive 10000
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// keepaliveChurn: TCP_KEEPIDLE of the churned connections (0: no keepalive).
var keepaliveChurn int

func main() {
	dur := flag.Duration("d", 5*time.Second, "how long to churn")
	rate := flag.Int("rate", 0, "connections per second (0: as fast as possible)")
	conc := flag.Int("c", 2, "client workers")
	idle := flag.Int("keepalive", 0, "idle keepalive sockets to hold meanwhile (half as many connections, keepalive on both ends)")
	idleTime := flag.Int("keepalive-idle", 5, "their TCP_KEEPIDLE and TCP_KEEPINTVL, seconds")
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	hold := flag.Int("hold", 0, "instead of churning, hold this many connections open for -d (both ends: twice the sockets)")
	halfClose := flag.Bool("half-close", false, "with -hold: the client ends shut down their sending side, the servers never close (CLOSE_WAIT and FIN_WAIT2, the sockets watch lists)")
	churnKA := flag.Int("churn-keepalive", 0, "SO_KEEPALIVE with this TCP_KEEPIDLE (seconds) on both ends of every churned connection, as Go's net package does (15)")
	flag.Parse()
	keepaliveChurn = *churnKA
	var err error
	if *hold > 0 {
		err = holdOpen(*hold, *dur, *addr, *halfClose)
	} else {
		err = run(*dur, *rate, *conc, *idle, *idleTime, *addr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "churn:", err)
		os.Exit(1)
	}
}

func run(dur time.Duration, rate, conc, idle, idleTime int, addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("-addr %q: want a loopback address:port", addr)
	}
	lfd, sa, err := listen(ap)
	if err != nil {
		return err
	}
	defer syscall.Close(lfd)
	var stop atomic.Bool
	for range max(conc, 1) {
		go serve(lfd, &stop)
	}
	var held []int
	defer func() {
		for _, fd := range held {
			syscall.Close(fd)
		}
	}()
	if idle > 0 {
		ilfd, isa, err := listen(netip.AddrPortFrom(ap.Addr(), 0))
		if err != nil {
			return err
		}
		defer syscall.Close(ilfd)
		for range (idle + 1) / 2 {
			c, err := dial(isa, idleTime)
			if err != nil {
				return fmt.Errorf("opening idle keepalive sockets: %w (raise `ulimit -n`?)", err)
			}
			s, _, err := syscall.Accept4(ilfd, syscall.SOCK_CLOEXEC)
			if err != nil {
				syscall.Close(c)
				return fmt.Errorf("accepting idle keepalive sockets: %w (raise `ulimit -n`?)", err)
			}
			setKeepalive(s, idleTime)
			held = append(held, c, s)
		}
	}

	var made atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(dur)
	var interval time.Duration
	if rate > 0 {
		interval = time.Second * time.Duration(max(conc, 1)) / time.Duration(rate)
	}
	for range max(conc, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			next := time.Now()
			for time.Now().Before(deadline) {
				if interval > 0 {
					next = next.Add(interval)
					time.Sleep(time.Until(next))
				}
				fd, err := dial(sa, keepaliveChurn)
				if err != nil {
					continue
				}
				var b [1]byte
				_, _ = syscall.Read(fd, b[:]) // until the server's FIN
				syscall.Close(fd)
				made.Add(1)
			}
		}()
	}
	wg.Wait()
	stop.Store(true)
	took := time.Since(start)
	fmt.Printf("%d connections in %.2fs: %.0f connections/s\n", made.Load(), took.Seconds(), float64(made.Load())/took.Seconds())
	return nil
}

func sockaddr(ap netip.AddrPort) (syscall.Sockaddr, int) {
	if ap.Addr().Is4() {
		return &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, syscall.AF_INET
	}
	return &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, syscall.AF_INET6
}

func listen(ap netip.AddrPort) (int, syscall.Sockaddr, error) {
	sa, fam := sockaddr(ap)
	fd, err := syscall.Socket(fam, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, nil, err
	}
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Bind(fd, sa); err != nil {
		return 0, nil, err
	}
	if err := syscall.Listen(fd, 4096); err != nil {
		return 0, nil, err
	}
	got, err := syscall.Getsockname(fd)
	return fd, got, err
}

func serve(lfd int, stop *atomic.Bool) {
	runtime.LockOSThread()
	for !stop.Load() {
		fd, _, err := syscall.Accept4(lfd, syscall.SOCK_CLOEXEC)
		if err != nil {
			if err == syscall.EINTR || err == syscall.ECONNABORTED {
				continue
			}
			return
		}
		if keepaliveChurn > 0 {
			setKeepalive(fd, keepaliveChurn)
		}
		syscall.Close(fd)
	}
}

// dial connects to sa; with keepalive > 0 the socket probes after that many
// idle seconds.
func dial(sa syscall.Sockaddr, keepalive int) (int, error) {
	fam := syscall.AF_INET
	if _, ok := sa.(*syscall.SockaddrInet6); ok {
		fam = syscall.AF_INET6
	}
	fd, err := syscall.Socket(fam, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	if keepalive > 0 {
		setKeepalive(fd, keepalive)
	}
	if err := syscall.Connect(fd, sa); err != nil {
		syscall.Close(fd)
		return 0, err
	}
	return fd, nil
}

func setKeepalive(fd, idle int) {
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1)
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, idle)
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, idle)
}

// holdOpen opens n connections to its own listener, says so, and keeps them
// for dur; halfClose: the clients shut down their sending side first, which
// leaves the servers' ends in CLOSE_WAIT and the clients' in FIN_WAIT2 for as
// long as they are held.
func holdOpen(n int, dur time.Duration, addr string, halfClose bool) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("-addr %q: want a loopback address:port", addr)
	}
	lfd, sa, err := listen(ap)
	if err != nil {
		return err
	}
	var fds []int
	for range n {
		c, err := dial(sa, 0)
		if err != nil {
			return fmt.Errorf("after %d connections: %w (raise `ulimit -n`?)", len(fds)/2, err)
		}
		s, _, err := syscall.Accept4(lfd, syscall.SOCK_CLOEXEC)
		if err != nil {
			return err
		}
		fds = append(fds, c, s)
		// Ended by a reset, when closed or killed: no TIME_WAIT left
		// behind to weigh on what runs next.
		for _, fd := range []int{c, s} {
			if err := syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1}); err != nil {
				return err
			}
		}
		if halfClose {
			if err := syscall.Shutdown(c, syscall.SHUT_WR); err != nil {
				return err
			}
		}
	}
	fmt.Printf("holding %d connections\n", n)
	time.Sleep(dur)
	for _, fd := range fds {
		syscall.Close(fd)
	}
	return nil
}
