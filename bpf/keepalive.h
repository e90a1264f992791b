/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The keepalive timer (running tcp_keepalive_timer, ka_timer_offset): armed, fired, probes, kills.
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_KEEPALIVE_H
#define __TCPSTATE_KEEPALIVE_H

/*
 * A CLOSE inside this socket's keepalive timer (a keepalive kill): note the
 * owner for the timeout event that follows at the timer's exit, which reaches
 * the socket only through its timer and cannot read its storage.
 */
static __always_inline void ka_note_owner(const struct sock *sk, const struct sk_info *info)
{
	__u32 zero = 0;
	struct ka_fire *f = bpf_map_lookup_elem(&ka_fires, &zero);

	if (!f || !f->timer || f->timer != (__u64)sk + ka_timer_offset())
		return;
	f->owner_src = info->owner_src;
	f->pid = info->pid;
	f->tid = info->tid;
	f->cgroup = info->cgroup;
	__builtin_memcpy(f->comm, info->comm, TASK_COMM_LEN);
}

#define SOCK_KEEPOPEN	3

/* The socket behind a timer that runs tcp_keepalive_timer. */
static __always_inline struct sock *ka_sock_of(struct timer_list *t)
{
	return (void *)t - ka_timer_offset();
}

/*
 * The id of a socket reached through its keepalive timer (not a BTF pointer):
 * its cookie, which its first state change made (Linux 5.12+); before, the
 * tracer's own id of it, else its address.
 */
static __always_inline __u64 ka_cookie(struct sock *sk, const struct skc_head *h)
{
	__u64 cookie = SKC_FIELD(h, &sk->__sk_common, skc_cookie.counter);
	struct sk_info *info;

	if (cookie)
		return cookie;
	info = sk_info_by_addr(sk);
	if (info && info->cookie)
		return info->cookie;
	return (__u64)sk;
}

/*
 * One keepalive setting as the kernel's keepalive_*_when() pick it: the
 * socket's own value (tp->FIELD, 0 when unset; flag marks it in ka_src), else
 * its namespace's sysctl net.ipv4.tcp_FIELD. Needs tp, net and e in scope.
 */
#define KA_SETTING(var, field, flag)						\
	do {									\
		var = BPF_CORE_READ(tp, field);					\
		if (var)							\
			e->ka_src |= (flag);					\
		else								\
			var = BPF_CORE_READ(net, ipv4.sysctl_tcp_##field);	\
	} while (0)

/*
 * Fills e with the socket's endpoints and its effective keepalive settings:
 * the socket's own (TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, 0 when unset) else its
 * namespace's sysctls, as the kernel's keepalive_*_when() pick them. h is the
 * socket's head (skc_read_head), read now.
 */
static __always_inline void ka_event(struct event *e, struct sock *sk, const struct skc_head *h,
				     struct timer_list *t, __u8 kind, __u64 now, __u64 cookie)
{
	const struct sock_common *skc = &sk->__sk_common;
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct net *net = SKC_FIELD(h, skc, skc_net.net);
	__u32 v;
	__u8 c;

	event_init(e, EVENT_KEEPALIVE, now, cookie);
	e->ka_event = kind;
	e->old_state = SKC_FIELD(h, skc, skc_state);
	e->new_state = e->old_state;
	e->netns = BPF_CORE_READ(net, ns.inum);
	head_endpoints(h, skc, &e->family, &e->sport, &e->dport, e->saddr, e->daddr);
	/* A keepalive kill has closed the socket: its port is released
	 * (inet_num zeroed), inet_sport keeps it. */
	if (!e->sport)
		e->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	e->timer_expires = t->expires;
	e->jiffies = bpf_jiffies64();
	e->ka_probe = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_probes_out);
	e->ka_user_timeout = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_user_timeout);
	if (SKC_FIELD(h, skc, skc_flags) & (1UL << SOCK_KEEPOPEN))
		e->ka_src |= KA_ON;
	KA_SETTING(v, keepalive_time, KA_IDLE_SOCKET);
	e->ka_idle = v;
	KA_SETTING(v, keepalive_intvl, KA_INTVL_SOCKET);
	e->ka_intvl = v;
	KA_SETTING(c, keepalive_probes, KA_COUNT_SOCKET);
	e->ka_count = c;
}

static __always_inline void ka_emit(struct event *e, struct sock *sk, const struct skc_head *h,
				    struct timer_list *t, __u8 kind, __u64 now, __u64 cookie)
{
	ka_event(e, sk, h, t, kind, now, cookie);
	emit(e);
}

/*
 * Whether this arm of an orphaned socket's timer in FIN_WAIT2 is replaced
 * while the kernel handles the segment that made it. On the ACK of an orphan's
 * FIN, tcp_rcv_state_process() arms the timer for the FIN_WAIT2 timeout
 * tcp_fin_time() when the socket is owned by a task or the segment carries the
 * peer's FIN (for exactly that timeout, when it is at most TCP_TIMEWAIT_LEN;
 * above, for the excess, always). The FIN is in order there (an out-of-order
 * FIN after close() aborts the socket first): tcp_fin() then moves the socket
 * to TIME_WAIT in the same segment, and the next events (CLOSE, the timewait
 * socket's) say what this arm would. So an arm of a socket not owned, for
 * tcp_fin_time(), is not sent. Owned, the arm may stand: tcp_close()
 * replaces the one made while it runs the backlog, not one made at its final
 * release_sock(), which the socket keeps for the FIN_WAIT2 timeout.
 */
