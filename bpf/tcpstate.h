/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The layout shared by the BPF programs and the Go decoder (tracer/decode.go). */
#ifndef __TCPSTATE_H
#define __TCPSTATE_H

#define TASK_COMM_LEN 16

enum event_type {
	EVENT_STATE = 1,	/* a state change, of a full socket or (EVF_TIMEWAIT) a timewait socket */
	EVENT_RESET,		/* this socket sent a RST after it reached CLOSE (linger 0, unread data) */
	EVENT_TW_CANCEL,	/* a timewait timer removed before it was due: killed, unless EVENT_TW_REARM follows */
	EVENT_TW_REARM,		/* a timewait timer armed again in the same substate */
	EVENT_KEEPALIVE,	/* the keepalive timer acted: event.ka_event says how */
	EVENT_TW_HANDOVER,	/* a timewait socket took over the connection in the same state (FIN_WAIT2) */
};

/* event.ka_event */
enum ka_event {
	KA_ARMED = 1,	/* timer armed: timer_expires says when it fires */
	KA_FIRED,	/* timer fired (it will probe, or re-arm for the rest of the idle time) */
	KA_PROBE,	/* a probe went out: ka_probe is its number */
	KA_ANSWERED,	/* the peer answered: probes reset (seen at the next fire) */
	KA_TIMEOUT,	/* no answer to ka_count probes (or TCP_USER_TIMEOUT): connection killed */
	KA_FIN_WAIT2,	/* the timer acting for an orphaned FIN_WAIT2 (tcp_fin_timeout > 60 s) */
};

/* event.ka_src bits */
enum ka_src {
	KA_ON = 1 << 0,			/* SO_KEEPALIVE set */
	KA_IDLE_SOCKET = 1 << 1,	/* TCP_KEEPIDLE set on the socket, else the namespace sysctl */
	KA_INTVL_SOCKET = 1 << 2,	/* TCP_KEEPINTVL */
	KA_COUNT_SOCKET = 1 << 3,	/* TCP_KEEPCNT */
	KA_PENDING = 1 << 4,		/* iter_rec: the keepalive timer is armed */
};

/* Why a connection reached CLOSE (event.reason). */
enum close_reason {
	REASON_NONE = 0,
	REASON_FIN,		/* orderly: FIN exchange completed (LAST_ACK, CLOSING, ...) */
	REASON_RST_RECEIVED,
	REASON_RST_SENT,	/* rst_reason holds the kernel's enum sk_rst_reason */
	REASON_TIMEOUT,		/* sk_err ETIMEDOUT: retransmissions, keepalive or user timeout */
	REASON_REFUSED,		/* sk_err ECONNREFUSED */
	REASON_CLOSED,		/* closed by its owner with no connection (listener, unconnected) */
	REASON_ERROR,		/* another socket error (sk_err) */
	REASON_TW_EXPIRED,	/* TIME_WAIT ran its 60 s */
	REASON_FIN_TIMEOUT,	/* orphaned FIN_WAIT2 gave up after tcp_fin_timeout */
	REASON_TW_KILLED,	/* a timewait socket removed early (reuse, RST) */
};

/* Bits of event.flags. */
enum event_flag {
	EVF_DURATION = 1 << 0,	/* duration_ns holds the time spent in old_state */
	EVF_OWNER = 1 << 1,	/* pid, tid and comm name the socket's owner */
	EVF_TIMEWAIT = 1 << 2,	/* the new state lives in a timewait socket */
	EVF_DURATION_MIN = 1 << 3,	/* the state began before the tracer: duration_ns is a lower bound */
	EVF_UNSEEN = 1 << 4,	/* EVENT_TW_REARM: of a timewait socket not followed before (its earlier events unseen) */
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
	STAT_SEEN,	/* events produced: delivered + filtered + lost */
	STAT_FILTERED,	/* dropped by the in-kernel filters */
	STAT_LOST,	/* ring buffer full: event lost */
	STAT_NOSTORAGE,	/* no socket storage could be had: owner and duration unknown */
	STAT_TW_UNTRACKED,	/* timewait socket the filters want, not in tw_infos (evicted, or older than the tracer) */
	STAT_CAUGHT,	/* state changes handle_set_state missed that catch_set_state took */
	STAT_MAX,
};

