// SPDX-License-Identifier: Apache-2.0

// Command witness is a second opinion on what the kernel reported: it prints
// every TCP state change and every start and removal of a timewait timer
// outside the root network namespace (with -all, there too), from programs of its own that share
// nothing with tcpstate's but the tracepoints (tp_btf, no clang: a few
// instructions built here, as scripts/hookfloor does). When tcpstate shows a
// connection with a step missing, run this beside it: if the step is here,
// tcpstate lost it; if not, the kernel never reported it.
//
// Each line: CLOCK_BOOTTIME ns, CPU, what (state, tw_start, tw_cancel), the
// socket's address, local->remote port, then the old and new state (state)
// or the timewait substate and the timer's expiry in jiffies, and the
// namespace. At the end (SIGINT, SIGTERM) it prints to stderr how many of
// each it saw and how many runs the kernel skipped (recursion misses: its
// state program has no second program to take those over).
//
//	go run ./scripts/witness [-q] [-all]
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/tcpstate/tcpstate/tracer"
)

// Record kinds.
const (
	kindState = iota + 1
	kindTWStart
	kindTWCancel
)

var kindNames = map[uint32]string{kindState: "state", kindTWStart: "tw_start", kindTWCancel: "tw_cancel"}

// layout is what the programs need to know of the running kernel's structs.
type layout struct {
	net, inum, twTimer, substate int32 // offsets: sock_common.skc_net, net.ns.inum, the timewait timer, tw_substate
	rootNetns                    int64
	twTimerFn                    uint64 // tw_timer_handler
}

func main() {
	quiet := flag.Bool("q", false, "print no records, only the counts at the end")
	all := flag.Bool("all", false, "the root network namespace too (loopback tests run there)")
	flag.Parse()
	if err := run(*quiet, *all); err != nil {
		fmt.Fprintln(os.Stderr, "witness:", err)
		os.Exit(1)
	}
}

func run(quiet, all bool) error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return err
	}
	l, err := kernelLayout()
	if err != nil {
		return err
	}
	if all {
		l.rootNetns = -1 // (an inode number is 32 bits: none is this)
	}
	rb, err := ebpf.NewMap(&ebpf.MapSpec{Name: "witness", Type: ebpf.RingBuf, MaxEntries: 32 << 20})
	if err != nil {
		return fmt.Errorf("ring buffer: %w", err)
	}
	defer rb.Close()
	var progs []*ebpf.Program
	for _, p := range []struct {
		tracepoint string
		insns      asm.Instructions
	}{
		{"inet_sock_set_state", states(rb, l)},
		{"timer_start", timers(rb, l, kindTWStart)},
		{"timer_cancel", timers(rb, l, kindTWCancel)},
	} {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "witness", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp,
			AttachTo: p.tracepoint, License: "GPL", Instructions: p.insns})
		if err != nil {
			return fmt.Errorf("loading the program for %s: %w", p.tracepoint, err)
		}
		defer prog.Close()
		lk, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			return fmt.Errorf("attaching to %s: %w", p.tracepoint, err)
		}
		defer lk.Close()
		progs = append(progs, prog)
	}
	fmt.Fprintln(os.Stderr, "witness: attached; Ctrl-C ends")
	r, err := ringbuf.NewReader(rb)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; r.Close() }()
	counts := map[string]int{}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	le := binary.LittleEndian
	for {
		rec, err := r.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			break
		}
		if err != nil {
			return err
		}
		b := rec.RawSample
		kind := le.Uint32(b[8:])
		counts[kindNames[kind]]++
		if quiet {
			continue
		}
		fmt.Fprintf(out, "%d cpu%d %s %x %d->%d %d %d ns %d\n", le.Uint64(b[0:]), le.Uint32(b[12:]), kindNames[kind],
			le.Uint64(b[16:]), le.Uint16(b[50:]), binary.BigEndian.Uint16(b[48:]), le.Uint64(b[24:]), le.Uint64(b[32:]), le.Uint32(b[52:]))
	}
	fmt.Fprintln(os.Stderr, "witness: seen", counts)
	for i, p := range progs {
		if st, err := p.Stats(); err == nil {
			fmt.Fprintf(os.Stderr, "witness: %s skipped %d runs (recursion misses)\n", []string{"inet_sock_set_state", "timer_start", "timer_cancel"}[i], st.RecursionMisses)
		}
	}
	return nil
}

// kernelLayout reads the offsets from the kernel's BTF, the root namespace
// from this process's (run it there), and tw_timer_handler's address.
func kernelLayout() (layout, error) {
	var l layout
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return l, err
	}
	var netNS, nsInum int32
	for _, o := range []struct {
		typ, member string
		to          *int32
	}{
		{"sock_common", "skc_net", &l.net}, {"net", "ns", &netNS}, {"ns_common", "inum", &nsInum},
		{"inet_timewait_sock", "tw_timer", &l.twTimer}, {"inet_timewait_sock", "tw_substate", &l.substate},
	} {
		if *o.to, err = offset(spec, o.typ, o.member); err != nil {
			return l, err
		}
	}
	l.inum = netNS + nsInum
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		return l, err
	}
	l.rootNetns = int64(st.Ino)
	syms, err := tracer.Kallsyms("tw_timer_handler")
	if err != nil {
		return l, err
	}
	if l.twTimerFn = syms["tw_timer_handler"]; l.twTimerFn == 0 {
		return l, errors.New("/proc/kallsyms has no address of tw_timer_handler (not root?)")
	}
	return l, nil
}

