// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcpstate: TCP state transitions with their real owner and the time spent in
 * each state, including the part of a connection's life that a timewait socket
 * carries (orphaned FIN_WAIT2, TIME_WAIT). Only tracepoints (tp_btf) and the
 * tcp iterator: kprobes and fentry are not available on the kernels we target
 * (README.md, "How it works" and "Requirements").
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#include "tcpstate.h"

#define AF_INET		2
#define AF_INET6	10
#define ECONNREFUSED	111
#define ETIMEDOUT	110

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Puts the enums in BTF so that bpf2go emits them for the Go side (-type). */
const enum owner_src *unused_owner_src __attribute__((unused));
const enum stat_index *unused_stat_index __attribute__((unused));
const enum event_type *unused_event_type __attribute__((unused));
const enum event_flag *unused_event_flag __attribute__((unused));
const enum port_side *unused_port_side __attribute__((unused));
const enum close_reason *unused_close_reason __attribute__((unused));
const struct iter_rec *unused_iter_rec __attribute__((unused));
const enum ka_event *unused_ka_event __attribute__((unused));
const enum ka_src *unused_ka_src __attribute__((unused));

#include "config.h"
#include "maps.h"
#include "emit.h"
#include "compat.h"
#include "sock.h"
#include "timewait.h"
#include "keepalive.h"
#include "state.h"
#include "owner_io.h"
#include "reset.h"
#include "timers.h"
#include "iter.h"

/*
 * Probes, loaded alone by user space (never attached) to learn what tracing
 * programs may do on this kernel; see have_sk_storage and have_cookie.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(probe_sk_storage, const struct sock *sk)
{
	bpf_sk_storage_get(&sk_infos, (void *)sk, 0, 0);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(probe_cookie, const struct sock *sk)
{
	return bpf_get_socket_cookie((void *)sk) != 0;
}
