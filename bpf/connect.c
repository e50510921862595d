// SPDX-License-Identifier: GPL-2.0
/*
 * Outbound TCP connects, IPv4 and IPv6, with their outcome.
 *
 * Identity is taken where the caller is the current task: sock_ops'
 * TCP_CONNECT callback runs inside connect(2), as the SYN is built. It is
 * kept in a map keyed by socket cookie, because the outcome arrives later,
 * in softirq context, where the current task is whoever happened to be
 * running. sock_ops reports the outcome: ACTIVE_ESTABLISHED for success, and
 * the STATE callback (switched on per socket at TCP_CONNECT) for a socket
 * that closes before it was established, with sk_err telling refused from
 * timed out from unreachable. The entry goes once the outcome is reported.
 *
 * A connect that fails inside the syscall, before any SYN is sent (no route,
 * a local firewall), never reaches TCP_CONNECT. cgroup/connect4 and
 * connect6, which see every TCP connect(2) first, arm a per-thread record
 * of the destination (task storage) that TCP_CONNECT disarms; the syscall
 * exit tracepoint reports an armed one with the syscall's error.
 *
 * A hash map rather than socket storage: allocating socket storage on every
 * connect cost several times more than the rest of the path together.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kernel.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6

/* include/net/tcp_states.h */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

#define EINPROGRESS 115
#define TASK_COMM_LEN 16

enum kind {
	KIND_CONNECT = 1,
	KIND_EXIT = 2, /* a process ended: user space forgets what it cached of it */
};

/* Where the kernel knew the outcome; user space maps it to a name. */
enum outcome {
	OUTCOME_ESTABLISHED = 1,
	/* closed before established: the reason is in err (sk_err, 0 when the caller closed) */
	OUTCOME_CLOSED = 2,
	/* connect(2) failed before a SYN was sent: the reason is in err (-return value) */
	OUTCOME_SYSCALL_ERROR = 3,
};

enum stat {
	STAT_RINGBUF_FULL = 0, /* bpf_ringbuf_reserve failed: an event lost */
	STAT_CONN_FULL = 1,    /* no room to track a connect: its event is lost */
	STAT_PENDING_FULL = 2, /* no task storage for the record: a syscall failure would go unseen */
	STAT_EXIT_LOST = 3,    /* no room for a process exit: its cache entry ages out instead */
	STAT_MAX = 4,
};

/* Identity of the caller, captured inside connect(2). */
struct caller {
	__u64 cgroup_id;
	__u64 task_start; /* group leader start time, ns since boot: with tgid, names the process */
	__u64 start_ns;   /* when connect(2) was called, ns since boot */
	__u32 tgid;
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u32 netns;
	__u8 comm[TASK_COMM_LEN];
	__u32 _pad;
};

struct event {
	__u64 cookie; /* socket cookie: joins every event of one connection */
	__u64 ts_ns;  /* when the outcome was known, ns since boot */
	struct caller caller;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host byte order */
	__u16 dport; /* host byte order */
	__u16 family;
	__u8 kind;
	__u8 outcome;
	__s32 err;
	__u32 _pad;
};

/* Referenced so that their BTF, and so their Go bindings, exist. */
const struct event *unused_event __attribute__((unused));
const enum outcome *unused_outcome __attribute__((unused));
const enum kind *unused_kind __attribute__((unused));
const enum stat *unused_stat __attribute__((unused));

/*
 * The connect(2) in flight on this thread, armed until it reaches
 * tcp_connect(). Kept in task storage: a thread that connects again reuses
 * its slot, so the common path allocates nothing and hashes nothing.
 */
struct pending {
	__u64 cookie;
	__u8 daddr[16];
	__u16 dport;
	__u16 family;
	__u32 netns;
	__u8 armed;
	__u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* resized by the loader */
} events SEC(".maps");

/*
 * Connects whose outcome is not known yet, by socket cookie. Not an LRU:
 * an eviction would lose an event without a trace, while a full map fails
 * the insert, which is counted. Every tracked socket reaches ESTABLISHED or
 * CLOSE, where its entry goes; user space sweeps what some other program
 * kept from getting there.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768); /* resized by the loader */
	__type(key, __u64);
	__type(value, struct caller);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pending);
} pendings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/*
 * Wake the reader only once this much is waiting; a timer in user space
 * collects the rest. A wakeup per event costs far more than the event.
 */
volatile const __u64 wakeup_bytes = 1 << 20;

static __always_inline void count(enum stat s)
{
	__u32 key = s;
	__u64 *v = bpf_map_lookup_elem(&stats, &key);
	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline void submit(struct event *e)
{
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

static __always_inline void fill_caller(struct caller *c)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	c->tgid = pid_tgid >> 32;
	c->tid = (__u32)pid_tgid;
	c->uid = (__u32)uid_gid;
	c->gid = uid_gid >> 32;
	c->cgroup_id = bpf_get_current_cgroup_id();
	c->task_start = BPF_CORE_READ(task, group_leader, start_boottime);
	c->start_ns = bpf_ktime_get_boot_ns();
	c->netns = 0;
	c->_pad = 0;
	bpf_get_current_comm(&c->comm, sizeof(c->comm));
}

static __always_inline __u32 sock_netns(struct bpf_sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	return BPF_CORE_READ((struct sock *)tp, __sk_common.skc_net.net, ns.inum);
}

static __always_inline int on_connect(struct bpf_sock_addr *ctx, __u16 family)
{
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;

	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;

	struct pending *p = bpf_task_storage_get(&pendings, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!p) {
		count(STAT_PENDING_FULL);
		return 1;
	}
	p->cookie = bpf_get_socket_cookie(ctx);
	p->family = family;
	p->dport = bpf_ntohs(ctx->user_port);
	p->netns = sock_netns(sk);
	__builtin_memset(p->daddr, 0, sizeof(p->daddr));
	if (family == AF_INET) {
		__builtin_memcpy(p->daddr, &ctx->user_ip4, 4);
	} else {
		/* the context allows only 4-byte loads of user_ip6 */
		__u32 *d = (__u32 *)p->daddr;
		d[0] = ctx->user_ip6[0];
		d[1] = ctx->user_ip6[1];
		d[2] = ctx->user_ip6[2];
		d[3] = ctx->user_ip6[3];
	}
	p->armed = 1;
	return 1;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, AF_INET);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, AF_INET6);
}