static __always_inline bool ka_arm_replaced(struct sock *sk, const struct skc_head *h, struct timer_list *t)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct net *net;
	__s64 fin, floor, len;
	__u32 rto;

	if (SKC_FIELD(h, &sk->__sk_common, skc_state) != TCP_FIN_WAIT2 ||
	    !(SKC_FIELD(h, &sk->__sk_common, skc_flags) & (1UL << SOCK_DEAD)) ||
	    BPF_CORE_READ(sk, sk_lock.owned))
		return false;
	/* tcp_fin_time(), in jiffies */
	fin = BPF_CORE_READ(tp, linger2);
	if (!fin) {
		net = SKC_FIELD(h, &sk->__sk_common, skc_net.net);
		fin = BPF_CORE_READ(net, ipv4.sysctl_tcp_fin_timeout);
	}
	rto = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_rto);
	floor = (__s32)((rto << 2) - (rto >> 1));
	if (fin < floor)
		fin = floor;
	/* Armed for fin jiffies from the jiffy of the arm: up to a second
	 * earlier than now (ticks may pass in between, many while a virtual
	 * CPU stalls). The excess over TCP_TIMEWAIT_LEN is 60 s shorter. */
	len = (__s64)(t->expires - bpf_jiffies64());
	return len <= fin && len >= fin - hz;
}

/* The keepalive timer armed: at connect/accept with SO_KEEPALIVE, by
 * setsockopt, after each fire for the rest of the idle time or a probe
 * interval, and in FIN_WAIT2 for its timeout (unless ka_arm_replaced). */
static __always_inline void ka_armed(struct event *e, struct timer_list *t)
{
	struct sock *sk = ka_sock_of(t);
	struct skc_head h;

	skc_read_head(&h, &sk->__sk_common);
	if (!head_wanted(&h, &sk->__sk_common, sk) || ka_arm_replaced(sk, &h, t))
		return;
	ka_event(e, sk, &h, t, KA_ARMED, bpf_ktime_get_boot_ns(), ka_cookie(sk, &h));
	/* setsockopt(SO_KEEPALIVE) arms the timer before it sets the flag;
	 * outside FIN_WAIT2 the timer is only armed for keepalive. */
	if (e->old_state != TCP_FIN_WAIT2)
		e->ka_src |= KA_ON;
	emit(e);
}

static __always_inline void ka_fire_entry(struct event *e, struct timer_list *t)
{
	struct sock *sk = ka_sock_of(t);
	__u64 now = bpf_ktime_get_boot_ns(), cookie;
	struct ka_fire *f;
	struct skc_head h;
	__u32 zero = 0;
	__u8 *last;

	f = bpf_map_lookup_elem(&ka_fires, &zero);
	if (!f)
		return;
	skc_read_head(&h, &sk->__sk_common);
	if (!head_wanted(&h, &sk->__sk_common, sk)) {
		f->timer = 0; /* (nor its exit, which looks for this timer here) */
		return;
	}
	cookie = ka_cookie(sk, &h);
	f->timer = (__u64)t;
	f->owner_src = OWNER_NONE;
	f->probes_out = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_probes_out);
	f->state = SKC_FIELD(&h, &sk->__sk_common, skc_state);
	/* (a FIN_WAIT2 its owner holds runs keepalive as any other state) */
	f->orphan_fw2 = f->state == TCP_FIN_WAIT2 &&
			(SKC_FIELD(&h, &sk->__sk_common, skc_flags) & (1UL << SOCK_DEAD));
	/* Probes outstanding at the last fire and none now: an ACK came. */
	last = bpf_map_lookup_elem(&ka_probes, &cookie);
	if (last && *last && !f->probes_out)
		ka_emit(e, sk, &h, t, KA_ANSWERED, now, cookie);
	ka_emit(e, sk, &h, t, f->orphan_fw2 ? KA_FIN_WAIT2 : KA_FIRED, now, cookie);
}

static __always_inline void ka_fire_exit(struct event *e, struct timer_list *t)
{
	struct sock *sk = ka_sock_of(t);
	__u64 now = bpf_ktime_get_boot_ns(), cookie;
	__u8 probes, state;
	struct ka_fire *f;
	struct skc_head h;
	__u32 zero = 0;

	f = bpf_map_lookup_elem(&ka_fires, &zero);
	if (!f || f->timer != (__u64)t)
		return;
	f->timer = 0;
	skc_read_head(&h, &sk->__sk_common);
	cookie = ka_cookie(sk, &h);
	probes = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_probes_out);
	state = SKC_FIELD(&h, &sk->__sk_common, skc_state);
	if (state == TCP_CLOSE) {
		/* Closed by this fire: a keepalive kill. Not for an orphan in
		 * FIN_WAIT2, where the timer is its FIN_WAIT2 timeout: it handed
		 * the connection to a timewait socket (tcp_fin_timeout above
		 * TCP_TIMEWAIT_LEN) or reset it, as the state events say. */
		if (f->state != TCP_CLOSE && !f->orphan_fw2) {
			ka_event(e, sk, &h, t, KA_TIMEOUT, now, cookie);
			event_owner(e, f->owner_src, f->pid, f->tid, f->cgroup, f->comm);
			e->sk_err = BPF_CORE_READ(sk, sk_err);
			e->reason = REASON_TIMEOUT;
			e->rst_reason = ka_rst_reason();
			emit(e);
		}
		bpf_map_delete_elem(&ka_probes, &cookie);
		return;
	}
	if (probes > f->probes_out)
		ka_emit(e, sk, &h, t, KA_PROBE, now, cookie);
	bpf_map_update_elem(&ka_probes, &cookie, &probes, BPF_ANY);
}

#endif
