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

/* Set from user space before loading (tracer.Config). Zero means "no filter". */
volatile const __u16 filter_family;	/* AF_INET or AF_INET6 */
volatile const __u32 filter_netns;	/* network namespace inode */
volatile const __u32 filter_states;	/* bit (1 << state); matches old or new state */
volatile const __u8 filter_ports;	/* PORT_* bits in use in filter_port_map */
volatile const bool filter_addrs;	/* filter_addr_map in use */
volatile const bool filter_pids;	/* filter_pid_map in use */
volatile const char filter_comm[TASK_COMM_LEN];	/* owner comm, exact */

/* Kernel addresses from /proc/kallsyms; 0 disables what depends on them. */
volatile const __u64 tw_timer_fn;	/* tw_timer_handler */
volatile const __u64 ka_timer_fn;	/* tcp_keepalive_timer */
volatile const __u32 hz = 250;		/* CONFIG_HZ, to turn jiffies into time */
/* Wake the reader only when this much is waiting (0: at every event); it
 * also reads every 100 ms. Saves a wakeup per event under load. */
volatile const __u64 wakeup_bytes;

/*
 * What the running kernel lets tracing programs do, probed by user space
 * before loading (tracer/kernel.go). Code behind a false flag is dead: the
 * verifier never visits it, so helpers the kernel lacks may appear there.
 */
volatile const bool have_sk_storage = true;	/* bpf_sk_storage_get: Linux 5.11 */
volatile const bool have_cookie = true;		/* bpf_get_socket_cookie: Linux 5.12 */

#define TIMEWAIT_LEN_NS	(60ULL * 1000000000ULL)	/* TCP_TIMEWAIT_LEN, fixed in the kernel */

/*
 * Event stream to user space. Sized by user space (--ringbuf-size). Entries are
 * reserved by reserve_event() and consumed by tracer.(*Tracer).Run.
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
 * Per-socket state. Created on a socket's first state change, read/write or
 * reset seen by the tracer, or by the start-up walk; freed by the kernel with
 * the socket. BPF_F_CLONE copies a listener's entry into each socket accepted
 * from it, which is how an accepted socket learns its listener's owner before
 * anyone calls accept().
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct sk_info);
} sk_infos SEC(".maps");

/*
 * Per-socket state where tracing programs cannot use socket storage (before
 * Linux 5.11): keyed by the socket's address, which the kernel reuses quickly,
 * so an entry only counts for the socket it was written for (sk_info_get).
 * Entries are added like socket storage and age out of the LRU (a closed
 * socket's entry is kept for the RST that may follow its CLOSE). Sized by user
 * space; one entry when socket storage is used.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct sk_info);
} sk_info_map SEC(".maps");

/*
 * Per CPU: the timewait socket armed last, when it had no cookie to find it
 * by. tcp_time_wait() arms its timer and closes the full socket right after,
 * on the same CPU; the full socket's CLOSE then finds its timewait socket here.
 */
struct tw_last {
	__u64 key;
	__u16 sport;
	__u16 dport;
	__u32 netns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_last);
} tw_lasts SEC(".maps");

/* Per CPU: the next connection id made here when the kernel has no cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} next_ids SEC(".maps");

/*
 * Connections living in timewait sockets, keyed by cookie (or, for a socket
 * whose cookie was never generated, by the timewait socket's address). Added
 * when a timewait timer is first armed (or by the start-up walk), deleted when
 * it fires or is cancelled for good. LRU: a host with more timewait sockets
 * than entries loses the oldest, counted in STAT_TW_UNTRACKED when they end.
 * Sized by user space.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tw_info);
} tw_infos SEC(".maps");

/*
 * Timewait sockets still in FIN_WAIT2, keyed as in tw_infos, valued by the
 * timewait socket's address. The peer's FIN turns one TIME_WAIT; when the new
 * expiry stays in the same timer-wheel bucket the kernel only rewrites
 * timer->expires, with no tracepoint. iter_fin_wait2 walks this map (user
 * space runs it every 100 ms) to find those. Added when a timewait socket is
 * followed in FIN_WAIT2 (first arm, start-up walk), deleted when it is seen in
 * TIME_WAIT or ends, or found gone. LRU, sized as tw_infos.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} tw_fin_wait2 SEC(".maps");

/*
 * Keepalive state between timer fires, keyed by cookie: probes outstanding
 * after the last fire, to tell when the peer answered. Written at each fire's
 * end, deleted when the connection dies of it. LRU, sized by user space.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} ka_probes SEC(".maps");

/*
 * From a keepalive timer's entry to its exit on the same CPU (timer callbacks
 * do not migrate): the socket, and its probes and state before the callback.
 */
struct ka_fire {
	__u64 timer;
	__u8 probes_out;
	__u8 state;
	__u8 owner_src;		/* the owner, noted by the CLOSE a keepalive kill makes */
	__u8 _pad[5];
	__u32 pid;
	__u32 tid;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ka_fire);
} ka_fires SEC(".maps");

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

/*
 * Family, addresses and ports of a full or timewait socket (both start with a
 * sock_common); v4-mapped IPv6 is reported as IPv4. Fields are 16 bytes so
 * that struct event and struct iter_rec share this. READ is a direct load for
 * a trusted BTF pointer (the state tracepoint's sk: a plain load) or
 * BPF_CORE_READ for one computed from a timer (a probe read).
 */
#define DIRECT_READ(p, field) ((p)->field)
#define READ_ENDPOINTS(skc, family, sport, dport, saddr, daddr, READ)				\
	do {											\
		*(family) = READ(skc, skc_family);						\
		*(sport) = READ(skc, skc_num);							\
		*(dport) = bpf_ntohs(READ(skc, skc_dport));					\
		__builtin_memset(saddr, 0, 16);							\
		__builtin_memset(daddr, 0, 16);							\
		if (*(family) == AF_INET) {							\
			*(__u32 *)(saddr) = READ(skc, skc_rcv_saddr);				\
			*(__u32 *)(daddr) = READ(skc, skc_daddr);				\
		} else {									\
			__builtin_memcpy(saddr, &READ(skc, skc_v6_rcv_saddr), 16);		\
			__builtin_memcpy(daddr, &READ(skc, skc_v6_daddr), 16);			\
			unmap_v4(family, saddr, daddr);						\
		}										\
	} while (0)

