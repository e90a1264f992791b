// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcpstate: TCP state transitions with their real owner and the time spent in
 * each state. Only tracepoints (tp_btf): kprobes and fentry are not available
 * on the kernels we target (see shared/kernel-notes.md).
 */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_core_read.h"
#include "bpf_tracing.h"
#include "bpf_endian.h"

#include "tcpstate.h"

#define AF_INET		2
#define AF_INET6	10

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Puts the enums in BTF so that bpf2go emits them for the Go side (-type). */
const enum owner_src *unused_owner_src __attribute__((unused));
const enum stat_index *unused_stat_index __attribute__((unused));
const enum event_type *unused_event_type __attribute__((unused));
const enum event_flag *unused_event_flag __attribute__((unused));
const enum port_side *unused_port_side __attribute__((unused));

/* Set from user space before loading (tracer.Config). Zero means "no filter". */
volatile const __u16 filter_family;	/* AF_INET or AF_INET6 */
volatile const __u32 filter_netns;	/* network namespace inode */
volatile const __u32 filter_states;	/* bit (1 << state); matches old or new state */
volatile const __u8 filter_ports;	/* PORT_* bits in use in filter_port_map */
volatile const bool filter_addrs;	/* filter_addr_map in use */
volatile const bool filter_pids;	/* filter_pid_map in use */
volatile const char filter_comm[TASK_COMM_LEN];	/* owner comm, exact */

/*
 * Event stream to user space. Sized by user space (--ringbuf-size). Entries are
 * reserved in emit_state() and consumed by tracer.(*Tracer).Run.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
	__type(value, struct event);
} events SEC(".maps");

/*
 * Counters (enum stat_index), per CPU so that the hot path never contends.
 * Only ever incremented here; read and summed by user space.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/*
 * Per-socket state. Created on a socket's first state change or read/write seen
 * by the tracer; freed by the kernel with the socket. BPF_F_CLONE copies a
 * listener's entry into each socket accepted from it, which is how an accepted
 * socket learns its listener's owner before anyone calls accept().
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct sk_info);
} sk_infos SEC(".maps");

/* Filter sets, written by user space before attaching, read-only here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);	/* port, host order */
	__type(value, __u8);	/* PORT_* bits this port is listed under */
} filter_port_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 256);
	__type(key, struct addr_key);
	__type(value, __u8);
} filter_addr_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);	/* owner tgid */
	__type(value, __u8);
} filter_pid_map SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline bool is_v4mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

static __always_inline bool is_any6(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return (w[0] | w[1] | w[2] | w[3]) == 0;
}

/* Fills family, addresses and ports; v4-mapped IPv6 is reported as IPv4. */
static __always_inline void read_endpoints(const struct sock *sk, struct event *e)
{
	e->family = sk->__sk_common.skc_family;
	e->sport = sk->__sk_common.skc_num;
	/* On the way to CLOSE the kernel releases the port (inet_put_port zeroes
	 * inet_num) before the tracepoint fires; inet_sport still holds it. */
	if (!e->sport)
		e->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	e->dport = bpf_ntohs(sk->__sk_common.skc_dport);

	if (e->family == AF_INET) {
		__builtin_memset(e->saddr, 0, sizeof(e->saddr));
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		*(__u32 *)e->saddr = sk->__sk_common.skc_rcv_saddr;
		*(__u32 *)e->daddr = sk->__sk_common.skc_daddr;
		return;
	}
	BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr);
	BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr);
	if (is_v4mapped(e->daddr) && (is_v4mapped(e->saddr) || is_any6(e->saddr))) {
		__u32 s = is_v4mapped(e->saddr) ? ((__u32 *)e->saddr)[3] : 0;
		__u32 d = ((__u32 *)e->daddr)[3];

		__builtin_memset(e->saddr, 0, sizeof(e->saddr));
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		*(__u32 *)e->saddr = s;
		*(__u32 *)e->daddr = d;
		e->family = AF_INET;
	}
}

static __always_inline bool addr_listed(__u16 family, const __u8 *addr)
{
	struct addr_key key = {};

	if (family == AF_INET) {
		key.prefixlen = 128;
		((__u32 *)key.addr)[2] = bpf_htonl(0x0000ffff);
		((__u32 *)key.addr)[3] = *(const __u32 *)addr;
	} else {
		key.prefixlen = 128;
		__builtin_memcpy(key.addr, addr, 16);
	}
	return bpf_map_lookup_elem(&filter_addr_map, &key) != NULL;
}

static __always_inline bool port_listed(__u16 port, __u8 bit)
{
	__u8 *v = bpf_map_lookup_elem(&filter_port_map, &port);

	return v && (*v & bit);
}

static __always_inline bool comm_matches(const char *comm)
{
	for (int i = 0; i < TASK_COMM_LEN; i++) {
		if (comm[i] != filter_comm[i])
			return false;
		if (!comm[i])
			break;
	}
	return true;
}

/* The filters of tracer.Filter that can run here; user space applies them all again. */
static __always_inline bool wanted(const struct event *e)
{
	if (filter_family && e->family != filter_family)
		return false;
	if (filter_netns && e->netns != filter_netns)
		return false;
	if (filter_states &&
	    !(filter_states & ((1U << e->old_state) | (1U << e->new_state))))
		return false;
	if (filter_ports & PORT_EITHER &&
	    !port_listed(e->sport, PORT_EITHER) && !port_listed(e->dport, PORT_EITHER))
		return false;
	if (filter_ports & PORT_LOCAL && !port_listed(e->sport, PORT_LOCAL))
		return false;
	if (filter_ports & PORT_REMOTE && !port_listed(e->dport, PORT_REMOTE))
		return false;
	if (filter_addrs &&
	    !addr_listed(e->family, e->saddr) && !addr_listed(e->family, e->daddr))
		return false;
	if (filter_pids) {
		if (!(e->flags & EVF_OWNER))
			return false;
		if (!bpf_map_lookup_elem(&filter_pid_map, &e->pid))
			return false;
	}
	if (filter_comm[0]) {
		if (!(e->flags & EVF_OWNER) || !comm_matches(e->comm))
			return false;
	}
	return true;
}

