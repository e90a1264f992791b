/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * State changes (inet_sock_set_state), and the second program that takes over those the kernel
 * skipped for the first.
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_STATE_H
#define __TCPSTATE_STATE_H

/* A state change, now (bpf_ktime_get_boot_ns: the caller's, one clock read a run). */
static __always_inline void set_state(const struct sock *sk, int oldstate, int newstate, __u64 now)
{
	const struct sock_common *skc = &sk->__sk_common;
	struct sk_info *info;
	struct event e;
	__u64 cookie;
	__u8 src;

	if (sk->sk_protocol != IPPROTO_TCP || !netns_wanted(skc))
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

	if (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV) {
		child_born(sk, now);
		return;
	}
	cookie = kernel_cookie(sk);
	event_init(&e, EVENT_STATE, now, cookie);
	e.old_state = oldstate;
	e.new_state = newstate;
	e.netns = skc->skc_net.net->ns.inum;
	READ_ENDPOINTS(skc, &e.family, &e.sport, &e.dport, e.saddr, e.daddr, DIRECT_READ, DIRECT_ADDR6);
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
		if (is_new(info, cookie, oldstate)) {
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
		event_owner(&e, info->owner_src, info->pid, info->tid, info->cgroup, info->comm);
		if (newstate == TCP_CLOSE)
			ka_note_owner(sk, info);
	}
	emit(&e);
}

static __always_inline __u32 seen_trans(int oldstate, int newstate)
{
	return (((__u32)oldstate & 0xff) << 8 | ((__u32)newstate & 0xff)) + 1;
}

/*
 * Every TCP state change. A softirq's change that interrupts this program on
 * its CPU (a packet arriving while a system call's change is traced) is
 * skipped by the kernel's recursion guard (Linux 6.1 and later; counted in
 * the program's recursion misses): catch_set_state, attached after this one,
 * takes it over.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, const struct sock *sk, int oldstate, int newstate)
{
	struct set_state_seen *seen;
	__u64 call = (__u64)ctx, oldest = ~0ULL, now = bpf_ktime_get_boot_ns();
	__u32 zero = 0, slot = 0;
	bool free = false;

	seen = bpf_map_lookup_elem(&set_state_seens, &zero);
	if (seen) {
		for (int i = 0; i < SEEN_MAX; i++) {
			if (seen->ctx[i] == call) {
				slot = i; /* left by a call that ended */
				break;
			}
			if (free)
				continue;
			if (!seen->ctx[i]) {
				slot = i;
				free = true;
			} else if (seen->ts[i] < oldest) {
				slot = i;
				oldest = seen->ts[i];
			}
		}
		slot &= SEEN_MAX - 1;
		/* Where the kernel lets runs nest (before Linux 6.1), a change
		 * nested in between runs both its programs before this one goes
		 * on. Written in this order, it either takes another slot (this
		 * one is taken and the youngest) or takes this one and frees it,
		 * and the rest is written here. */
		seen->ts[slot] = now;
		barrier();
		seen->ctx[slot] = call;
		barrier();
		seen->sk[slot] = (__u64)sk;
		seen->trans[slot] = seen_trans(oldstate, newstate);
	}
	set_state(sk, oldstate, newstate, now);
	return 0;
}

/*
 * Runs after handle_set_state on every state change; reports it only when
 * handle_set_state left no slot for it: the kernel skipped handle_set_state,
 * or (see set_state_seens) its slot was taken while it waited.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(catch_set_state, const struct sock *sk, int oldstate, int newstate)
{
	struct set_state_seen *seen;
	__u32 zero = 0, trans = seen_trans(oldstate, newstate);
	__u64 call = (__u64)ctx;

	seen = bpf_map_lookup_elem(&set_state_seens, &zero);
	if (!seen)
		return 0;
	for (int i = 0; i < SEEN_MAX; i++) {
		if (seen->ctx[i] == call && seen->sk[i] == (__u64)sk && seen->trans[i] == trans) {
			seen->ctx[i] = 0;
			return 0;
		}
	}
	stat_inc(STAT_CAUGHT);
	set_state(sk, oldstate, newstate, bpf_ktime_get_boot_ns());
	return 0;
}

#endif