static __always_inline void unmap_v4(__u16 *family, __u8 *saddr, __u8 *daddr)
{
	if (is_v4mapped(daddr) && (is_v4mapped(saddr) || is_any6(saddr))) {
		__u32 s = is_v4mapped(saddr) ? ((__u32 *)saddr)[3] : 0;
		__u32 d = ((__u32 *)daddr)[3];

		__builtin_memset(saddr, 0, 16);
		__builtin_memset(daddr, 0, 16);
		*(__u32 *)saddr = s;
		*(__u32 *)daddr = d;
		*family = AF_INET;
	}
}

/* For sockets reached through a timer: probe reads. */
static __always_inline void read_endpoints(const struct sock_common *skc, __u16 *family,
					   __u16 *sport, __u16 *dport, __u8 *saddr, __u8 *daddr)
{
	*family = BPF_CORE_READ(skc, skc_family);
	*sport = BPF_CORE_READ(skc, skc_num);
	*dport = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	__builtin_memset(saddr, 0, 16);
	__builtin_memset(daddr, 0, 16);
	if (*family == AF_INET) {
		*(__u32 *)saddr = BPF_CORE_READ(skc, skc_rcv_saddr);
		*(__u32 *)daddr = BPF_CORE_READ(skc, skc_daddr);
		return;
	}
	BPF_CORE_READ_INTO((struct in6_addr *)saddr, skc, skc_v6_rcv_saddr);
	BPF_CORE_READ_INTO((struct in6_addr *)daddr, skc, skc_v6_daddr);
	unmap_v4(family, saddr, daddr);
}

static __always_inline __u32 netns_of(const struct sock_common *skc)
{
	return BPF_CORE_READ(skc, skc_net.net, ns.inum);
}

static __always_inline bool addr_listed(__u16 family, const __u8 *addr)
{
	struct addr_key key = {};

	key.prefixlen = 128;
	if (family == AF_INET) {
		((__u32 *)key.addr)[2] = bpf_htonl(0x0000ffff);
		((__u32 *)key.addr)[3] = *(const __u32 *)addr;
	} else {
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

/* The endpoint filters: those that hold for a connection's whole life. */
static __always_inline bool endpoints_wanted(__u16 family, __u32 netns, __u16 sport, __u16 dport,
					     const __u8 *saddr, const __u8 *daddr)
{
	if (filter_family && family != filter_family)
		return false;
	if (filter_netns && netns != filter_netns)
		return false;
	if (filter_ports & PORT_EITHER &&
	    !port_listed(sport, PORT_EITHER) && !port_listed(dport, PORT_EITHER))
		return false;
	if (filter_ports & PORT_LOCAL && !port_listed(sport, PORT_LOCAL))
		return false;
	if (filter_ports & PORT_REMOTE && !port_listed(dport, PORT_REMOTE))
		return false;
	if (filter_addrs && !addr_listed(family, saddr) && !addr_listed(family, daddr))
		return false;
	return true;
}

/*
 * The filters of tracer.Filter that can run here; user space applies them all
 * again. An event whose owner is unknown passes the owner filters: user space
 * may still learn the owner (start-up walk, timewait join) and decide.
 */
static __always_inline bool wanted(const struct event *e)
{
	if (!endpoints_wanted(e->family, e->netns, e->sport, e->dport, e->saddr, e->daddr))
		return false;
	if (filter_states &&
	    !(filter_states & ((1U << e->old_state) | (1U << e->new_state))))
		return false;
	if (!(e->flags & EVF_OWNER))
		return true;
	if (filter_pids && !bpf_map_lookup_elem(&filter_pid_map, &e->pid))
		return false;
	if (filter_comm[0] && !comm_matches(e->comm))
		return false;
	return true;
}

/* Starts an event with the fields every type shares. */
static __always_inline void event_init(struct event *e, __u8 type, __u64 now, __u64 cookie)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->type = type;
	e->ts_ns = now;
	e->cookie = cookie;
	e->cpu_pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->cpu_comm, sizeof(e->cpu_comm));
}

/*
 * Sends e to user space if the filters want it, counting it either way. The
 * event is built on the stack and copied (no ring buffer reservation to hold
 * and release on every path, which older verifiers cannot always follow, and
 * none at all for filtered events).
 */
static __always_inline void emit_wake(struct event *e, bool wake)
{
	__u64 flags = 0;

	stat_inc(STAT_SEEN);
	if (!wanted(e)) {
		stat_inc(STAT_FILTERED);
		return;
	}
	if (wake)
		flags = BPF_RB_FORCE_WAKEUP;
	else if (wakeup_bytes)
		flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, e, sizeof(*e), flags))
		stat_inc(STAT_LOST);
}

/* Sends e, waking the reader once enough is waiting (it also reads every 100 ms). */
static __always_inline void emit(struct event *e)
{
	emit_wake(e, false);
}

static __always_inline void event_owner(struct event *e, __u8 src, __u32 pid, __u32 tid, const char *comm)
{
	if (src == OWNER_NONE)
		return;
	e->flags |= EVF_OWNER;
	e->owner_src = src;
	e->pid = pid;
	e->tid = tid;
	__builtin_memcpy(e->comm, comm, TASK_COMM_LEN);
}

/*
 * A connection id where the kernel has no cookie to give (tracing programs
 * may make cookies from Linux 5.12): the top bit set, so that it never meets
 * a kernel cookie (those count up from 1).
 */
static __always_inline __u64 new_id(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&next_ids, &zero);

	if (!n)
		return 0;
	*n += 1;
	return (1ULL << 63) | ((__u64)bpf_get_smp_processor_id() << 48) | (*n & 0xffffffffffffULL);
}

/*
 * The kernel's cookie of a full socket (a BTF pointer), made now if it had
 * none; before Linux 5.12 only read: 0 unless something made it (ss, SO_COOKIE).
 */
static __always_inline __u64 kernel_cookie(const struct sock *sk)
{
	if (have_cookie)
		return bpf_get_socket_cookie((void *)sk);
	return BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
}

/*
 * The tracer's state of a full socket (a BTF pointer), created with create:
 * socket storage where tracing programs may use it, else an entry keyed by the
 * socket's address, which may be left from an earlier socket (see is_new).
 */
