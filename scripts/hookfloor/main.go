// SPDX-License-Identifier: Apache-2.0

// Command hookfloor attaches programs that do nothing (return 0) to the
// tracepoints tcpstate attaches to, the same number on each, and waits for
// SIGINT or SIGTERM. Under scripts/bench it measures the floor of any tracer
// that follows TCP through these tracepoints: what the kernel's dispatch of a
// program costs on this machine, before a single instruction of tcpstate's
// runs. It needs no clang: the programs are a few instructions built here.
//
// With -emit it is the least a tracer with tcpstate's reach can do: the
// events tcpstate looks at go to user space as 32-byte records (time, the
// tracepoint's arguments: a state change's three, a timer's one) through a
// ring buffer, and are read there and dropped. They are every state change
// of a socket (not a listener's new child, not a call that leaves the state
// as it was), every start and fire of a timewait or keepalive timer, the
// removal of a timewait timer and the end of a keepalive timer's run; other
// timers leave after two compares. The second program on inet_sock_set_state
// stays empty. The records wake nobody: the reader polls every 10 ms.
//
//	go run ./scripts/hookfloor [-emit] [-tracepoints inet_sock_set_state,timer_start]
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/tcpstate/tcpstate/tracer"
)

// tcpstateHooks are the tracepoints tcpstate attaches to, one entry per
// program (tracer/tracer.go, hooks): two on inet_sock_set_state, and one of
// tcp_send_reset's two programs, which the kernel's version picks.
const tcpstateHooks = "inet_sock_set_state,inet_sock_set_state,sock_send_length,sock_recv_length," +
	"tcp_receive_reset,tcp_send_reset,timer_start,timer_expire_entry,timer_cancel,timer_expire_exit"

// timerHooks: the tracepoints whose first argument is a struct timer_list,
// and the functions of the timers tcpstate looks at there.
var timerHooks = map[string][]string{
	"timer_start":        {"tw_timer_handler", "tcp_keepalive_timer"},
	"timer_expire_entry": {"tw_timer_handler", "tcp_keepalive_timer"},
	"timer_cancel":       {"tw_timer_handler"},
	"timer_expire_exit":  {"tcp_keepalive_timer"},
}

func main() {
	list := flag.String("tracepoints", tcpstateHooks, "tracepoints to attach an empty program to, comma-separated (repeat one to attach two)")
	emit := flag.Bool("emit", false, "send each state change and each timewait or keepalive timer event to user space (32 bytes), and read it there")
	flag.Parse()
	if err := run(strings.Split(*list, ","), *emit); err != nil {
		fmt.Fprintln(os.Stderr, "hookfloor:", err)
		os.Exit(1)
	}
}

