/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The layout shared by the BPF programs and the Go decoder (tracer/decode.go). */
#ifndef __TCPSTATE_H
#define __TCPSTATE_H

#define TASK_COMM_LEN 16

enum event_type {
	EVENT_STATE = 1,	/* inet_sock_set_state on a TCP socket */
};

/* Bits of event.flags. */
enum event_flag {
	EVF_DURATION = 1 << 0,	/* duration_ns holds the time spent in old_state */
	EVF_OWNER = 1 << 1,	/* pid, tid and comm name the socket's owner */
};

/* Where the owner was learnt, weakest first. */
enum owner_src {
	OWNER_NONE = 0,
	OWNER_LISTENER,	/* inherited from the listening socket an accepted socket was cloned from */
	OWNER_IO,	/* first task to read or write the socket (the acceptor, for accepted sockets) */
	OWNER_CONNECT,	/* called connect() */
	OWNER_LISTEN,	/* called listen() */
	OWNER_CLOSE,	/* called close() or shutdown() */
};

/* Indexes of the per-CPU counters in the `stats` map. */
enum stat_index {
	STAT_SEEN,	/* TCP state changes seen */
	STAT_FILTERED,	/* dropped by the in-kernel filters */
	STAT_LOST,	/* ring buffer full: event lost */
	STAT_NOSTORAGE,	/* no socket storage could be had: owner and duration unknown */
	STAT_MAX,
};

/* Naturally aligned, no padding holes the compiler could fill differently. */
struct event {
	__u64 ts_ns;		/* CLOCK_BOOTTIME */
	__u64 cookie;		/* socket cookie: one id for the connection's whole life */
	__u64 duration_ns;	/* time spent in old_state, valid with EVF_DURATION */
	__u32 netns;		/* network namespace inode */
	__u32 pid;		/* owner tgid, valid with EVF_OWNER */
	__u32 tid;		/* owner thread */
	__u32 cpu_pid;		/* tgid of the task on the CPU when the event fired */
	__s32 sk_err;		/* sk->sk_err on transitions to CLOSE */
	__u16 family;		/* AF_INET or AF_INET6; v4-mapped IPv6 reported as AF_INET */
	__u16 sport;		/* local port, host order */
	__u16 dport;		/* remote port, host order */
	__u8 type;		/* enum event_type */
	__u8 old_state;
	__u8 new_state;
	__u8 owner_src;		/* enum owner_src */
	__u8 flags;		/* EVF_* */
	__u8 _pad;
	__u8 saddr[16];		/* local address; IPv4 in the first 4 bytes */
	__u8 daddr[16];		/* remote address */
	char comm[TASK_COMM_LEN];	/* owner */
	char cpu_comm[TASK_COMM_LEN];	/* task on the CPU */
};

/* Per-socket state kept in socket storage. */
struct sk_info {
	__u64 cookie;		/* the socket this was written for: differs when cloned from a listener */
	__u64 state_ts;		/* when the tracer saw the socket enter `state`; 0: not seen */
	__u32 pid;
	__u32 tid;
	__u8 state;
	__u8 owner_src;
	__u8 _pad[6];
	char comm[TASK_COMM_LEN];
};

/* Bits of the in-kernel port filter (values of `filter_port_map`). */
enum port_side {
	PORT_EITHER = 1 << 0,
	PORT_LOCAL = 1 << 1,
	PORT_REMOTE = 1 << 2,
};

struct addr_key {
	__u32 prefixlen;	/* LPM trie key: IPv4 stored v4-mapped, prefix + 96 */
	__u8 addr[16];
};

#endif /* __TCPSTATE_H */
