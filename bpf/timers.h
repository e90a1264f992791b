/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The timer tracepoints: every timer in the system passes here; only timewait and keepalive
 * timers are kept.
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_TIMERS_H
#define __TCPSTATE_TIMERS_H

SEC("tp_btf/timer_expire_exit")
int BPF_PROG(handle_timer_exit, struct timer_list *t)
{
	struct event e;

	if (ka_timer_fn && (__u64)t->function == ka_timer_fn)
		ka_fire_exit(&e, t);
	return 0;
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
	struct skc_head h;
	struct event e;
	__u64 now, cookie, key;
	__u8 state;
	bool rearm;

	if (ka_timer_fn && (__u64)t->function == ka_timer_fn) {
		ka_armed(&e, t);
		return 0;
	}
	if (!tw_timer_fn || (__u64)t->function != tw_timer_fn)
		return 0;
	tw = tw_of(t);
	now = bpf_ktime_get_boot_ns();
	skc_read_head(&h, &tw->__tw_common);
	cookie = SKC_FIELD(&h, &tw->__tw_common, skc_cookie.counter);
	key = tw_key(cookie, tw);

	info = bpf_map_lookup_elem(&tw_infos, &key);
	if (!info) {
		rearm = tw_rearm_unseen(cookie);
		tw_first_arm(tw, &h, t, now, cookie, key, rearm);
		if (!rearm)
			return 0;
		/* Re-armed, and not followed until now: the timewait cancel
		 * just sent was no kill. User space learns the socket's state
		 * here (its earlier events were not seen). */
		event_init(&e, EVENT_TW_REARM, now, key);
		e.old_state = e.new_state = BPF_CORE_READ(tw, tw_substate);
		e.flags = EVF_UNSEEN;
		tw_event(&e, tw, &h, NULL, t);
		emit(&e);
		return 0;
	}
	state = info->state;
	tw_walk_redate(info, t, now);
	tw_sync(&e, info, tw, &h, t, now, key, false);
	info->expires = t->expires;
	if (info->state != state)
		return 0;
	/* Re-armed in the same state: tells user space that a preceding
	 * EVENT_TW_CANCEL was not a kill. */
	event_init(&e, EVENT_TW_REARM, now, tw_cookie(info, key));
	e.old_state = state;
	e.new_state = state;
	tw_event(&e, tw, &h, info, t);
	emit(&e);
	return 0;
}

/* A timewait timer fired: the connection is over. */
SEC("tp_btf/timer_expire_entry")
int BPF_PROG(handle_timer_expire, struct timer_list *t, unsigned long baseclk)
{
	struct inet_timewait_sock *tw;
	struct tw_info *info;
	struct skc_head h;
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
	skc_read_head(&h, &tw->__tw_common);
	cookie = SKC_FIELD(&h, &tw->__tw_common, skc_cookie.counter);
	key = tw_key(cookie, tw);
	info = bpf_map_lookup_elem(&tw_infos, &key);
	if (info) {
		tw_walk_redate(info, t, now);
		tw_sync(&e, info, tw, &h, t, now, key, false);
	} else if (head_wanted(&h, &tw->__tw_common, NULL))
		stat_inc(STAT_TW_UNTRACKED);
	else
		return 0; /* (the filters exclude it: never followed, nothing to say) */
	event_init(&e, EVENT_STATE, now, tw_cookie(info, key));
	e.old_state = info ? info->state : BPF_CORE_READ(tw, tw_substate);
	e.new_state = TCP_CLOSE;
	e.reason = e.old_state == TCP_FIN_WAIT2 ? REASON_FIN_TIMEOUT : REASON_TW_EXPIRED;
	tw_duration(&e, info, now);
	tw_event(&e, tw, &h, info, t);
	emit(&e);
	if (info)
		bpf_map_delete_elem(&tw_infos, &key);
	fw2_unwatch(key);
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
	struct skc_head h;
	struct event e;
	__u64 now, cookie, key;

	if (!tw_timer_fn || (__u64)t->function != tw_timer_fn)
		return 0;
	if ((long)(bpf_jiffies64() - t->expires) >= 0)
		return 0;
	tw = tw_of(t);
	now = bpf_ktime_get_boot_ns();
	skc_read_head(&h, &tw->__tw_common);
	cookie = SKC_FIELD(&h, &tw->__tw_common, skc_cookie.counter);
	key = tw_key(cookie, tw);
	info = bpf_map_lookup_elem(&tw_infos, &key);
	if (info) {
		tw_walk_redate(info, t, now);
		tw_sync(&e, info, tw, &h, t, now, key, false);
	} else if (!head_wanted(&h, &tw->__tw_common, NULL))
		return 0; /* (nor its re-arm: tw_rearm_unseen finds no removal) */
	else if (cookie)
		tw_note_unseen_cancel(cookie);
	event_init(&e, EVENT_TW_CANCEL, now, tw_cookie(info, key));
	e.old_state = info ? info->state : BPF_CORE_READ(tw, tw_substate);
	e.new_state = TCP_CLOSE;
	e.reason = REASON_TW_KILLED;
	tw_duration(&e, info, now);
	tw_event(&e, tw, &h, info, t);
	emit(&e);
	/* Kept for a re-arm; a killed socket's entry ages out of the LRU. */
	return 0;
}

#endif