func run(tracepoints []string, emit bool) error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return err
	}
	var rb *ebpf.Map
	var syms map[string]uint64
	if emit {
		var err error
		rb, err = ebpf.NewMap(&ebpf.MapSpec{Name: "hookfloor", Type: ebpf.RingBuf, MaxEntries: 8 << 20})
		if err != nil {
			return fmt.Errorf("ring buffer: %w", err)
		}
		defer rb.Close()
		names := []string{"tw_timer_handler", "tcp_keepalive_timer"}
		if syms, err = tracer.Kallsyms(names...); err != nil {
			return err
		}
		for _, n := range names {
			if syms[n] == 0 {
				return fmt.Errorf("/proc/kallsyms has no address of %s (not root?)", n)
			}
		}
	}
	var links []link.Link
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	var skipped []string
	statesSent := false // by the first program on inet_sock_set_state only
	for _, tp := range tracepoints {
		insns := asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
		switch {
		case rb != nil && tp == "inet_sock_set_state" && !statesSent:
			insns = emitStates(rb)
			statesSent = true
		case rb != nil && timerHooks[tp] != nil:
			var fns []uint64
			for _, n := range timerHooks[tp] {
				fns = append(fns, syms[n])
			}
			insns = emitTimers(rb, fns)
		}
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         "hookfloor",
			Type:         ebpf.Tracing,
			AttachType:   ebpf.AttachTraceRawTp,
			AttachTo:     tp,
			License:      "GPL",
			Instructions: insns,
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
	what := "empty programs"
	if rb != nil {
		what = "programs sending 32-byte records"
	}
	fmt.Fprintf(os.Stderr, "hookfloor: %d %s attached", len(links), what)
	if len(skipped) > 0 {
		fmt.Fprintf(os.Stderr, " (no tracepoint %s)", strings.Join(skipped, ", "))
	}
	fmt.Fprintln(os.Stderr, "; Ctrl-C ends")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	if rb == nil {
		<-sig
		return nil
	}
	r, err := ringbuf.NewReader(rb)
	if err != nil {
		return err
	}
	// The programs never wake the reader (BPF_RB_NO_WAKEUP): it reads
	// whatever there is every 10 ms, whatever the rate.
	var records, bytes uint64
	var rec ringbuf.Record
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-sig:
			fmt.Fprintf(os.Stderr, "hookfloor: %d records read (%d bytes)\n", records, bytes)
			return r.Close()
		case <-tick.C:
		}
		r.SetDeadline(time.Now())
		for {
			err := r.ReadInto(&rec)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return err
			}
			records++
			bytes += uint64(len(rec.RawSample))
		}
	}
}

// emitStates sends a state change (its time and three arguments), but not a
// listener's new child (LISTEN to SYN_RECV) nor a call that leaves the state
// as it was.
func emitStates(rb *ebpf.Map) asm.Instructions {
	const listen, synRecv = 10, 3
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R1, 8, asm.DWord),  // oldstate
		asm.LoadMem(asm.R3, asm.R1, 16, asm.DWord), // newstate
		asm.JEq.Reg32(asm.R2, asm.R3, "skip"),
		asm.JNE.Imm32(asm.R2, listen, "send"),
		asm.JNE.Imm32(asm.R3, synRecv, "send"),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("skip"),
		asm.Return(),
	}
	return append(insns, send(rb, "send", 3)...)
}

// emitTimers sends a run whose timer runs one of fns (its first argument's
// function, at offset 24 of struct timer_list: after the list node and the
// expiry), and leaves at once for every other timer.
func emitTimers(rb *ebpf.Map, fns []uint64) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R1, 0, asm.DWord),
		asm.LoadMem(asm.R3, asm.R2, 24, asm.DWord),
	}
	for _, fn := range fns {
		insns = append(insns,
			asm.LoadImm(asm.R4, int64(fn), asm.DWord),
			asm.JEq.Reg(asm.R3, asm.R4, "send"))
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 0), asm.Return())
	return append(insns, send(rb, "send", 1)...)
}

// send: bpf_ringbuf_output of {ktime, the first nargs arguments, zeros} from
// the stack; the program's context is in R6. The first instruction carries
// label.
func send(rb *ebpf.Map, label string, nargs int16) asm.Instructions {
	insns := asm.Instructions{
		asm.FnKtimeGetBootNs.Call().WithSymbol(label),
		asm.StoreMem(asm.RFP, -32, asm.R0, asm.DWord),
	}
	for i := range int16(3) {
		if i < nargs {
			insns = append(insns, asm.LoadMem(asm.R1, asm.R6, 8*i, asm.DWord))
		} else {
			insns = append(insns, asm.Mov.Imm(asm.R1, 0))
		}
		insns = append(insns, asm.StoreMem(asm.RFP, -24+8*i, asm.R1, asm.DWord))
	}
	return append(insns,
		asm.LoadMapPtr(asm.R1, rb.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -32),
		asm.Mov.Imm(asm.R3, 32),
		asm.Mov.Imm(asm.R4, 1), // BPF_RB_NO_WAKEUP
		asm.FnRingbufOutput.Call(),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return())
}