static __always_inline struct sk_info *sk_info_get(const struct sock *sk, bool create)
{
	struct sk_info *info, fresh = {};
	__u64 key = (__u64)sk;

	if (have_sk_storage)
		return bpf_sk_storage_get(&sk_infos, (void *)sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	info = bpf_map_lookup_elem(&sk_info_map, &key);
	if (info || !create)
		return info;
	bpf_map_update_elem(&sk_info_map, &key, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&sk_info_map, &key);
}

/*
 * Whether info was written for another socket than the one now changing from
 * oldstate to newstate with this kernel cookie: then the socket is new to the
 * tracer. Socket storage is the socket's own, unless it was cloned from the
 * listener with the socket (a different cookie tells). An entry keyed by
 * address is another socket's when the cookies differ, and whenever a socket
 * starts (leaves CLOSE, or is born from a listener).
 */
static __always_inline bool is_new(const struct sk_info *info, __u64 cookie, int oldstate, int newstate)
{
	if (have_sk_storage && have_cookie)
		return info->cookie != cookie;
	return !info->cookie || (cookie && info->cookie != cookie) || oldstate == TCP_CLOSE ||
	       (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV);
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

/* Why a full socket is reaching CLOSE. */
static __always_inline __u8 close_reason(int oldstate, int sk_err, const struct sk_info *info)
{
	if (sk_err == ECONNREFUSED)
		return REASON_REFUSED;
	if (sk_err == ETIMEDOUT)
		return REASON_TIMEOUT;
	if (info && info->flags & INFO_RST_RECEIVED)
		return REASON_RST_RECEIVED;
	if (info && info->flags & INFO_RST_SENT)
		return REASON_RST_SENT;
	if (sk_err)
		return REASON_ERROR;
	switch (oldstate) {
	case TCP_LAST_ACK:
	case TCP_CLOSING:
	case TCP_FIN_WAIT2:
	case TCP_TIME_WAIT:
		return REASON_FIN;
	}
	/* LISTEN, SYN_SENT, and closes that a RST reported later may still explain. */
	return REASON_CLOSED;
}

static __always_inline __u64 tw_key(__u64 cookie, const void *tw)
{
	return cookie ? cookie : (__u64)tw;
}

/*
 * The timewait socket that took over the connection of a full socket now
 * reaching CLOSE: by cookie, which it inherits when the full socket had one;
 * else the one armed last on this CPU, if its endpoints are the same.
 */
static __always_inline struct tw_info *tw_taking_over(__u64 cookie, const struct event *e)
{
	struct tw_info *tw = bpf_map_lookup_elem(&tw_infos, &cookie);
	struct tw_last *last;
	__u32 zero = 0;

	if (tw || have_cookie)
		return tw;
	last = bpf_map_lookup_elem(&tw_lasts, &zero);
	if (!last || !last->key || last->sport != e->sport || last->dport != e->dport || last->netns != e->netns)
		return NULL;
	tw = bpf_map_lookup_elem(&tw_infos, &last->key);
	last->key = 0;
	return tw;
}

/*
 * The full socket reaches CLOSE right after tcp_time_wait() handed the
 * connection to a timewait socket, whose timer_start came first. Then the
 * connection did not close: FIN_WAIT2 goes on in the timewait socket, or it
 * moved to TIME_WAIT. Returns true when the event must not be reported as a
 * close (else e may have been rewritten into the move to TIME_WAIT).
 */
static __always_inline bool handover(struct event *e, __u64 now, __u64 cookie, int oldstate,
				     const struct sk_info *info)
{
	struct tw_info *tw = tw_taking_over(cookie, e);

	if (!tw || !(tw->flags & INFO_HANDOVER))
		return false;
	tw->flags &= ~INFO_HANDOVER;
	tw->cookie = cookie;
	if (info) {
		tw->owner_src = info->owner_src;
		tw->pid = info->pid;
		tw->tid = info->tid;
		__builtin_memcpy(tw->comm, info->comm, TASK_COMM_LEN);
		tw->flags |= info->flags & INFO_SINCE_START;
	}
	if (tw->state == oldstate) {
		/* Same state, new home: the state goes on, from when it began.
		 * Said apart from a close, so that a live view shows where the
		 * connection lives now. */
		tw->state_ts = info ? info->state_ts : 0;
		e->type = EVENT_TW_HANDOVER;
		e->new_state = tw->state;
		e->flags = (e->flags & ~(EVF_DURATION | EVF_DURATION_MIN)) | EVF_TIMEWAIT;
		e->duration_ns = 0;
		e->timer_expires = tw->expires;
		e->jiffies = bpf_jiffies64();
		if (info)
			event_owner(e, info->owner_src, info->pid, info->tid, info->comm);
		emit(e);
		return true;
	}
	e->new_state = tw->state;
	e->flags |= EVF_TIMEWAIT;
	e->timer_expires = tw->expires;
	e->jiffies = bpf_jiffies64();
	tw->state_ts = now;
	return false;
}

/*
 * A socket accepted from a listener is born in SYN_RECV (LISTEN -> SYN_RECV,
 * inet_csk_clone_lock). Its cookie is not its own yet: it still holds the
 * listener's on some kernels (6.1), and the kernel replaces it right after.
 * So the birth is noted and reported with the socket's next transition, under
 * its final cookie (child_report). Socket storage cloned from the listener
 * (BPF_F_CLONE) names the listener's process as the owner until an accepting
 * process reads or writes.
 */
static __always_inline void child_born(const struct sock *sk, __u64 now)
{
	struct sk_info *info = sk_info_get(sk, true);

	if (!info) {
		stat_inc(STAT_NOSTORAGE);
		return;
	}
	if (have_sk_storage && info->cookie && info->state == TCP_LISTEN && info->owner_src != OWNER_NONE)
		info->owner_src = OWNER_LISTENER;
	else
		info->owner_src = OWNER_NONE;
	info->cookie = 0;
	info->state = TCP_SYN_RECV;
	info->state_ts = now;
	info->flags = INFO_BORN;
}

/* Reports the birth noted by child_born, now that the socket has its cookie.
 * e holds the current transition, without owner yet: it is sent as the birth
 * first, and given back as it was. */
static __always_inline void child_report(struct event *e, struct sk_info *info, __u64 cookie)
{
	__u64 ts = e->ts_ns;
	__u8 old_state = e->old_state, new_state = e->new_state;

	if (!cookie)
		cookie = new_id();
	e->ts_ns = info->state_ts;
	e->cookie = cookie;
	e->old_state = TCP_LISTEN;
	e->new_state = TCP_SYN_RECV;
	event_owner(e, info->owner_src, info->pid, info->tid, info->comm);
	emit(e);
	e->ts_ns = ts;
	e->old_state = old_state;
	e->new_state = new_state;
	e->flags &= ~EVF_OWNER;
	e->owner_src = OWNER_NONE;
	e->pid = 0;
	e->tid = 0;
	__builtin_memset(e->comm, 0, sizeof(e->comm));
	info->cookie = cookie;
	info->flags &= ~INFO_BORN;
}

/*
 * A CLOSE inside this socket's keepalive timer (a keepalive kill): note the
 * owner for the timeout event that follows at the timer's exit, which reaches
 * the socket only through its timer and cannot read its storage.
 */
static __always_inline void ka_note_owner(const struct sock *sk, const struct sk_info *info)
{
	__u32 zero = 0;
	struct ka_fire *f = bpf_map_lookup_elem(&ka_fires, &zero);

	if (!f || !f->timer || f->timer != (__u64)&sk->sk_timer)
		return;
	f->owner_src = info->owner_src;
	f->pid = info->pid;
	f->tid = info->tid;
	__builtin_memcpy(f->comm, info->comm, TASK_COMM_LEN);
}

/*
 * Per CPU: how deep handle_set_state is running here (more than once only
 * where the kernel lets a tracing program interrupt itself, before its
 * recursion guard), and whether a run nested in another one just ended.
 */
struct set_state_nest {
	__u32 depth;
	__u32 nested_ran;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct set_state_nest);
} set_state_nests SEC(".maps");

static __always_inline void set_state(const struct sock *sk, int oldstate, int newstate)
{
	const struct sock_common *skc = &sk->__sk_common;
	struct sk_info *info;
	struct event e;
	__u64 now, cookie;
	__u8 src;

	if (sk->sk_protocol != IPPROTO_TCP)
		return;
	if (oldstate == newstate) {
		/* Not a state change: close() after shutdown() sets FIN_WAIT1 again.
		 * Note who closed, keep the time the state began. */
		src = owner_call(oldstate, newstate);
		info = sk_info_get(sk, false);
		if (info && src != OWNER_NONE)
			set_owner(info, src);
		return;
	}

	now = bpf_ktime_get_boot_ns();
	if (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV) {
		child_born(sk, now);
		return;
	}
	cookie = kernel_cookie(sk);
	event_init(&e, EVENT_STATE, now, cookie);
	e.old_state = oldstate;
	e.new_state = newstate;
	e.netns = skc->skc_net.net->ns.inum;
	READ_ENDPOINTS(skc, &e.family, &e.sport, &e.dport, e.saddr, e.daddr, DIRECT_READ);
	/* On the way to CLOSE the kernel releases the port (inet_put_port
	 * zeroes inet_num) before the tracepoint fires; inet_sport keeps it. */
	if (!e.sport)
		e.sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));

	/* The socket's state is updated even when the event is filtered or
	 * lost, so that its next event still has its duration. */
	info = sk_info_get(sk, true);
	if (!info)
		stat_inc(STAT_NOSTORAGE);
	if (info && info->flags & INFO_BORN)
		child_report(&e, info, cookie);
	if (info) {
		if (is_new(info, cookie, oldstate, newstate)) {
			/* A cookie that is set but not ours means the entry was
			 * cloned from the listener at accept time. */
			if (have_sk_storage && info->cookie && oldstate == TCP_LISTEN && info->owner_src != OWNER_NONE)
				info->owner_src = OWNER_LISTENER;
			else
				info->owner_src = OWNER_NONE;
			info->cookie = cookie ? cookie : new_id();
			info->state_ts = 0;
			info->flags = 0;
		} else if (info->state_ts && info->state == oldstate) {
			e.duration_ns = now - info->state_ts;
			e.flags |= EVF_DURATION;
			if (info->flags & INFO_SINCE_START)
				e.flags |= EVF_DURATION_MIN;
		}
		cookie = info->cookie;
		e.cookie = cookie;
		src = owner_call(oldstate, newstate);
		if (src != OWNER_NONE)
			set_owner(info, src);
	}

	if (newstate == TCP_CLOSE && handover(&e, now, cookie, oldstate, info))
		return;
	if (newstate == TCP_CLOSE && !(e.flags & EVF_TIMEWAIT)) {
		e.sk_err = sk->sk_err;
		e.reason = close_reason(oldstate, e.sk_err, info);
		if (e.reason == REASON_RST_SENT && info)
			e.rst_reason = info->rst_reason;
	}
	if (info) {
		info->state = newstate;
		info->state_ts = now;
		info->flags &= ~INFO_SINCE_START;
		event_owner(&e, info->owner_src, info->pid, info->tid, info->comm);
		if (newstate == TCP_CLOSE)
			ka_note_owner(sk, info);
	}
	emit(&e);
}

