/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The maps: the event stream, counters, per-socket and per-timewait-socket state, filters.
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_MAPS_H
#define __TCPSTATE_MAPS_H

/*
 * Event stream to user space. Sized by user space (--ringbuf-size). Entries are
 * reserved by reserve_event() and consumed by tracer.(*Tracer).Run.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
	__type(value, struct event);
} events SEC(".maps");

/*
 * Counters (enum stat_index), per CPU so that the hot path never contends.
 * Only ever incremented here; read and summed by user space.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/*
 * Per-socket state. Created on a socket's first state change, read/write or
 * reset seen by the tracer, or by the start-up walk; freed by the kernel with
 * the socket. BPF_F_CLONE copies a listener's entry into each socket accepted
 * from it, which is how an accepted socket learns its listener's owner before
 * anyone calls accept().
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct sk_info);
} sk_infos SEC(".maps");

/*
 * Per-socket state where tracing programs cannot use socket storage (before
 * Linux 5.11): keyed by the socket's address, which the kernel reuses quickly,
 * so an entry only counts for the socket it was written for (sk_info_get).
 * Entries are added like socket storage and age out of the LRU (a closed
 * socket's entry is kept for the RST that may follow its CLOSE). Sized by user
 * space; one entry when socket storage is used.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct sk_info);
} sk_info_map SEC(".maps");

/*
 * Per CPU: the timewait socket armed last, when it had no cookie to find it
 * by. tcp_time_wait() arms its timer and closes the full socket right after,
 * on the same CPU; the full socket's CLOSE then finds its timewait socket here.
 */
struct tw_last {
	__u64 key;
	__u16 sport;
	__u16 dport;
	__u32 netns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_last);
} tw_lasts SEC(".maps");

/*
 * Per CPU: the cookie of the timewait socket whose timer was removed last
 * here while tcpstate did not follow it (older than the tracer, evicted, or
 * its first arm never reported). The kernel moves a pending timer in one
 * stretch with interrupts off (__mod_timer: timer_cancel, then timer_start on
 * the same CPU), so a timer_start for it next is a re-arm, not a new timewait
 * socket after a kill.
 */
struct tw_cancel_last {
	__u64 cookie;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_cancel_last);
} tw_cancel_lasts SEC(".maps");

/* Per CPU: the next connection id made here when the kernel has no cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} next_ids SEC(".maps");

/*
 * Connections living in timewait sockets, keyed by cookie (or, for a socket
 * whose cookie was never generated, by the timewait socket's address). Added
 * when a timewait timer is first armed (or by the start-up walk), deleted when
 * it fires or is cancelled for good. LRU: a host with more timewait sockets
 * than entries loses the oldest, counted in STAT_TW_UNTRACKED when they end.
 * Sized by user space.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tw_info);
} tw_infos SEC(".maps");

/*
 * Timewait sockets still in FIN_WAIT2 whose peer's FIN could still go
 * unseen, keyed as in tw_infos. The FIN turns the socket TIME_WAIT and re-arms
 * its timer for TCP_TIMEWAIT_LEN; when the new expiry stays in the same
 * timer-wheel bucket the kernel only rewrites timer->expires, with no
 * tracepoint. That can happen only while the new expiry, the FIN's time plus
 * 60 s, is within a bucket's granularity of the old one: for a first arm of
 * 60 s, in its first 2 s at HZ=250. Later, a FIN moves the timer to another
 * bucket, and timer_start reports it. iter_fin_wait2 walks this map (user
 * space runs it every 100 ms) to find the silent ones. Added when a timewait
 * socket is followed in FIN_WAIT2 (first arm, start-up walk) inside that
 * window, deleted when it is seen in TIME_WAIT, ends, is found gone, or
 * leaves the window. LRU, sized as tw_infos.
 */
struct fw2_entry {
	__u64 addr;	/* the inet_timewait_sock */
	__u64 until;	/* jiffies: after this a FIN comes with timer_start (with a bucket's margin) */
	__u64 turned;	/* seen in TIME_WAIT with its FIN_WAIT2 expiry (see iter_fin_wait2) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct fw2_entry);
} tw_fin_wait2 SEC(".maps");

/*
 * Keepalive state between timer fires, keyed by cookie: probes outstanding
 * after the last fire, to tell when the peer answered. Written at each fire's
 * end, deleted when the connection dies of it. LRU, sized by user space.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} ka_probes SEC(".maps");

/*
 * From a keepalive timer's entry to its exit on the same CPU (timer callbacks
 * do not migrate): the socket, and its probes and state before the callback.
 */
struct ka_fire {
	__u64 timer;
	__u8 probes_out;
	__u8 state;
	__u8 owner_src;		/* the owner, noted by the CLOSE a keepalive kill makes */
	__u8 orphan_fw2;	/* an orphan in FIN_WAIT2: the timer is its FIN_WAIT2 timeout */
	__u8 _pad[4];
	__u32 pid;
	__u32 tid;
	__u64 cgroup;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ka_fire);
} ka_fires SEC(".maps");

/* Filter sets, written by user space before attaching, read-only here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);	/* port, host order */
	__type(value, __u8);	/* PORT_* bits this port is listed under */
} filter_port_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 256);
	__type(key, struct addr_key);
	__type(value, __u8);
} filter_addr_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);	/* owner tgid */
	__type(value, __u8);
} filter_pid_map SEC(".maps");

/*
 * Per CPU: the state changes handle_set_state ran for and catch_set_state has
 * not yet passed. catch_set_state runs after handle_set_state in each
 * tracepoint call, on the same CPU: it finds its change here and frees the
 * slot, or it takes the change over, because the kernel skipped
 * handle_set_state for it. That happens when the change interrupts a run of
 * handle_set_state on this CPU, including the kernel's own entry and exit
 * around the run, where the program cannot note that it is running (a depth
 * counted inside the program missed those: a few changes in a million were
 * lost under churn).
 *
 * A call is known by where the kernel put its arguments (the programs' ctx):
 * bpf_trace_runN copies them to an array in its frame, and the tracepoint's
 * __traceiter_* calls it from the same frame for each program, so both
 * programs of one call get the same address. Two calls under way on one CPU
 * never share it: a nested one runs deeper on the same stack, or on another
 * stack. So a slot whose call lay where this one does was left by a call
 * that ended, and is taken again.
 *
 * Slots are also left by changes whose catch_set_state the kernel skipped
 * (they came while it was running on the CPU, its entry and exit included;
 * any number in one softirq), and by changes before catch_set_state was
 * attached. With no slot free, the one taken longest ago is taken. A call
 * under way loses its slot only if SEEN_MAX - 1 others, at other addresses,
 * are taken while it waits between its two programs; its change is then
 * reported twice. The older design, a stack whose full top was replaced,
 * reported changes twice whenever a softirq came between the two programs
 * after left entries had filled it.
 */
#define SEEN_MAX 32
_Static_assert((SEEN_MAX & (SEEN_MAX - 1)) == 0, "slots are indexed with a mask");

struct set_state_seen {
	__u64 ctx[SEEN_MAX];	/* the call's argument array; 0: free */
	__u64 sk[SEEN_MAX];
	__u64 ts[SEEN_MAX];	/* when taken (bpf_ktime_get_boot_ns) */
	__u32 trans[SEEN_MAX];	/* seen_trans() */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct set_state_seen);
} set_state_seens SEC(".maps");

#endif
