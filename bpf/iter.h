/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Iterators run by user space: the start-up walk of a namespace's TCP sockets, and the walk of
 * timewait sockets still in FIN_WAIT2.
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_ITER_H
#define __TCPSTATE_ITER_H

/*
 * Start-up walk of the TCP sockets of one network namespace (the one of the
 * task that opens the iterator): full, timewait and request sockets. Seeds
 * the socket and timewait storage so that the first event of a socket older
 * than the tracer carries a lower bound of its state's duration (TIME_WAIT's
 * own, known from its timer), and writes one
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
	READ_ENDPOINTS(skc, &r.family, &r.sport, &r.dport, r.saddr, r.daddr, DIRECT_READ, DIRECT_ADDR6);
	r.cookie = skc_cookie(skc);

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
		/* The connection's id as the events carry it: its full
		 * socket's, where the tracer followed it without a kernel
		 * cookie (before Linux 5.12), else the key. */
		r.cookie = tw_cookie(bpf_map_lookup_elem(&tw_infos, &key), key);
		r.timewait = 1;
		r.state = BPF_CORE_READ(tw, tw_substate);
		r.timer_expires = BPF_CORE_READ(tw, tw_timer.expires);
		/* Followed from here only if the filters want it (as
		 * tw_first_arm: the maps are bounded). */
		if (endpoints_wanted(r.family, r.netns, r.sport, r.dport, r.saddr, r.daddr)) {
			fresh.cookie = key;
			fresh.state = r.state;
			fresh.state_ts = r.ts_ns;
			fresh.expires = r.timer_expires;
			fresh.flags = INFO_SINCE_START;
			/* TIME_WAIT began TCP_TIMEWAIT_LEN before its timer's
			 * expiry (as tw_sync dates it, and watch): known, not a
			 * lower bound. (A FIN_WAIT2's timeout is the namespace's
			 * or the socket's own: left a lower bound.) Unless the
			 * walk came between the kernel's switch of a FIN_WAIT2
			 * to TIME_WAIT and its re-arm (another CPU): the expiry
			 * read is FIN_WAIT2's. That re-arm comes within a jiffy,
			 * and its expiry dates it again (tw_walk_redate). */
			if (r.state == TCP_TIME_WAIT && (__s64)(r.timer_expires - r.jiffies) >= 0) {
				__u64 began = timewait_began(r.timer_expires, r.jiffies, r.ts_ns);

				if (began) {
					fresh.state_ts = began;
					fresh.flags = INFO_WALK_DATED;
					fresh.walked = (__u32)r.jiffies;
				}
			}
			bpf_map_update_elem(&tw_infos, &key, &fresh, BPF_NOEXIST);
			if (r.state == TCP_FIN_WAIT2)
				fw2_watch(tw, key, r.timer_expires, BPF_NOEXIST);
		}
	} else if (r.state != TCP_NEW_SYN_RECV) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
		struct timer_list *kt;
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
		kt = (void *)tp + ka_timer_offset();
		if (ka_timer_fn && BPF_CORE_READ(kt, entry.pprev) && (__u64)BPF_CORE_READ(kt, function) == ka_timer_fn) {
			r.ka_src |= KA_PENDING;
			r.ka_expires = BPF_CORE_READ(kt, expires);
		}
		r.uid = tp->inet_conn.icsk_inet.sk.sk_uid.val;
		r.ino = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_socket, file, f_inode, i_ino);
		/* (not in a namespace the filter excludes: never followed) */
		info = !filter_netns || r.netns == filter_netns ? sk_info_get((struct sock *)tp, true) : NULL;
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
 * Walks tw_fin_wait2 (user space runs it every 100 ms while it holds
 * anything): a timewait socket that
 * turned TIME_WAIT in place is reported now, dated from its rewritten expiry
 * (TIME_WAIT began TCP_TIMEWAIT_LEN before it: exact to the jiffy). The
 * socket is read through its address: an entry whose socket is gone (its key
 * no longer matches, or it is no longer a timewait socket) is dropped, and so
 * is one still in FIN_WAIT2 whose peer's FIN can no longer go unseen.
 */
SEC("iter/bpf_map_elem")
int iter_fin_wait2(struct bpf_iter__bpf_map_elem *ctx)
{
	struct inet_timewait_sock *tw;
	struct tw_info *info;
	struct skc_head h;
	struct event e;
	struct fw2_entry *v = ctx->value;
	__u64 *key = ctx->key;
	__u64 k, cookie;

	if (!key || !v)
		return 0;
	k = *key;
	tw = (struct inet_timewait_sock *)v->addr;
	skc_read_head(&h, &tw->__tw_common);
	cookie = SKC_FIELD(&h, &tw->__tw_common, skc_cookie.counter);
	if (tw_key(cookie, tw) != k || SKC_FIELD(&h, &tw->__tw_common, skc_state) != TCP_TIME_WAIT) {
		fw2_unwatch(k);
		return 0;
	}
	if (BPF_CORE_READ(tw, tw_substate) != TCP_TIME_WAIT) {
		/* Still in FIN_WAIT2: kept while its peer's FIN may go unseen. */
		if (fw2_over(v->until))
			fw2_unwatch(k);
		return 0;
	}
	/* Turned TIME_WAIT: the rare case, the only one that looks the
	 * connection up (a lookup per entry and walk was most of the walk's
	 * cost). Not followed any more, or already reported: dropped. */
	info = bpf_map_lookup_elem(&tw_infos, &k);
	if (!info || info->state != TCP_FIN_WAIT2) {
		fw2_unwatch(k);
		return 0;
	}
	/* Its expiry not rewritten yet: the walk came between the kernel's
	 * switch to TIME_WAIT and its re-arm (tcp_timewait_state_process, on
	 * another CPU), and dating it now would be up to a walk late. Left to
	 * the re-arm's timer_start or the next walk; an expiry still the same
	 * then was rewritten to the same jiffy, and dates it as well. */
	if (BPF_CORE_READ(tw, tw_timer.expires) == info->expires && !v->turned) {
		v->turned = 1;
		return 0;
	}
	/* Nobody woken: the walk is the reader's own, which reads the ring
	 * right after it (a wake-up per event cost more than the walk). */
	tw_sync(&e, info, tw, &h, (void *)tw + bpf_core_field_offset(struct inet_timewait_sock, tw_timer),
		bpf_ktime_get_boot_ns(), k, true);
	return 0;
}

#endif