/*
 * Every TCP state change. A softirq's change that interrupts this program on
 * its CPU (a packet arriving while a system call's change is traced) is
 * skipped by the kernel's recursion guard (Linux 6.x; counted in the
 * program's recursion misses): catch_set_state, attached after this one,
 * takes it over.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, const struct sock *sk, int oldstate, int newstate)
{
	struct set_state_nest *nest;
	__u32 zero = 0;

	nest = bpf_map_lookup_elem(&set_state_nests, &zero);
	if (nest)
		nest->depth++;
	set_state(sk, oldstate, newstate);
	if (nest && nest->depth) {
		nest->depth--;
		/* Ran inside another run (no recursion guard): this change
		 * is done, catch_set_state must leave it. */
		if (nest->depth)
			nest->nested_ran = 1;
	}
	return 0;
}

/*
 * Runs after handle_set_state on every state change; works only when the
 * change interrupted a run of handle_set_state on this CPU and the kernel
 * skipped handle_set_state for it. Where the kernel has no recursion guard,
 * handle_set_state ran nested and said so: nothing to do.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(catch_set_state, const struct sock *sk, int oldstate, int newstate)
{
	struct set_state_nest *nest;
	__u32 zero = 0;

	nest = bpf_map_lookup_elem(&set_state_nests, &zero);
	if (!nest || !nest->depth)
		return 0;
	if (nest->nested_ran) {
		nest->nested_ran = 0;
		return 0;
	}
	stat_inc(STAT_CAUGHT);
	set_state(sk, oldstate, newstate);
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
	info = sk_info_get(sk, false);
	if (info) {
		if (info->owner_src > OWNER_LISTENER)
			return;
	} else {
		/* A socket older than the tracer: learn its owner now, and that its
		 * current state began at an unknown time. */
		info = sk_info_get(sk, true);
		if (!info)
			return;
		info->cookie = kernel_cookie(sk);
		if (!info->cookie)
			info->cookie = new_id();
		info->state = sk->__sk_common.skc_state;
		info->state_ts = 0;
	}
	set_owner(info, OWNER_IO);
}

