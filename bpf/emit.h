/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Events: endpoints read from a socket, the in-kernel filters, and sending to user space.
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_EMIT_H
#define __TCPSTATE_EMIT_H

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	/* Atomic though per CPU: a program that nests on this CPU (a softirq's
	 * in a task's) between a plain load and store would lose a count. The
	 * result unused, this is BPF's oldest atomic add (Linux 5.10 has it). */
	if (v)
		__sync_fetch_and_add(v, 1);
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
 * that struct event and struct iter_rec share this. READ(p, field) reads a
 * scalar field and ADDR6(dst, p, field) copies an IPv6 address: direct loads
 * for a BTF pointer (DIRECT_READ, DIRECT_ADDR6: the state and reset
 * tracepoints' sk, the tcp iterator's socket), or from the head copied from a
 * socket reached by address (head_endpoints).
 */
#define DIRECT_READ(p, field) ((p)->field)
#define DIRECT_ADDR6(dst, p, field) __builtin_memcpy((dst), &(p)->field, 16)
#define READ_ENDPOINTS(skc, family, sport, dport, saddr, daddr, READ, ADDR6)			\
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
			ADDR6(saddr, skc, skc_v6_rcv_saddr);					\
			ADDR6(daddr, skc, skc_v6_daddr);					\
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

/*
 * The head of a sock_common (full or timewait socket) reached by address,
 * through a timer or a walk, not a BTF pointer: one probe read of it, where
 * reading field by field costs a helper call each (the keepalive and timewait
 * hooks read ten and more). Its first SKC_HEAD bytes hold every field taken
 * from it on the kernels we know (skc_flags ends at byte 104 on 6.18).
 */
#define SKC_HEAD 128

struct skc_head {
	__u64 w[SKC_HEAD / 8];	/* 8-byte aligned: fields keep their alignment (stack loads must be aligned) */
};

static __always_inline void skc_read_head(struct skc_head *h, const struct sock_common *skc)
{
	bpf_probe_read_kernel(h, sizeof(*h), skc);
}

/*
 * A field's offset in the head, CO-RE relocated: fixed when the program loads,
 * so whether the field lies inside the copy (else it is read on its own)
 * costs nothing at run time. barrier_var: else clang folds h + o into h | o,
 * which the verifier refuses.
 */
#define SKC_OFFSET(var, field)								\
	__u32 var = bpf_core_field_offset(struct sock_common, field);			\
	barrier_var(var)

/* A scalar field of sock_common, from h (skc_read_head of skc). */
#define SKC_FIELD(h, skc, field)							\
	({										\
		typeof(((struct sock_common *)0)->field) __v;				\
		SKC_OFFSET(__o, field);							\
		if (__o + sizeof(__v) <= SKC_HEAD)					\
			__v = *(typeof(__v) *)((void *)(h) + __o);			\
		else									\
			__v = BPF_CORE_READ(skc, field);				\
		__v;									\
	})

/* An IPv6 address of sock_common into dst (16 bytes), from h. */
#define SKC_ADDR6(h, skc, field, dst)							\
	do {										\
		SKC_OFFSET(__o, field);							\
		if (__o + 16 <= SKC_HEAD)						\
			__builtin_memcpy((dst), (void *)(h) + __o, 16);			\
		else									\
			BPF_CORE_READ_INTO((struct in6_addr *)(dst), skc, field);	\
	} while (0)

static __always_inline void head_endpoints(const struct skc_head *h, const struct sock_common *skc,
					   __u16 *family, __u16 *sport, __u16 *dport, __u8 *saddr, __u8 *daddr)
{
#define HEAD_READ(p, field) SKC_FIELD(h, p, field)
#define HEAD_ADDR6(dst, p, field) SKC_ADDR6(h, p, field, dst)
	READ_ENDPOINTS(skc, family, sport, dport, saddr, daddr, HEAD_READ, HEAD_ADDR6);
#undef HEAD_READ
#undef HEAD_ADDR6
}

/* The network namespace of the socket whose head h is. */
static __always_inline __u32 head_netns(const struct skc_head *h, const struct sock_common *skc)
{
	struct net *net = SKC_FIELD(h, skc, skc_net.net);

	return BPF_CORE_READ(net, ns.inum);
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

/*
 * Whether the namespace filter (--netns) wants a socket, read from its BTF
 * pointer. A socket's namespace is fixed for its whole life, so a socket it
 * excludes is not followed at all: no socket storage is made for it by its
 * state changes, its reads and writes or the start-up walk (nor freed with
 * it, nor cloned into its accepted children).
 */
static __always_inline bool netns_wanted(const struct sock_common *skc)
{
	return !filter_netns || skc->skc_net.net->ns.inum == filter_netns;
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
 * Whether the endpoint filters want the socket whose head h is (skc_read_head
 * of skc, read through its address). They hold for a connection's whole life,
 * so a timer's work for one they exclude is not done. full: the full socket
 * behind skc, whose local port a kill may have released (then read from
 * inet_sport, as ka_event does); NULL for a timewait socket.
 */
static __always_inline bool head_wanted(const struct skc_head *h, const struct sock_common *skc, struct sock *full)
{
	__u8 saddr[16], daddr[16];
	__u16 family, sport, dport;

	if (!filter_family && !filter_netns && !filter_ports && !filter_addrs)
		return true;
	head_endpoints(h, skc, &family, &sport, &dport, saddr, daddr);
	if (!sport && full)
		sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)full, inet_sport));
	return endpoints_wanted(family, head_netns(h, skc), sport, dport, saddr, daddr);
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
	/* A timewait re-arm is never shown, but without it the timewait cancel
	 * before it (to CLOSE) reads as a kill (tracer.Filter.Match). */
	if (filter_states && e->type != EVENT_TW_REARM &&
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
	e->cpu = bpf_get_smp_processor_id();
	e->cpu_pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->cpu_comm, sizeof(e->cpu_comm));
}

/*
 * Sends e to user space if the filters want it, counting it either way, and
 * wakes the reader once enough is waiting (it also reads every 100 ms). The
 * event is built on the stack and copied (no ring buffer reservation to hold
 * and release on every path, which older verifiers cannot always follow, and
 * none at all for filtered events).
 */
static __always_inline void emit(struct event *e)
{
	__u64 flags = 0;

	stat_inc(STAT_SEEN);
	if (!wanted(e)) {
		stat_inc(STAT_FILTERED);
		return;
	}
	if (wakeup_bytes)
		flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, e, sizeof(*e), flags))
		stat_inc(STAT_LOST);
}

static __always_inline void event_owner(struct event *e, __u8 src, __u32 pid, __u32 tid, __u64 cgroup,
					const char *comm)
{
	if (src == OWNER_NONE)
		return;
	e->flags |= EVF_OWNER;
	e->owner_src = src;
	e->pid = pid;
	e->cgroup = cgroup;
	e->tid = tid;
	__builtin_memcpy(e->comm, comm, TASK_COMM_LEN);
}

#endif