/* Naturally aligned, no padding holes the compiler could fill differently. */
struct event {
	__u64 ts_ns;		/* CLOCK_BOOTTIME */
	__u64 cookie;		/* socket cookie: one id for the connection's whole life */
	__u64 duration_ns;	/* time spent in old_state, valid with EVF_DURATION */
	__u64 timer_expires;	/* EVF_TIMEWAIT: when the timewait timer fires, in jiffies */
	__u64 jiffies;		/* jiffies when the event fired, to convert timer_expires */
	__u64 cgroup;		/* owner's cgroup v2 id when it became the owner, valid with EVF_OWNER */
	__u32 netns;		/* network namespace inode */
	__u32 pid;		/* owner tgid, valid with EVF_OWNER */
	__u32 tid;		/* owner thread */
	__u32 cpu_pid;		/* tgid of the task on the CPU when the event fired */
	__s32 sk_err;		/* sk->sk_err on transitions to CLOSE */
	__u16 family;		/* AF_INET or AF_INET6; v4-mapped IPv6 reported as AF_INET */
	__u16 sport;		/* local port, host order */
	__u16 dport;		/* remote port, host order */
	__u16 rst_reason;	/* enum sk_rst_reason, with REASON_RST_SENT and EVENT_RESET */
	__u8 type;		/* enum event_type */
	__u8 old_state;
	__u8 new_state;
	__u8 owner_src;		/* enum owner_src */
	__u8 flags;		/* EVF_* */
	__u8 reason;		/* enum close_reason, on transitions to CLOSE */
	__u8 ka_event;		/* EVENT_KEEPALIVE: enum ka_event */
	__u8 ka_probe;		/* probes sent and unanswered (icsk_probes_out) */
	__u8 ka_count;		/* effective keepalive_probes */
	__u8 ka_src;		/* enum ka_src */
	__u8 _pad[2];
	__u32 ka_idle;		/* effective keepalive_time, jiffies */
	__u32 ka_intvl;		/* effective keepalive_intvl, jiffies */
	__u32 ka_user_timeout;	/* TCP_USER_TIMEOUT, ms (0: unset) */
	__u32 cpu;		/* the CPU the event fired on */
	__u8 saddr[16];		/* local address; IPv4 in the first 4 bytes */
	__u8 daddr[16];		/* remote address */
	char comm[TASK_COMM_LEN];	/* owner */
	char cpu_comm[TASK_COMM_LEN];	/* task on the CPU */
};

/* sk_info.flags and tw_info.flags */
enum info_flag {
	INFO_SINCE_START = 1 << 0,	/* state_ts is when the tracer started, not when the state began */
	INFO_RST_RECEIVED = 1 << 1,
	INFO_RST_SENT = 1 << 2,
	INFO_HANDOVER = 1 << 3,		/* tw_info: the full socket's CLOSE has not been seen yet */
	INFO_BORN = 1 << 4,		/* sk_info: born from a listener at state_ts, not reported yet */
	INFO_WALK_DATED = 1 << 5,	/* tw_info: a TIME_WAIT the walk dated from its timer, at jiffy `walked` */
};

/* Per-socket state kept in socket storage. */
struct sk_info {
	__u64 cookie;		/* the socket this was written for: differs when cloned from a listener */
	__u64 state_ts;		/* when the tracer saw the socket enter `state`; 0: not seen */
	__u64 cgroup;		/* the owner's cgroup v2 id */
	__u32 pid;
	__u32 tid;
	__u16 rst_reason;
	__u8 state;
	__u8 owner_src;
	__u8 flags;		/* INFO_* */
	__u8 _pad[3];
	char comm[TASK_COMM_LEN];
};

/* A connection living in a timewait socket (tw_infos), keyed by cookie. */
struct tw_info {
	__u64 cookie;		/* the connection's: differs from the key when the timewait socket has no cookie */
	__u64 state_ts;		/* when the connection entered `state` (carried over from the full socket) */
	__u64 expires;		/* the timer's expiry when last seen armed, jiffies */
	__u64 cgroup;
	__u32 pid;
	__u32 tid;
	__u8 state;		/* tw_substate: FIN_WAIT2 or TIME_WAIT */
	__u8 owner_src;
	__u8 flags;		/* INFO_* */
	__u8 _pad;
	__u32 walked;		/* INFO_WALK_DATED: when the walk read the timer, jiffies (low 32 bits) */
	char comm[TASK_COMM_LEN];
};

/* One socket as found by the iter/tcp walk at start-up. */
struct iter_rec {
	__u64 cookie;
	__u64 ino;		/* socket inode, to find the owning process in /proc; 0 for timewait/request */
	__u64 timer_expires;	/* timewait: its timer, in jiffies */
	__u64 jiffies;		/* when the record was written */
	__u64 ts_ns;		/* CLOCK_BOOTTIME, when the record was written */
	__u32 netns;
	__u32 uid;
	__u32 rcv_tstamp;	/* full sockets: last ACK received, tcp_jiffies32 */
	__u32 lsndtime;		/* full sockets: last data sent, tcp_jiffies32 */
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u8 state;		/* sk_state; for timewait sockets the tw_substate */
	__u8 timewait;		/* 1: a timewait socket */
	__u8 end;		/* 1: the trailer written after the last socket (no socket data) */
	__u8 ka_src;		/* enum ka_src, with KA_PENDING */
	__u8 ka_probes;		/* socket's TCP_KEEPCNT (0: unset) */
	__u8 probes_out;
	__u8 _pad[4];
	__u32 ka_time;		/* socket's TCP_KEEPIDLE, jiffies (0: unset) */
	__u32 ka_intvl;		/* socket's TCP_KEEPINTVL, jiffies (0: unset) */
	__u32 lrcvtime;		/* last data received, tcp_jiffies32 */
	__u32 user_timeout;	/* ms */
	__u64 ka_expires;	/* keepalive timer expiry, jiffies, with KA_PENDING */
	__u8 saddr[16];
	__u8 daddr[16];
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