/*
 * Transitions that only a system call on the socket makes, so that the current
 * task is the one that owns the socket. Everything else may run in softirq on
 * behalf of the peer, where the current task is whoever was on the CPU.
 */
static __always_inline __u8 owner_call(int oldstate, int newstate)
{
	switch (newstate) {
	case TCP_SYN_SENT:
		return oldstate == TCP_CLOSE ? OWNER_CONNECT : OWNER_NONE;
	case TCP_LISTEN:
		return OWNER_LISTEN;
	case TCP_FIN_WAIT1:	/* tcp_close_state(), from close() or shutdown() only */
	case TCP_LAST_ACK:
		return OWNER_CLOSE;
	case TCP_CLOSE:
		return oldstate == TCP_LISTEN ? OWNER_CLOSE : OWNER_NONE;
	}
	return OWNER_NONE;
}

static __always_inline void set_owner(struct sk_info *info, __u8 src)
{
	__u64 id = bpf_get_current_pid_tgid();

	info->pid = id >> 32;
	info->tid = (__u32)id;
	info->owner_src = src;
	bpf_get_current_comm(info->comm, sizeof(info->comm));
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, const struct sock *sk, int oldstate, int newstate)
{
	struct sk_info *info;
	struct event *e;
	__u64 now, cookie;
	__u8 src;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (oldstate == newstate) {
		/* Not a state change: close() after shutdown() sets FIN_WAIT1 again.
		 * Note who closed, keep the time the state began. */
		src = owner_call(oldstate, newstate);
		info = bpf_sk_storage_get(&sk_infos, (void *)sk, 0, 0);
		if (info && src != OWNER_NONE)
			set_owner(info, src);
		return 0;
	}
	stat_inc(STAT_SEEN);

	now = bpf_ktime_get_boot_ns();
	cookie = bpf_get_socket_cookie((void *)sk);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	/* Socket storage is updated even when the event is lost or filtered,
	 * so that the next event of this socket still has its duration. */
	info = bpf_sk_storage_get(&sk_infos, (void *)sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!info)
		stat_inc(STAT_NOSTORAGE);

	if (!e) {
		stat_inc(STAT_LOST);
	} else {
		e->type = EVENT_STATE;
		e->ts_ns = now;
		e->cookie = cookie;
		e->old_state = oldstate;
		e->new_state = newstate;
		e->flags = 0;
		e->_pad = 0;
		e->duration_ns = 0;
		e->sk_err = newstate == TCP_CLOSE ? sk->sk_err : 0;
		e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		e->cpu_pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(e->cpu_comm, sizeof(e->cpu_comm));
		read_endpoints(sk, e);
	}

	if (info) {
		if (info->cookie != cookie) {
			/* First sight of this socket. A cookie that is set but not ours
			 * means the entry was cloned from the listener at accept time. */
			if (info->cookie && oldstate == TCP_LISTEN && info->owner_src != OWNER_NONE)
				info->owner_src = OWNER_LISTENER;
			else
				info->owner_src = OWNER_NONE;
			info->cookie = cookie;
			info->state_ts = 0;
		} else if (e && info->state_ts && info->state == oldstate) {
			e->duration_ns = now - info->state_ts;
			e->flags |= EVF_DURATION;
		}
		src = owner_call(oldstate, newstate);
		if (src != OWNER_NONE)
			set_owner(info, src);
		info->state = newstate;
		info->state_ts = now;
	}

	if (!e)
		return 0;
	if (info && info->owner_src != OWNER_NONE) {
		e->flags |= EVF_OWNER;
		e->pid = info->pid;
		e->tid = info->tid;
		e->owner_src = info->owner_src;
		__builtin_memcpy(e->comm, info->comm, sizeof(e->comm));
	} else {
		e->pid = 0;
		e->tid = 0;
		e->owner_src = OWNER_NONE;
		__builtin_memset(e->comm, 0, sizeof(e->comm));
	}

	if (!wanted(e)) {
		stat_inc(STAT_FILTERED);
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return 0;
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/*
 * The first task to read or write a socket whose owner is unknown or only
 * inherited from its listener becomes its owner: for an accepted socket, that
 * is the process that accepted it. Runs on every send and receive in the
 * system, so it leaves as early as it can.
 */
static __always_inline void note_io(struct sock *sk)
{
	struct sk_info *info;

	if (!sk || sk->sk_protocol != IPPROTO_TCP)
		return;
	info = bpf_sk_storage_get(&sk_infos, sk, 0, 0);
	if (info) {
		if (info->owner_src > OWNER_LISTENER)
			return;
	} else {
		/* A socket older than the tracer: learn its owner now, and that its
		 * current state began at an unknown time. */
		info = bpf_sk_storage_get(&sk_infos, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!info)
			return;
		info->cookie = bpf_get_socket_cookie(sk);
		info->state = sk->__sk_common.skc_state;
		info->state_ts = 0;
	}
	set_owner(info, OWNER_IO);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(handle_send, struct sock *sk, int ret, int flags)
{
	note_io(sk);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(handle_recv, struct sock *sk, int ret, int flags)
{
	note_io(sk);
	return 0;
}
