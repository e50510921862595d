/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel constants, and what every program uses: record headers, loss
 * counts, ring-buffer submission, and the caller of the current task.
 */
#ifndef CALLSCOPE_COMMON
#define CALLSCOPE_COMMON

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6

/* include/net/tcp_states.h */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7

#define EINPROGRESS 115

static __always_inline void set_header(struct header *h, __u8 kind, __u64 cookie, __u64 ts_ns)
{
	h->kind = kind;
	h->outcome = 0;
	h->family = 0;
	h->err = 0;
	h->cookie = cookie;
	h->ts_ns = ts_ns;
}

static __always_inline void count(enum stat s)
{
	__u32 key = s;
	__u64 *v = bpf_map_lookup_elem(&stats, &key);
	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline __u64 wakeup_flags(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void submit(void *e)
{
	bpf_ringbuf_submit(e, wakeup_flags());
}

static __always_inline void fill_caller(struct caller *c)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	/*
	 * The credentials, start time and comm are direct loads through the
	 * task's BTF pointer instead of helper calls. The ids are the kernel's
	 * own, those of the initial user namespace, as bpf_get_current_uid_gid
	 * gives them.
	 */
	struct task_struct *task = bpf_get_current_task_btf();
	const struct cred *cred = task->cred;

	c->tgid = pid_tgid >> 32;
	c->tid = (__u32)pid_tgid;
	c->uid = cred->uid.val;
	c->gid = cred->gid.val;
	c->cgroup_id = bpf_get_current_cgroup_id();
	c->task_start = task->group_leader->start_boottime;
	c->start_ns = bpf_ktime_get_boot_ns();
	c->netns = 0;
	__builtin_memcpy(c->comm, task->comm, sizeof(c->comm));
	/* A person's session: a controlling terminal, or a login uid that
	 * the session's login set (kernels without CONFIG_AUDIT have none). */
	c->tty = task->signal->tty != 0;
	c->login_uid = LOGIN_UID_UNSET;
	if (bpf_core_field_exists(task->loginuid))
		c->login_uid = task->loginuid.val;
	c->_pad[0] = c->_pad[1] = c->_pad[2] = 0;
}

static __always_inline __u32 sock_netns(struct bpf_sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	return ((struct sock *)tp)->__sk_common.skc_net.net->ns.inum;
}

#endif
