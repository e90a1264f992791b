// SPDX-License-Identifier: Apache-2.0

// Command hookfloor attaches programs that do nothing (return 0) to the
// tracepoints tcpstate attaches to, the same number on each, and waits for
// SIGINT or SIGTERM. Under scripts/bench it measures the floor of any tracer
// that follows TCP through these tracepoints: what the kernel's dispatch of a
// program costs on this machine, before a single instruction of tcpstate's
// runs. It needs no clang: the programs are two instructions built here.
//
//	go run ./scripts/hookfloor [-tracepoints inet_sock_set_state,timer_start]
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// tcpstateHooks are the tracepoints tcpstate attaches to, one entry per
// program (tracer/tracer.go, hooks): two on inet_sock_set_state, and one of
// tcp_send_reset's two programs, which the kernel's version picks.
const tcpstateHooks = "inet_sock_set_state,inet_sock_set_state,sock_send_length,sock_recv_length," +
	"tcp_receive_reset,tcp_send_reset,timer_start,timer_expire_entry,timer_cancel,timer_expire_exit"

func main() {
	list := flag.String("tracepoints", tcpstateHooks, "tracepoints to attach an empty program to, comma-separated (repeat one to attach two)")
	flag.Parse()
	if err := run(strings.Split(*list, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "hookfloor:", err)
		os.Exit(1)
	}
}

func run(tracepoints []string) error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return err
	}
	var links []link.Link
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	var skipped []string
	for _, tp := range tracepoints {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:       "hookfloor",
			Type:       ebpf.Tracing,
			AttachType: ebpf.AttachTraceRawTp,
			AttachTo:   tp,
			License:    "GPL",
			Instructions: asm.Instructions{
				asm.Mov.Imm(asm.R0, 0),
				asm.Return(),
			},
		})
		if errors.Is(err, ebpf.ErrNotSupported) || err != nil && strings.Contains(err.Error(), "not found") {
			skipped = append(skipped, tp) // (a tracepoint this kernel lacks, as tcpstate skips it)
			continue
		}
		if err != nil {
			return fmt.Errorf("loading a program for %s: %w", tp, err)
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		prog.Close() // (the link holds it)
		if err != nil {
			return fmt.Errorf("attaching to %s: %w", tp, err)
		}
		links = append(links, l)
	}
	fmt.Fprintf(os.Stderr, "hookfloor: %d empty programs attached", len(links))
	if len(skipped) > 0 {
		fmt.Fprintf(os.Stderr, " (no tracepoint %s)", strings.Join(skipped, ", "))
	}
	fmt.Fprintln(os.Stderr, "; Ctrl-C ends")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}
