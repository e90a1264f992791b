/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * A full socket's state between events: which connection it carries, its owner, why it closes,
 * and the births of accepted sockets.
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_SOCK_H
#define __TCPSTATE_SOCK_H

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
	info->cgroup = bpf_get_current_cgroup_id();
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
	event_owner(e, info->owner_src, info->pid, info->tid, info->cgroup, info->comm);
	emit(e);
	e->ts_ns = ts;
	e->old_state = old_state;
	e->new_state = new_state;
	e->flags &= ~EVF_OWNER;
	e->owner_src = OWNER_NONE;
	e->pid = 0;
	e->tid = 0;
	e->cgroup = 0;
	__builtin_memset(e->comm, 0, sizeof(e->comm));
	info->cookie = cookie;
	info->flags &= ~INFO_BORN;
}

#endif
