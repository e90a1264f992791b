/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Settings from user space, fixed before loading (tracer.Config, the kernel's addresses), and constants.
 * Part of tcpstate.bpf.c (one object): included there, in order.
 */
#ifndef __TCPSTATE_CONFIG_H
#define __TCPSTATE_CONFIG_H

/* Set from user space before loading (tracer.Config). Zero means "no filter". */
volatile const __u16 filter_family;	/* AF_INET or AF_INET6 */
volatile const __u32 filter_netns;	/* network namespace inode */
volatile const __u32 filter_states;	/* bit (1 << state); matches old or new state */
volatile const __u8 filter_ports;	/* PORT_* bits in use in filter_port_map */
volatile const bool filter_addrs;	/* filter_addr_map in use */
volatile const bool filter_pids;	/* filter_pid_map in use */
volatile const char filter_comm[TASK_COMM_LEN];	/* owner comm, exact */

/* Kernel addresses from /proc/kallsyms; 0 disables what depends on them. */
volatile const __u64 tw_timer_fn;	/* tw_timer_handler */
volatile const __u64 ka_timer_fn;	/* tcp_keepalive_timer */
volatile const __u32 hz = 250;		/* CONFIG_HZ, to turn jiffies into time */
/*
 * Jiffies from a timewait FIN_WAIT2 timer's expiry back to the end of its
 * watch: one bucket's width after the last moment the peer's FIN may re-arm
 * it within its timer-wheel bucket, with no timer_start. TCP_TIMEWAIT_LEN
 * less twice the granularity of the level that holds it
 * (tracer.fw2SilentLead). 0: always watched.
 */
volatile const __u64 fw2_silent_lead;
/* Wake the reader only when this much is waiting (0: at every event); it
 * also reads every 100 ms. Saves a wakeup per event under load. */
volatile const __u64 wakeup_bytes;

#define TIMEWAIT_LEN_NS	(60ULL * 1000000000ULL)	/* TCP_TIMEWAIT_LEN, fixed in the kernel */

#endif