/* sock_send_length and sock_recv_length: Linux 6.3. */
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

/* A RST arrived; the socket reaches CLOSE next (tcp_reset -> tcp_done). */
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(handle_rst_in, struct sock *sk)
{
	struct sk_info *info = sk_info_get(sk, false);

	if (info)
		info->flags |= INFO_RST_RECEIVED;
	return 0;
}

/*
 * This socket sends a RST. Before CLOSE (keepalive timeout) the coming CLOSE
 * reads it from the storage; after CLOSE (close() with unread data, linger 0)
 * an EVENT_RESET follows the CLOSE event and user space joins the two.
 */
static __always_inline void rst_out(const struct sock *sk, __u16 reason)
{
	struct sk_info *info;
	struct event e;

	if (!sk || sk->sk_protocol != IPPROTO_TCP)
		return;
	info = sk_info_get(sk, false);
	if (!info)
		return;
	info->flags |= INFO_RST_SENT;
	info->rst_reason = reason;
	if (sk->__sk_common.skc_state != TCP_CLOSE)
		return;
	event_init(&e, EVENT_RESET, bpf_ktime_get_boot_ns(), info->cookie);
	e.old_state = TCP_CLOSE;
	e.new_state = TCP_CLOSE;
	e.rst_reason = reason;
	e.reason = REASON_RST_SENT;
	e.netns = netns_of(&sk->__sk_common);
	read_endpoints(&sk->__sk_common, &e.family, &e.sport, &e.dport, e.saddr, e.daddr);
	if (!e.sport)
		e.sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	event_owner(&e, info->owner_src, info->pid, info->tid, info->comm);
	emit(&e);
}

/* tcp_send_reset with the reset reason (enum sk_rst_reason): Linux 6.10. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(handle_rst_out, const struct sock *sk, const struct sk_buff *skb, int reason)
{
	rst_out(sk, reason);
	return 0;
}

/* tcp_send_reset before Linux 6.10: no reason. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(handle_rst_out_old, const struct sock *sk, const struct sk_buff *skb)
{
	rst_out(sk, 0);
	return 0;
}

/* The timewait socket behind a timer that runs tw_timer_handler. */
static __always_inline struct inet_timewait_sock *tw_of(struct timer_list *t)
{
	return (void *)t - bpf_core_field_offset(struct inet_timewait_sock, tw_timer);
}

/* Fills e from a timewait socket read through its address (not a BTF pointer). */
static __always_inline void tw_event(struct event *e, struct inet_timewait_sock *tw,
				     const struct tw_info *info, struct timer_list *t)
{
	e->flags |= EVF_TIMEWAIT;
	e->netns = netns_of(&tw->__tw_common);
	read_endpoints(&tw->__tw_common, &e->family, &e->sport, &e->dport, e->saddr, e->daddr);
	e->timer_expires = BPF_CORE_READ(t, expires);
	e->jiffies = bpf_jiffies64();
	if (info)
		event_owner(e, info->owner_src, info->pid, info->tid, info->comm);
}

/* The id of the connection a timewait socket carries. */
static __always_inline __u64 tw_cookie(const struct tw_info *info, __u64 key)
{
	return info && info->cookie ? info->cookie : key;
}

/* Whether the endpoint filters want the connection of a timewait socket. */
static __always_inline bool tw_wanted(struct inet_timewait_sock *tw)
{
	__u8 saddr[16], daddr[16];
	__u16 family, sport, dport;

	if (!filter_family && !filter_netns && !filter_ports && !filter_addrs)
		return true;
	read_endpoints(&tw->__tw_common, &family, &sport, &dport, saddr, daddr);
	return endpoints_wanted(family, netns_of(&tw->__tw_common), sport, dport, saddr, daddr);
}

static __always_inline void tw_duration(struct event *e, const struct tw_info *info, __u64 now)
{
	if (!info || !info->state_ts)
		return;
	e->duration_ns = now - info->state_ts;
	e->flags |= EVF_DURATION;
	if (info->flags & INFO_SINCE_START)
		e->flags |= EVF_DURATION_MIN;
}

/*
 * A timewait socket in FIN_WAIT2 turns TIME_WAIT when the peer's FIN arrives,
 * and its timer is set to 60 s from then. When the new expiry falls in the same
 * timer-wheel bucket the kernel only rewrites timer->expires: no tracepoint
 * fires. So the change is found at the timer's next event (re-arm, kill or
 * expiry) and dated from the expiry: the event carries that time, in the past.
 * e is scratch space for the event.
 */
static __always_inline void tw_sync(struct event *e, struct tw_info *info, struct inet_timewait_sock *tw,
				    struct timer_list *t, __u64 now, __u64 key, bool wake)
{
	__u8 substate = BPF_CORE_READ(tw, tw_substate);
	__u64 entered, expires;
	__s64 left_ns;

	if (substate == info->state)
		return;
	/* An expiry unchanged since last seen: the timer is being re-armed for
	 * the change right now (timer_cancel fires before the new expiry is
	 * set). A changed one was rewritten in place: date the change from it. */
	entered = now;
	expires = BPF_CORE_READ(t, expires);
	if (substate == TCP_TIME_WAIT && hz && expires != info->expires) {
		/* Negative when the timer fires late (it is firing now). */
		left_ns = (__s64)(expires - bpf_jiffies64()) * (1000000000LL / hz);
		if (left_ns > -(__s64)TIMEWAIT_LEN_NS && left_ns <= (__s64)TIMEWAIT_LEN_NS)
			entered = now - (TIMEWAIT_LEN_NS - left_ns);
		if (info->state_ts && entered < info->state_ts)
			entered = info->state_ts;
	}
	event_init(e, EVENT_STATE, entered, tw_cookie(info, key));
	e->old_state = info->state;
	e->new_state = substate;
	tw_duration(e, info, entered);
	tw_event(e, tw, info, t);
	/* TIME_WAIT ends 60 s after it began, whatever the timer says now
	 * (mid re-arm it still holds the FIN_WAIT2 expiry). */
	if (substate == TCP_TIME_WAIT && hz)
		e->timer_expires = e->jiffies + (TIMEWAIT_LEN_NS - (now - entered)) * hz / 1000000000ULL;
	emit_wake(e, wake);
	info->state = substate;
	info->state_ts = entered;
	info->flags &= ~INFO_SINCE_START;
	bpf_map_delete_elem(&tw_fin_wait2, &key);
}