// offset is where member lies in the kernel's struct typ, in bytes.
func offset(spec *btf.Spec, typ, member string) (int32, error) {
	var s *btf.Struct
	if err := spec.TypeByName(typ, &s); err != nil {
		return 0, err
	}
	for _, m := range s.Members {
		if m.Name == member {
			return int32(m.Offset.Bytes()), nil
		}
	}
	return 0, fmt.Errorf("no %s.%s in the kernel's BTF", typ, member)
}

// send writes the record at fp-56 (time, kind and CPU, the socket in R7, the
// two values the caller stored at fp-32 and fp-24, scratch, ports and
// namespace) to the ring buffer, unless the socket is in the root namespace.
func send(rb *ebpf.Map, l layout, kind int32) asm.Instructions {
	probe := func(dst, size int32, src asm.Instructions) asm.Instructions {
		insns := asm.Instructions{asm.Mov.Reg(asm.R1, asm.RFP), asm.Add.Imm(asm.R1, dst), asm.Mov.Imm(asm.R2, size)}
		insns = append(insns, src...)
		return append(insns, asm.FnProbeReadKernel.Call())
	}
	insns := asm.Instructions{
		asm.StoreMem(asm.RFP, -40, asm.R7, asm.DWord),
		asm.Mov.Imm(asm.R1, kind), asm.StoreMem(asm.RFP, -48, asm.R1, asm.Word),
		asm.FnGetSmpProcessorId.Call(), asm.StoreMem(asm.RFP, -44, asm.R0, asm.Word),
		asm.FnKtimeGetBootNs.Call(), asm.StoreMem(asm.RFP, -56, asm.R0, asm.DWord),
	}
	insns = append(insns, probe(-8, 4, asm.Instructions{asm.Mov.Reg(asm.R3, asm.R7), asm.Add.Imm(asm.R3, 12)})...) // skc_dport, skc_num
	insns = append(insns, probe(-16, 8, asm.Instructions{asm.Mov.Reg(asm.R3, asm.R7), asm.Add.Imm(asm.R3, l.net)})...)
	insns = append(insns, probe(-4, 4, asm.Instructions{asm.LoadMem(asm.R3, asm.RFP, -16, asm.DWord), asm.Add.Imm(asm.R3, l.inum)})...)
	return append(insns,
		asm.LoadMem(asm.R1, asm.RFP, -4, asm.Word),
		asm.LoadImm(asm.R2, l.rootNetns, asm.DWord),
		asm.JEq.Reg(asm.R1, asm.R2, "out"),
		asm.LoadMapPtr(asm.R1, rb.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -56),
		asm.Mov.Imm(asm.R3, 56), asm.Mov.Imm(asm.R4, 0),
		asm.FnRingbufOutput.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return())
}

// states: every state change, with its old and new state.
func states(rb *ebpf.Map, l layout) asm.Instructions {
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 8, asm.DWord),
		asm.LoadMem(asm.R3, asm.R1, 16, asm.DWord),
		asm.StoreMem(asm.RFP, -32, asm.R2, asm.DWord),
		asm.StoreMem(asm.RFP, -24, asm.R3, asm.DWord),
		asm.LoadMem(asm.R7, asm.R1, 0, asm.DWord),
	}
	return append(insns, send(rb, l, kindState)...)
}

// timers: the timewait timers (function at offset 24 of struct timer_list,
// expiry at 16), with the socket's substate.
func timers(rb *ebpf.Map, l layout, kind int32) asm.Instructions {
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.DWord),
		asm.LoadMem(asm.R3, asm.R2, 24, asm.DWord),
		asm.LoadImm(asm.R4, int64(l.twTimerFn), asm.DWord),
		asm.JEq.Reg(asm.R3, asm.R4, "tw"),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
		asm.LoadMem(asm.R3, asm.R2, 16, asm.DWord).WithSymbol("tw"),
		asm.StoreMem(asm.RFP, -24, asm.R3, asm.DWord),
		asm.Mov.Reg(asm.R7, asm.R2),
		asm.Add.Imm(asm.R7, -l.twTimer),
		asm.Mov.Imm(asm.R1, 0), asm.StoreMem(asm.RFP, -32, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.RFP), asm.Add.Imm(asm.R1, -32), asm.Mov.Imm(asm.R2, 1),
		asm.Mov.Reg(asm.R3, asm.R7), asm.Add.Imm(asm.R3, l.substate), asm.FnProbeReadKernel.Call(),
	}
	return append(insns, send(rb, l, kind)...)
}