static __always_inline void emit(struct bpf_sock_ops *skops, __u64 cookie, struct caller *c, __u8 outcome, __s32 err)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		return;
	}
	e->cookie = cookie;
	e->ts_ns = bpf_ktime_get_boot_ns();
	__builtin_memcpy(&e->caller, c, sizeof(*c));
	e->kind = KIND_CONNECT;
	e->outcome = outcome;
	e->err = err;
	e->family = skops->family;
	e->sport = skops->local_port;            /* host byte order already */
	e->dport = bpf_ntohl(skops->remote_port); /* network order in the high half */
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (skops->family == AF_INET) {
		__u32 s = skops->local_ip4, d = skops->remote_ip4;
		__builtin_memcpy(e->saddr, &s, 4);
		__builtin_memcpy(e->daddr, &d, 4);
	} else {
		__u32 *s = (__u32 *)e->saddr, *d = (__u32 *)e->daddr;
		s[0] = skops->local_ip6[0];
		s[1] = skops->local_ip6[1];
		s[2] = skops->local_ip6[2];
		s[3] = skops->local_ip6[3];
		d[0] = skops->remote_ip6[0];
		d[1] = skops->remote_ip6[1];
		d[2] = skops->remote_ip6[2];
		d[3] = skops->remote_ip6[3];
	}
	e->_pad = 0;
	submit(e);
}

static __always_inline int sock_err(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	return BPF_CORE_READ((struct sock *)tp, sk_err);
}

/*
 * report emits the outcome of a tracked connect and forgets it. The STATE
 * callback flag is left alone: another program (another callscope during a
 * rolling update, say) may still need it for the same socket.
 */
static __always_inline void report(struct bpf_sock_ops *skops, __u8 outcome, __s32 err)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct caller *c = bpf_map_lookup_elem(&conns, &cookie);
	if (!c)
		return; /* not an outbound connect seen at TCP_CONNECT */
	emit(skops, cookie, c, outcome, err);
	bpf_map_delete_elem(&conns, &cookie);
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		/* Inside connect(2), as the caller: the SYN goes out, so connect4's
		 * record of a possible syscall failure is not needed. */
		struct pending *p = bpf_task_storage_get(&pendings, bpf_get_current_task_btf(), 0, 0);
		if (p)
			p->armed = 0;

		struct bpf_sock *sk = skops->sk;
		if (!sk)
			return 1;
		struct caller c;
		fill_caller(&c);
		c.netns = sock_netns(sk);
		__u64 cookie = bpf_get_socket_cookie(skops);
		if (bpf_map_update_elem(&conns, &cookie, &c, BPF_ANY)) {
			count(STAT_CONN_FULL);
			return 1;
		}
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	}
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: /* simultaneous open of an outbound socket */
		report(skops, OUTCOME_ESTABLISHED, 0);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == TCP_CLOSE)
			report(skops, OUTCOME_CLOSED, sock_err(skops));
		return 1;
	}
	return 1;
}

/* tracefs: events/syscalls/sys_exit_connect/format */
struct sys_exit_ctx {
	__u64 common;
	__s32 syscall_nr;
	__u32 _pad;
	__s64 ret;
};

SEC("tracepoint/syscalls/sys_exit_connect")
int connect_exit(struct sys_exit_ctx *ctx)
{
	struct pending *p = bpf_task_storage_get(&pendings, bpf_get_current_task_btf(), 0, 0);
	if (!p || !p->armed)
		return 0;
	p->armed = 0;
	if (ctx->ret == 0 || ctx->ret == -EINPROGRESS)
		return 0;

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		return 0;
	}
	e->cookie = p->cookie;
	/* Still the caller's thread: its identity is current. */
	fill_caller(&e->caller);
	e->caller.netns = p->netns;
	e->ts_ns = e->caller.start_ns;
	e->kind = KIND_CONNECT;
	e->outcome = OUTCOME_SYSCALL_ERROR;
	e->err = (__s32)-ctx->ret;
	e->family = p->family;
	e->sport = 0;
	e->dport = p->dport;
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, p->daddr, sizeof(e->daddr));
	e->_pad = 0;
	submit(e);
	return 0;
}

/*
 * The last thread of a process is exiting: tell user space, so that its
 * cache of process facts does not keep the dead. Only the tgid and start
 * time are sent; they are what the cache is keyed by.
 */
SEC("tracepoint/sched/sched_process_exit")
int process_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	/* do_exit() decrements signal->live before this tracepoint fires. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_EXIT_LOST);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = KIND_EXIT;
	e->caller.tgid = bpf_get_current_pid_tgid() >> 32;
	e->caller.task_start = BPF_CORE_READ(task, group_leader, start_boottime);
	e->ts_ns = bpf_ktime_get_boot_ns();
	submit(e);
	return 0;
}