#define SOCK_KEEPOPEN	3

/* The socket behind a timer that runs tcp_keepalive_timer (sk->sk_timer). */
static __always_inline struct sock *ka_sock_of(struct timer_list *t)
{
	return (void *)t - bpf_core_field_offset(struct sock, sk_timer);
}

/*
 * The id of a socket reached through its keepalive timer (not a BTF pointer):
 * its cookie, which its first state change made (Linux 5.12+); before, the
 * tracer's own id of it, else its address.
 */
static __always_inline __u64 ka_cookie(struct sock *sk)
{
	__u64 cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	__u64 key = (__u64)sk;
	struct sk_info *info;

	if (cookie)
		return cookie;
	if (!have_sk_storage) {
		info = bpf_map_lookup_elem(&sk_info_map, &key);
		if (info && info->cookie)
			return info->cookie;
	}
	return key;
}

/*
 * Fills e with the socket's endpoints and its effective keepalive settings:
 * the socket's own (TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, 0 when unset) else its
 * namespace's sysctls, as the kernel's keepalive_*_when() pick them.
 */
static __always_inline void ka_event(struct event *e, struct sock *sk, struct timer_list *t, __u8 kind,
				     __u64 now, __u64 cookie)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct net *net = BPF_CORE_READ(sk, __sk_common.skc_net.net);
	__u32 v;
	__u8 c;

	event_init(e, EVENT_KEEPALIVE, now, cookie);
	e->ka_event = kind;
	e->old_state = BPF_CORE_READ(sk, __sk_common.skc_state);
	e->new_state = e->old_state;
	e->netns = BPF_CORE_READ(net, ns.inum);
	read_endpoints(&sk->__sk_common, &e->family, &e->sport, &e->dport, e->saddr, e->daddr);
	/* A keepalive kill has closed the socket: its port is released
	 * (inet_num zeroed), inet_sport keeps it. */
	if (!e->sport)
		e->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	e->timer_expires = BPF_CORE_READ(t, expires);
	e->jiffies = bpf_jiffies64();
	e->ka_probe = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_probes_out);
	e->ka_user_timeout = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_user_timeout);
	if (BPF_CORE_READ(sk, __sk_common.skc_flags) & (1UL << SOCK_KEEPOPEN))
		e->ka_src |= KA_ON;
	v = BPF_CORE_READ(tp, keepalive_time);
	if (v)
		e->ka_src |= KA_IDLE_SOCKET;
	else
		v = BPF_CORE_READ(net, ipv4.sysctl_tcp_keepalive_time);
	e->ka_idle = v;
	v = BPF_CORE_READ(tp, keepalive_intvl);
	if (v)
		e->ka_src |= KA_INTVL_SOCKET;
	else
		v = BPF_CORE_READ(net, ipv4.sysctl_tcp_keepalive_intvl);
	e->ka_intvl = v;
	c = BPF_CORE_READ(tp, keepalive_probes);
	if (c)
		e->ka_src |= KA_COUNT_SOCKET;
	else
		c = BPF_CORE_READ(net, ipv4.sysctl_tcp_keepalive_probes);
	e->ka_count = c;
}

static __always_inline void ka_emit(struct event *e, struct sock *sk, struct timer_list *t, __u8 kind,
				    __u64 now, __u64 cookie)
{
	ka_event(e, sk, t, kind, now, cookie);
	emit(e);
}

/* The keepalive timer armed: at connect/accept with SO_KEEPALIVE, by
 * setsockopt, and after each fire for the rest of the idle time or a probe
 * interval. */
static __always_inline void ka_armed(struct event *e, struct timer_list *t)
{
	struct sock *sk = ka_sock_of(t);

	ka_event(e, sk, t, KA_ARMED, bpf_ktime_get_boot_ns(), ka_cookie(sk));
	/* setsockopt(SO_KEEPALIVE) arms the timer before it sets the flag;
	 * outside FIN_WAIT2 the timer is only armed for keepalive. */
	if (e->old_state != TCP_FIN_WAIT2)
		e->ka_src |= KA_ON;
	emit(e);
}

static __always_inline void ka_fire_entry(struct event *e, struct timer_list *t)
{
	struct sock *sk = ka_sock_of(t);
	__u64 now = bpf_ktime_get_boot_ns(), cookie = ka_cookie(sk);
	struct ka_fire *f;
	__u32 zero = 0;
	__u8 *last;

	f = bpf_map_lookup_elem(&ka_fires, &zero);
	if (!f)
		return;
	f->timer = (__u64)t;
	f->owner_src = OWNER_NONE;
	f->probes_out = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_probes_out);
	f->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	/* Probes outstanding at the last fire and none now: an ACK came. */
	last = bpf_map_lookup_elem(&ka_probes, &cookie);
	if (last && *last && !f->probes_out)
		ka_emit(e, sk, t, KA_ANSWERED, now, cookie);
	ka_emit(e, sk, t, f->state == TCP_FIN_WAIT2 ? KA_FIN_WAIT2 : KA_FIRED, now, cookie);
}

/* The kernel's reset reason for a keepalive kill, where it has reasons (6.10). */
static __always_inline __u16 ka_rst_reason(void)
{
	if (bpf_core_enum_value_exists(enum sk_rst_reason, SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT))
		return bpf_core_enum_value(enum sk_rst_reason, SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT);
	return 0;
}

static __always_inline void ka_fire_exit(struct event *e, struct timer_list *t)
{
	struct sock *sk = ka_sock_of(t);
	__u64 now = bpf_ktime_get_boot_ns(), cookie = ka_cookie(sk);
	__u8 probes, state;
	struct ka_fire *f;
	__u32 zero = 0;

	f = bpf_map_lookup_elem(&ka_fires, &zero);
	if (!f || f->timer != (__u64)t)
		return;
	f->timer = 0;
	probes = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_probes_out);
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (state == TCP_CLOSE && f->state != TCP_CLOSE) {
		ka_event(e, sk, t, KA_TIMEOUT, now, cookie);
		event_owner(e, f->owner_src, f->pid, f->tid, f->comm);
		e->sk_err = BPF_CORE_READ(sk, sk_err);
		e->reason = REASON_TIMEOUT;
		e->rst_reason = ka_rst_reason();
		emit(e);
		bpf_map_delete_elem(&ka_probes, &cookie);
		return;
	}
	if (probes > f->probes_out)
		ka_emit(e, sk, t, KA_PROBE, now, cookie);
	bpf_map_update_elem(&ka_probes, &cookie, &probes, BPF_ANY);
}

