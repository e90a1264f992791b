/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Owners learnt from I/O: the first task to read or write an accepted socket (Linux 6.3).
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_OWNER_IO_H
#define __TCPSTATE_OWNER_IO_H

/*
 * The first task to read or write a socket whose owner is unknown or only
 * inherited from its listener becomes its owner: for an accepted socket, that
 * is the process that accepted it. Runs on every send and receive in the
 * system, so it leaves as early as it can.
 */
static __always_inline void note_io(struct sock *sk)
{
	struct sk_info *info;

	if (!sk || sk->sk_protocol != IPPROTO_TCP || !netns_wanted(&sk->__sk_common))
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

#endif
