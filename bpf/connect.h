/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The connect path: cgroup/connect4 and connect6 arm the calling thread's
 * record, sock_ops reports a connect's start (with that caller) and its
 * outcome, and cgroup/sock_release and the syscall-exit tracepoint report
 * a connect that failed before its SYN.
 */
#ifndef CALLSCOPE_CONNECT
#define CALLSCOPE_CONNECT

static __always_inline void fill_dest(struct dest *d, struct bpf_sock_addr *ctx, __u16 family)
{
	d->family = family;
	d->dport = bpf_ntohs(ctx->user_port);
	d->_pad = 0;
	__builtin_memset(d->daddr, 0, sizeof(d->daddr));
	if (family == AF_INET) {
		__builtin_memcpy(d->daddr, &ctx->user_ip4, 4);
	} else {
		/* the context allows only 4-byte loads of user_ip6 */
		__u32 *a = (__u32 *)d->daddr;
		a[0] = ctx->user_ip6[0];
		a[1] = ctx->user_ip6[1];
		a[2] = ctx->user_ip6[2];
		a[3] = ctx->user_ip6[3];
	}
}

/*
 * thread_pending returns the current thread's record, made if create is
 * set and there is none.
 */
static __always_inline struct pending *thread_pending(int create)
{
	struct task_struct *task = bpf_get_current_task_btf();
	if (task_storage)
		return bpf_task_storage_get(&pendings, task, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	/* Not bpf_get_current_pid_tgid, which 5.15's and 6.1's sock_ops may
	 * not call. */
	__u32 tid = task->pid;
	struct pending *p = bpf_map_lookup_elem(&thread_pendings, &tid);
	if (p || !create)
		return p;
	struct pending zero = {};
	bpf_map_update_elem(&thread_pendings, &tid, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&thread_pendings, &tid);
}

/*
 * report_unsent sends an armed record's connect, which failed before its
 * SYN, with err (0 where the kernel kept none), and disarms it.
 */
static __always_inline void report_unsent(struct pending *p, __s32 err)
{
	p->armed = 0;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		return;
	}
	set_header(&e->h, KIND_CONNECT, p->cookie, p->caller.start_ns);
	e->h.outcome = OUTCOME_UNSENT;
	e->h.err = err;
	e->h.family = p->dest.family;
	e->caller = p->caller;
	e->sport = 0;
	e->dport = p->dest.dport;
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, p->dest.daddr, sizeof(e->daddr));
	e->aux = 0;
	submit(e);
}

static __always_inline int on_connect(struct bpf_sock_addr *ctx, __u16 family)
{
	if (!connect_hook || ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;

	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 1;
	/*
	 * Only an attempt that may send a SYN: a connect(2) on a socket
	 * already connecting (a caller polling its nonblocking connect, which
	 * then gets the first attempt's error) sends nothing new.
	 */
	struct sock *ks = (struct sock *)tp;
	if (ks->__sk_common.skc_state != TCP_CLOSE || ks->sk_socket->state != SS_UNCONNECTED)
		return 1;

	struct pending *p = thread_pending(1);
	if (!p) {
		count(STAT_PENDING_FULL);
		return 1;
	}
	/* Still armed: this thread's last connect(2) failed before its SYN. */
	if (release_hook && p->armed)
		report_unsent(p, 0);
	p->cookie = bpf_get_socket_cookie(ctx);
	fill_caller(&p->caller);
	p->caller.netns = ks->__sk_common.skc_net.net->ns.inum;
	fill_dest(&p->dest, ctx, family);
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

/*
 * emit_start sends a connect's caller and addresses as its SYN goes out:
 * the caller connect4/6 kept on the socket (p), else the current task's
 * where sock_ops may read it.
 */
static __always_inline int emit_start(struct bpf_sock_ops *skops, struct bpf_sock *sk, __u64 cookie, struct pending *p)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		return -1;
	}
	if (p) {
		e->caller = p->caller;
	} else if (sockops_current) {
		fill_caller(&e->caller);
		e->caller.netns = sock_netns(sk);
	} else {
		/* Unknown, and left out: connect4/6 found no room for the
		 * thread's record (counted), or the connect began before they
		 * were attached. */
		__builtin_memset(&e->caller, 0, sizeof(e->caller));
		e->caller.netns = sock_netns(sk);
		e->caller.start_ns = bpf_ktime_get_boot_ns();
		e->caller.login_uid = LOGIN_UID_UNSET;
	}
	set_header(&e->h, KIND_CONNECT_START, cookie, e->caller.start_ns);
	e->h.family = skops->family;
	e->sport = skops->local_port;		  /* host byte order already */
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
	e->aux = 0;
	submit(e);
	return 0;
}