SEC("tp_btf/timer_expire_exit")
int BPF_PROG(handle_timer_exit, struct timer_list *t)
{
	struct event e;

	if (ka_timer_fn && (__u64)t->function == ka_timer_fn)
		ka_fire_exit(&e, t);
	return 0;
}

/* A timewait socket armed for the first time: start following it. */
static __always_inline void tw_first_arm(struct inet_timewait_sock *tw, struct timer_list *t, __u64 now,
					 __u64 cookie, __u64 key)
{
	struct tw_info fresh = {};
	struct tw_last *last;
	__u32 zero = 0;

	/* Follow only the connections the filters want: tw_infos is bounded,
	 * and a host's other timewait sockets must not evict the ones asked
	 * about. */
	if (!tw_wanted(tw))
		return;
	fresh.cookie = cookie;
	fresh.state = BPF_CORE_READ(tw, tw_substate);
	fresh.state_ts = now;
	fresh.expires = t->expires;
	fresh.flags = INFO_HANDOVER;
	bpf_map_update_elem(&tw_infos, &key, &fresh, BPF_ANY);
	if (fresh.state == TCP_FIN_WAIT2) {
		__u64 addr = (__u64)tw;

		bpf_map_update_elem(&tw_fin_wait2, &key, &addr, BPF_ANY);
	}
	if (cookie)
		return;
	/* No cookie to find it by: the full socket's CLOSE, next on this
	 * CPU, finds it here. */
	last = bpf_map_lookup_elem(&tw_lasts, &zero);
	if (!last)
		return;
	last->key = key;
	last->sport = BPF_CORE_READ(tw, __tw_common.skc_num);
	last->dport = bpf_ntohs(BPF_CORE_READ(tw, __tw_common.skc_dport));
	last->netns = netns_of(&tw->__tw_common);
}

/*
 * Every timer armed in the system comes through here: leave at once unless it
 * is a timewait or keepalive timer. A timewait timer is armed the first time
 * by tcp_time_wait() (before the full socket's CLOSE), and again when it moves
 * (TIME_WAIT restarts, or FIN_WAIT2 turned TIME_WAIT into another wheel bucket).
 */
SEC("tp_btf/timer_start")
int BPF_PROG(handle_timer_start, struct timer_list *t, unsigned long bucket_expiry)
{
	struct inet_timewait_sock *tw;
	struct tw_info *info;
	struct event e;
	__u64 now, cookie, key;
	__u8 state;

	if (ka_timer_fn && (__u64)t->function == ka_timer_fn) {
		ka_armed(&e, t);
		return 0;
	}
	if (!tw_timer_fn || (__u64)t->function != tw_timer_fn)
		return 0;
	tw = tw_of(t);
	now = bpf_ktime_get_boot_ns();
	cookie = BPF_CORE_READ(tw, __tw_common.skc_cookie.counter);
	key = tw_key(cookie, tw);

	info = bpf_map_lookup_elem(&tw_infos, &key);
	if (!info) {
		tw_first_arm(tw, t, now, cookie, key);
		return 0;
	}
	state = info->state;
	tw_sync(&e, info, tw, t, now, key, false);
	info->expires = t->expires;
	if (info->state != state)
		return 0;
	/* Re-armed in the same state: tells user space that a preceding
	 * EVENT_TW_CANCEL was not a kill. */
	event_init(&e, EVENT_TW_REARM, now, tw_cookie(info, key));
	e.old_state = state;
	e.new_state = state;
	tw_event(&e, tw, info, t);
	emit(&e);
	return 0;
}

/* A timewait timer fired: the connection is over. */
SEC("tp_btf/timer_expire_entry")
int BPF_PROG(handle_timer_expire, struct timer_list *t, unsigned long baseclk)
{
	struct inet_timewait_sock *tw;
	struct tw_info *info;
	struct event e;
	__u64 now, cookie, key;

	if (ka_timer_fn && (__u64)t->function == ka_timer_fn) {
		ka_fire_entry(&e, t);
		return 0;
	}
	if (!tw_timer_fn || (__u64)t->function != tw_timer_fn)
		return 0;
	tw = tw_of(t);
	now = bpf_ktime_get_boot_ns();
	cookie = BPF_CORE_READ(tw, __tw_common.skc_cookie.counter);
	key = tw_key(cookie, tw);
	info = bpf_map_lookup_elem(&tw_infos, &key);
	if (info)
		tw_sync(&e, info, tw, t, now, key, false);
	else
		stat_inc(STAT_TW_UNTRACKED);
	event_init(&e, EVENT_STATE, now, tw_cookie(info, key));
	e.old_state = info ? info->state : BPF_CORE_READ(tw, tw_substate);
	e.new_state = TCP_CLOSE;
	e.reason = e.old_state == TCP_FIN_WAIT2 ? REASON_FIN_TIMEOUT : REASON_TW_EXPIRED;
	tw_duration(&e, info, now);
	tw_event(&e, tw, info, t);
	emit(&e);
	if (info)
		bpf_map_delete_elem(&tw_infos, &key);
	bpf_map_delete_elem(&tw_fin_wait2, &key);
	return 0;
}

/*
 * A timewait timer removed. The kernel also reports this on the way to firing
 * (the timer is due then: timer_expire_entry follows) and when re-arming (a
 * timer_start of the same timer follows at once, on this CPU). Otherwise the
 * timewait socket was killed early: reused by a new connection, or reset.
 */
SEC("tp_btf/timer_cancel")
int BPF_PROG(handle_timer_cancel, struct timer_list *t)
{
	struct inet_timewait_sock *tw;
	struct tw_info *info;
	struct event e;
	__u64 now, cookie, key;

	if (!tw_timer_fn || (__u64)t->function != tw_timer_fn)
		return 0;
	if ((long)(bpf_jiffies64() - t->expires) >= 0)
		return 0;
	tw = tw_of(t);
	now = bpf_ktime_get_boot_ns();
	cookie = BPF_CORE_READ(tw, __tw_common.skc_cookie.counter);
	key = tw_key(cookie, tw);
	info = bpf_map_lookup_elem(&tw_infos, &key);
	if (info)
		tw_sync(&e, info, tw, t, now, key, false);
	event_init(&e, EVENT_TW_CANCEL, now, tw_cookie(info, key));
	e.old_state = info ? info->state : BPF_CORE_READ(tw, tw_substate);
	e.new_state = TCP_CLOSE;
	e.reason = REASON_TW_KILLED;
	tw_duration(&e, info, now);
	tw_event(&e, tw, info, t);
	emit(&e);
	/* Kept for a re-arm; a killed socket's entry ages out of the LRU. */
	return 0;
}

