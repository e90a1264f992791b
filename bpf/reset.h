/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Resets received and sent, with the kernel's reason where it has one (6.10).
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_RESET_H
#define __TCPSTATE_RESET_H

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
	READ_ENDPOINTS(&sk->__sk_common, &e.family, &e.sport, &e.dport, e.saddr, e.daddr, DIRECT_READ, DIRECT_ADDR6);
	if (!e.sport)
		e.sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	event_owner(&e, info->owner_src, info->pid, info->tid, info->cgroup, info->comm);
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

#endif