static __always_inline int sock_err(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	return ((struct sock *)tp)->sk_err;
}

/*
 * report sends the outcome of a tracked connect. The STATE callback flag is
 * left alone: another program (another callscope during a rolling update,
 * say) may still need it for the same socket, and it marks the socket as
 * tracked for the cgroup_skb programs.
 */
static __always_inline void report(struct bpf_sock_ops *skops, __u8 outcome, __s32 err)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct header *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		/* Of a connect whose start this instance lost and counted, the
		 * outcome (brought by another program's flag) is no new loss. */
		if (!bpf_map_lookup_elem(&lost_starts, &cookie))
			count(STAT_OUTCOME_LOST);
		return;
	}
	set_header(e, KIND_OUTCOME, cookie, bpf_ktime_get_boot_ns());
	e->outcome = outcome;
	e->err = err;
	submit(e);
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		/* Inside connect(2), as the caller: the SYN goes out. */
		struct bpf_sock *sk = skops->sk;
		if (!sk)
			return 1;
		__u64 cookie = bpf_get_socket_cookie(skops);
		struct pending *p = NULL;
		if (connect_hook) {
			p = thread_pending(0);
			/* The SYN goes out: nothing is left to report. */
			if (p && p->armed && p->cookie == cookie)
				p->armed = 0;
			else
				p = NULL;
		}
		if (emit_start(skops, sk, cookie, p)) {
			/* Not tracked: its outcome would have nothing to join. */
			__u8 one = 1;
			bpf_map_update_elem(&lost_starts, &cookie, &one, BPF_ANY);
			return 1;
		}
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	}
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: /* simultaneous open of an outbound socket */
		/* Only a socket TCP_CONNECT tracked has the flag: accepted ones
		 * are not reported. */
		if (skops->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG)
			report(skops, OUTCOME_ESTABLISHED, 0);
		return 1;
	case BPF_SOCK_OPS_STATE_CB: {
		__u32 from = skops->args[0], to = skops->args[1];
		if (from == TCP_SYN_SENT || from == TCP_SYN_RECV) {
			/* Leaving the handshake for anything but ESTABLISHED (which
			 * the callback above reports) or a simultaneous open: the
			 * connect closed before it was established. */
			if (to != TCP_ESTABLISHED && to != TCP_SYN_RECV)
				report(skops, OUTCOME_CLOSED, sock_err(skops));
		} else if (to == TCP_CLOSE && skops->data_segs_out > 0 && skops->data_segs_in == 0) {
			/* A connection that sent data and got none closed: forget
			 * its hello, if it was one. Once the server has spoken,
			 * ingress has already forgotten it. */
			__u64 cookie = bpf_get_socket_cookie(skops);
			bpf_map_delete_elem(&hellos, &cookie);
		}
		return 1;
	}
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
	if (!syscall_errors || ctx->ret == 0 || ctx->ret == -EINPROGRESS)
		return 0;
	/* Still armed: this connect(2) failed before its SYN. One that sent
	 * it has its outcome reported by sock_ops. */
	struct pending *p = thread_pending(0);
	if (p && p->armed)
		report_unsent(p, (__s32)-ctx->ret);
	return 0;
}

/*
 * A socket is released: if it is the one whose connect(2) the releasing
 * thread left armed, that connect failed before a SYN was sent.
 */
SEC("cgroup/sock_release")
int sock_release(struct bpf_sock *sk)
{
	if (!release_hook || sk->type != SOCK_STREAM || sk->protocol != IPPROTO_TCP)
		return 1;
	struct pending *p = thread_pending(0);
	if (p && p->armed && p->cookie == bpf_get_socket_cookie(sk))
		report_unsent(p, 0);
	return 1;
}

#endif