/*
 * Start-up walk of the TCP sockets of one network namespace (the one of the
 * task that opens the iterator): full, timewait and request sockets. Seeds
 * the socket and timewait storage so that the first event of a socket older
 * than the tracer carries a lower bound of its state's duration, and writes one
 * iter_rec per socket for user space, then a trailer.
 */
SEC("iter/tcp")
int iter_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct seq_file *seq = ctx->meta->seq;
	struct iter_rec r = {};

	r.jiffies = bpf_jiffies64();
	r.ts_ns = bpf_ktime_get_boot_ns();
	if (!skc) {
		r.end = 1;
		bpf_seq_write(seq, &r, sizeof(r));
		return 0;
	}
	r.state = skc->skc_state;
	r.netns = netns_of(skc);
	read_endpoints(skc, &r.family, &r.sport, &r.dport, r.saddr, r.daddr);
	if (have_cookie)
		r.cookie = bpf_get_socket_cookie(skc);
	else
		r.cookie = skc->skc_cookie.counter;

	if (r.state == TCP_TIME_WAIT) {
		/* Every TIME_WAIT socket in TCP's tables is a timewait socket,
		 * read here through its address. Not through
		 * bpf_skc_to_tcp_timewait_sock(): that helper knows only
		 * tcp_prot and tcpv6_prot, and the timewait sockets of
		 * connections accepted by an MPTCP listener (Go's listeners
		 * since Go 1.24, even when the client falls back to plain TCP)
		 * carry MPTCP's copies of them: it would skip those. */
		struct inet_timewait_sock *tw = (void *)skc;
		struct tw_info fresh = {};
		__u64 key;

		key = tw_key(r.cookie, tw);
		r.cookie = key;
		r.timewait = 1;
		r.state = BPF_CORE_READ(tw, tw_substate);
		r.timer_expires = BPF_CORE_READ(tw, tw_timer.expires);
		fresh.cookie = key;
		fresh.state = r.state;
		fresh.state_ts = r.ts_ns;
		fresh.expires = r.timer_expires;
		fresh.flags = INFO_SINCE_START;
		bpf_map_update_elem(&tw_infos, &key, &fresh, BPF_NOEXIST);
		if (r.state == TCP_FIN_WAIT2) {
			__u64 addr = (__u64)tw;

			bpf_map_update_elem(&tw_fin_wait2, &key, &addr, BPF_NOEXIST);
		}
	} else if (r.state != TCP_NEW_SYN_RECV) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
		struct sk_info *info;

		if (!tp)
			return 0;
		r.rcv_tstamp = tp->rcv_tstamp;
		r.lsndtime = tp->lsndtime;
		r.lrcvtime = tp->inet_conn.icsk_ack.lrcvtime;
		r.probes_out = tp->inet_conn.icsk_probes_out;
		r.user_timeout = tp->inet_conn.icsk_user_timeout;
		r.ka_time = tp->keepalive_time;
		r.ka_intvl = tp->keepalive_intvl;
		r.ka_probes = tp->keepalive_probes;
		if (tp->inet_conn.icsk_inet.sk.__sk_common.skc_flags & (1UL << SOCK_KEEPOPEN))
			r.ka_src |= KA_ON;
		if (ka_timer_fn && tp->inet_conn.icsk_inet.sk.sk_timer.entry.pprev &&
		    (__u64)tp->inet_conn.icsk_inet.sk.sk_timer.function == ka_timer_fn) {
			r.ka_src |= KA_PENDING;
			r.ka_expires = tp->inet_conn.icsk_inet.sk.sk_timer.expires;
		}
		r.uid = tp->inet_conn.icsk_inet.sk.sk_uid.val;
		r.ino = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_socket, file, f_inode, i_ino);
		info = sk_info_get((struct sock *)tp, true);
		if (info && !r.cookie && info->cookie && info->state == r.state) {
			/* Followed already, under the tracer's own id (no cookie). */
			r.cookie = info->cookie;
		} else if (info && (info->cookie != r.cookie || !r.cookie)) {
			if (!r.cookie)
				r.cookie = new_id();
			info->cookie = r.cookie;
			info->state = r.state;
			info->state_ts = r.ts_ns;
			info->flags = INFO_SINCE_START;
			info->owner_src = OWNER_NONE;
		}
	}
	bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}

/*
 * Walks tw_fin_wait2 (user space runs it every 100 ms): a timewait socket that
 * turned TIME_WAIT in place is reported now, dated from its rewritten expiry
 * (TIME_WAIT began TCP_TIMEWAIT_LEN before it: exact to the jiffy). The
 * socket is read through its address: an entry whose socket is gone (its key
 * no longer matches, or it is no longer a timewait socket) is dropped.
 */
SEC("iter/bpf_map_elem")
int iter_fin_wait2(struct bpf_iter__bpf_map_elem *ctx)
{
	struct inet_timewait_sock *tw;
	struct tw_info *info;
	struct event e;
	__u64 *key = ctx->key, *addr = ctx->value;
	__u64 k, cookie;

	if (!key || !addr)
		return 0;
	k = *key;
	tw = (struct inet_timewait_sock *)*addr;
	info = bpf_map_lookup_elem(&tw_infos, &k);
	cookie = BPF_CORE_READ(tw, __tw_common.skc_cookie.counter);
	if (!info || tw_key(cookie, tw) != k || BPF_CORE_READ(tw, __tw_common.skc_state) != TCP_TIME_WAIT) {
		bpf_map_delete_elem(&tw_fin_wait2, &k);
		return 0;
	}
	if (BPF_CORE_READ(tw, tw_substate) != TCP_TIME_WAIT || info->state != TCP_FIN_WAIT2)
		return 0;
	/* Woken at once: the walk is the reader's own, and late already. */
	tw_sync(&e, info, tw, (void *)tw + bpf_core_field_offset(struct inet_timewait_sock, tw_timer),
		bpf_ktime_get_boot_ns(), k, true);
	return 0;
}

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
