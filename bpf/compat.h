/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What differs between kernels, in one place: socket storage (5.11) and cookies (5.12) for
 * tracing programs, probed by user space; reset reasons (6.10). Each helper here works on every
 * kernel tcpstate supports (5.10+). Two behaviours follow the flags elsewhere, said there: an
 * accepted socket inherits its listener's owner through cloned storage (child_born), and without
 * cookies a full socket finds its timewait socket through the one armed last (tw_taking_over).
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_COMPAT_H
#define __TCPSTATE_COMPAT_H

/*
 * What the running kernel lets tracing programs do, probed by user space
 * before loading (tracer/kernel.go). Code behind a false flag is dead: the
 * verifier never visits it, so helpers the kernel lacks may appear there.
 */
volatile const bool have_sk_storage = true;	/* bpf_sk_storage_get: Linux 5.11 */
volatile const bool have_cookie = true;		/* bpf_get_socket_cookie: Linux 5.12 */

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
 * The kernel's cookie of a socket (a BTF pointer, full or timewait), made now
 * if it had none; before Linux 5.12 only read: 0 unless something made it
 * (ss, SO_COOKIE).
 */
static __always_inline __u64 skc_cookie(const struct sock_common *skc)
{
	if (have_cookie)
		return bpf_get_socket_cookie((void *)skc);
	return BPF_CORE_READ(skc, skc_cookie.counter);
}

static __always_inline __u64 kernel_cookie(const struct sock *sk)
{
	return skc_cookie(&sk->__sk_common);
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
 * The tracer's state of a socket reached through a timer (no BTF pointer), if
 * it is kept by address (before Linux 5.11); socket storage cannot be read
 * from there.
 */
static __always_inline struct sk_info *sk_info_by_addr(const void *sk)
{
	__u64 key = (__u64)sk;

	if (have_sk_storage)
		return NULL;
	return bpf_map_lookup_elem(&sk_info_map, &key);
}

/*
 * Whether info was written for another socket than the one now changing from
 * oldstate with this kernel cookie: then the socket is new to the tracer.
 * Socket storage is the socket's own, unless it was cloned from the listener
 * with the socket (a different cookie tells). An entry keyed by address is
 * another socket's when the cookies differ, and whenever a socket leaves
 * CLOSE. (A socket born from a listener is child_born's.)
 */
static __always_inline bool is_new(const struct sk_info *info, __u64 cookie, int oldstate)
{
	if (have_sk_storage && have_cookie)
		return info->cookie != cookie;
	return !info->cookie || (cookie && info->cookie != cookie) || oldstate == TCP_CLOSE;
}

/*
 * Where a TCP socket's keepalive timer lives: sk->sk_timer until the kernel
 * gave it a field of its own, icsk->icsk_keepalive_timer ("tcp: introduce
 * icsk->icsk_keepalive_timer", Linux 6.19, queued for stable kernels from 6.1
 * in October 2026). As an offset from the socket; the flavour below names the
 * new field for kernels whose BTF has it (this build's vmlinux.h has not).
 */
struct inet_connection_sock___ka_timer {
	struct timer_list icsk_keepalive_timer;
} __attribute__((preserve_access_index));

static __always_inline __u32 ka_timer_offset(void)
{
	if (bpf_core_field_exists(struct inet_connection_sock___ka_timer, icsk_keepalive_timer))
		return bpf_core_field_offset(struct inet_connection_sock___ka_timer, icsk_keepalive_timer);
	return bpf_core_field_offset(struct sock, sk_timer);
}

/* The kernel's reset reason for a keepalive kill, where it has reasons (6.10). */
static __always_inline __u16 ka_rst_reason(void)
{
	if (bpf_core_enum_value_exists(enum sk_rst_reason, SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT))
		return bpf_core_enum_value(enum sk_rst_reason, SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT);
	return 0;
}

#endif
