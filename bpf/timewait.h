/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Timewait sockets: the connection after close() in FIN_WAIT2 and TIME_WAIT, followed through
 * the timewait timer.
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_TIMEWAIT_H
#define __TCPSTATE_TIMEWAIT_H

static __always_inline __u64 tw_key(__u64 cookie, const void *tw)
{
	return cookie ? cookie : (__u64)tw;
}

/* Whether a watch that lasts until then is over (never without a lead). */
static __always_inline bool fw2_over(__u64 until)
{
	return fw2_silent_lead && (__s64)(bpf_jiffies64() - until) >= 0;
}

/*
 * Watches a timewait socket in FIN_WAIT2, whose timer expires at expires, for
 * a turn to TIME_WAIT without timer_start (tw_fin_wait2), unless its peer's
 * FIN can no longer bring one.
 */
static __always_inline void fw2_watch(const struct inet_timewait_sock *tw, __u64 key, __u64 expires,
				      __u64 flags)
{
	struct fw2_entry v = {
		.addr = (__u64)tw,
		.until = expires - fw2_silent_lead,
	};

	if (fw2_over(v.until))
		return;
	bpf_map_update_elem(&tw_fin_wait2, &key, &v, flags);
}

/* Ends the watch of fw2_watch, if any. */
static __always_inline void fw2_unwatch(__u64 key)
{
	bpf_map_delete_elem(&tw_fin_wait2, &key);
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
		tw->cgroup = info->cgroup;
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
			event_owner(e, info->owner_src, info->pid, info->tid, info->cgroup, info->comm);
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

/* The timewait socket behind a timer that runs tw_timer_handler. */
static __always_inline struct inet_timewait_sock *tw_of(struct timer_list *t)
{
	return (void *)t - bpf_core_field_offset(struct inet_timewait_sock, tw_timer);
}

/* Fills e from a timewait socket read through its address (not a BTF
 * pointer): h is its head (skc_read_head). */
static __always_inline void tw_event(struct event *e, struct inet_timewait_sock *tw, const struct skc_head *h,
				     const struct tw_info *info, struct timer_list *t)
{
	e->flags |= EVF_TIMEWAIT;
	e->netns = head_netns(h, &tw->__tw_common);
	head_endpoints(h, &tw->__tw_common, &e->family, &e->sport, &e->dport, e->saddr, e->daddr);
	e->timer_expires = BPF_CORE_READ(t, expires);
	e->jiffies = bpf_jiffies64();
	if (info)
		event_owner(e, info->owner_src, info->pid, info->tid, info->cgroup, info->comm);
}

/* The id of the connection a timewait socket carries. */
static __always_inline __u64 tw_cookie(const struct tw_info *info, __u64 key)
{
	return info && info->cookie ? info->cookie : key;
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
 * When a TIME_WAIT began, from its timer's expiry: TCP_TIMEWAIT_LEN before it.
 * jiffies is read with now (boot time, ns); the expiry may be past (the timer
 * firing late). 0: the expiry is no TIME_WAIT's (more than TCP_TIMEWAIT_LEN
 * ahead, or TCP_TIMEWAIT_LEN or more past), it would date the start before
 * boot, or HZ is not known.
 */
static __always_inline __u64 timewait_began(__u64 expires, __u64 jiffies, __u64 now)
{
	__s64 left_ns;

	if (!hz)
		return 0;
	left_ns = (__s64)(expires - jiffies) * (1000000000LL / hz);
	if (left_ns <= -(__s64)TIMEWAIT_LEN_NS || left_ns > (__s64)TIMEWAIT_LEN_NS ||
	    TIMEWAIT_LEN_NS - left_ns >= now)
		return 0;
	return now - (TIMEWAIT_LEN_NS - left_ns);
}

/*
 * A TIME_WAIT the start-up walk dated from its timer, at its first event with
 * a timer re-armed since (t: the timer, its expiry the new one). The kernel
 * re-arms a TIME_WAIT for TCP_TIMEWAIT_LEN at any segment (a retransmitted
 * FIN): the state went on, and the walk's date holds. But the walk may have
 * come between a FIN_WAIT2's switch to TIME_WAIT and its re-arm (on another
 * CPU) and read FIN_WAIT2's expiry: then the new expiry dates TIME_WAIT's
 * start to within a jiffy of the walk, and that date is the right one.
 * t: a timer_start, timer_cancel or timer_expire_entry tracepoint's.
 */
static __always_inline void tw_walk_redate(struct tw_info *info, struct timer_list *t, __u64 now)
{
	__u64 expires, began;

	if (!(info->flags & INFO_WALK_DATED))
		return; /* (every other connection: one test) */
	expires = t->expires;
	if (expires == info->expires || !hz)
		return;
	info->flags &= ~INFO_WALK_DATED;
	if ((__u32)(expires - 60 * (__u64)hz) - info->walked > 1)
		return;
	began = timewait_began(expires, bpf_jiffies64(), now);
	if (began)
		info->state_ts = began;
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
				    const struct skc_head *h, struct timer_list *t, __u64 now, __u64 key,
				    bool same_expiry)
{
	__u8 substate = BPF_CORE_READ(tw, tw_substate);
	__u64 entered, expires, began;

	if (substate == info->state)
		return;
	/* An expiry unchanged since last seen: the timer is being re-armed for
	 * the change right now (timer_cancel fires before the new expiry is
	 * set). A changed one was rewritten in place: date the change from it.
	 * same_expiry: the expiry was rewritten to what it was (the FIN came
	 * in the jiffy FIN_WAIT2 began): date from it too. */
	entered = now;
	expires = BPF_CORE_READ(t, expires);
	if (substate == TCP_TIME_WAIT && hz && (expires != info->expires || same_expiry)) {
		/* (the expiry past when the timer fires late: it is firing now) */
		began = timewait_began(expires, bpf_jiffies64(), now);
		if (began)
			entered = began;
		if (info->state_ts && entered < info->state_ts)
			entered = info->state_ts;
	}
	event_init(e, EVENT_STATE, entered, tw_cookie(info, key));
	if (entered != now) {
		/* Found after it happened (by the walk, or at a later timer
		 * event): the task on the CPU now is not the one then. */
		e->cpu_pid = 0;
		e->cpu_comm[0] = 0;
	}
	e->old_state = info->state;
	e->new_state = substate;
	tw_duration(e, info, entered);
	tw_event(e, tw, h, info, t);
	/* TIME_WAIT ends 60 s after it began, whatever the timer says now
	 * (mid re-arm it still holds the FIN_WAIT2 expiry). */
	if (substate == TCP_TIME_WAIT && hz)
		e->timer_expires = e->jiffies + (TIMEWAIT_LEN_NS - (now - entered)) * hz / 1000000000ULL;
	emit(e);
	info->state = substate;
	info->state_ts = entered;
	info->flags &= ~INFO_SINCE_START;
	fw2_unwatch(key);
}

/*
 * A timewait socket armed for the first time: start following it. rearm: it
 * is not its first arm, only the first seen (tw_rearm_unseen): its state may
 * have begun before now, and its full socket's CLOSE is past.
 */
static __always_inline void tw_first_arm(struct inet_timewait_sock *tw, const struct skc_head *h,
					 struct timer_list *t, __u64 now, __u64 cookie, __u64 key, bool rearm)
{
	struct tw_info fresh = {};
	struct tw_last *last;
	__u32 zero = 0;

	/* Follow only the connections the filters want: tw_infos is bounded,
	 * and a host's other timewait sockets must not evict the ones asked
	 * about. */
	if (!head_wanted(h, &tw->__tw_common, NULL))
		return;
	fresh.cookie = cookie;
	fresh.state = BPF_CORE_READ(tw, tw_substate);
	fresh.state_ts = now;
	fresh.expires = t->expires;
	fresh.flags = rearm ? INFO_SINCE_START : INFO_HANDOVER;
	bpf_map_update_elem(&tw_infos, &key, &fresh, BPF_ANY);
	if (fresh.state == TCP_FIN_WAIT2)
		fw2_watch(tw, key, fresh.expires, BPF_ANY);
	if (cookie || rearm)
		return;
	/* No cookie to find it by: the full socket's CLOSE, next on this
	 * CPU, finds it here. */
	last = bpf_map_lookup_elem(&tw_lasts, &zero);
	if (!last)
		return;
	last->key = key;
	last->sport = SKC_FIELD(h, &tw->__tw_common, skc_num);
	last->dport = bpf_ntohs(SKC_FIELD(h, &tw->__tw_common, skc_dport));
	last->netns = head_netns(h, &tw->__tw_common);
}

/*
 * Notes, on timer_cancel, the removal of the timer of a timewait socket not
 * followed (no tw_infos entry), by its cookie: a timer_start for it next is
 * a re-arm. Only with a cookie: a timewait socket's address comes back at
 * once for the next one (the allocator's free list), and the next socket's
 * first arm, right after a kill of this one, would read as a re-arm.
 */
static __always_inline void tw_note_unseen_cancel(__u64 cookie)
{
	struct tw_cancel_last *last;
	__u32 zero = 0;

	last = bpf_map_lookup_elem(&tw_cancel_lasts, &zero);
	if (last)
		last->cookie = cookie;
}

/*
 * Whether a timewait timer now started, for a socket not followed, is the
 * second half of a re-arm (tw_cancel_lasts): the kernel reported the removal
 * of the same socket's timer on this CPU before. A cookie is never given
 * twice and a killed socket is not armed again, so the last removal noted
 * can be no other's. The first start of an unfollowed socket's timer here
 * after it ends the wait.
 */
static __always_inline bool tw_rearm_unseen(__u64 cookie)
{
	struct tw_cancel_last *last;
	__u32 zero = 0;
	bool rearm;

	if (!cookie)
		return false;
	last = bpf_map_lookup_elem(&tw_cancel_lasts, &zero);
	if (!last || !last->cookie)
		return false;
	rearm = last->cookie == cookie;
	last->cookie = 0;
	return rearm;
}

#endif
