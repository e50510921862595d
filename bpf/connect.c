// SPDX-License-Identifier: GPL-2.0
/*
 * Outbound TCP connects, IPv4 and IPv6, with their outcome.
 *
 * Identity is taken where the caller is the current task: sock_ops'
 * TCP_CONNECT callback runs inside connect(2), as the SYN is built, and
 * sends it with the addresses in a start record. The outcome arrives later,
 * in softirq context, where the current task is whoever happened to be
 * running: sock_ops sends it in a small record of its own, with the socket
 * cookie, and user space joins the two. ACTIVE_ESTABLISHED reports success,
 * and the STATE callback (switched on per socket at TCP_CONNECT, which also
 * marks the socket as tracked) a socket that leaves the handshake otherwise,
 * with sk_err telling refused from timed out from unreachable. The ring
 * buffer keeps the order in which records were reserved, so a start always
 * comes before its outcome. No hash map holds the connect on the way: a
 * hash insert, lookup and delete per connect cost more than both records.
 *
 * cgroup/connect4 and connect6, which see every TCP connect(2) first, as
 * the caller on every kernel, arm a per-thread record of the caller and the
 * destination: TCP_CONNECT, inside the same connect(2), takes the caller
 * from there for its start record (Linux 5.15 and 6.1 do not let sock_ops
 * read the current task) and disarms it. A connect that fails inside the
 * syscall, before any SYN is sent (no route, no free port, a local policy),
 * leaves its record armed, and is reported when the thread releases that
 * socket (cgroup/sock_release), connects again, or exits. The kernel keeps
 * no error for such a failure; only the syscall-exit tracepoint sees it,
 * and that tracepoint is opt-in (syscall_errors): while any syscall
 * tracepoint is attached, every syscall of every process on the node takes
 * the kernel's slower path. With it, the failure is reported at the
 * syscall's exit, with its error.
 *
 * cgroup_skb/egress copies a tracked connection's first data when it is a
 * TLS ClientHello, also when it spans segments, and cgroup_skb/ingress then
 * the server's first bytes (the ServerHello). Only a connection that sent a
 * ClientHello gets an entry, in a second map (an LRU); user space gives its
 * records the caller of the connect with the same cookie. Which packets are
 * worth a look the socket itself tells (the flag TCP_CONNECT sets, and its
 * RFC 4898 counters), so other traffic costs no lookup. The same ingress
 * program copies DNS answers (source port 53, UDP and TCP).
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
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6

/* include/net/tcp_states.h */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7

#define EINPROGRESS 115
#define TASK_COMM_LEN 16
#define LOGIN_UID_UNSET 0xffffffff /* AUDIT_UID_UNSET */

enum kind {
	KIND_CONNECT = 1,    /* a connect that failed inside connect(2), before a SYN: the whole event */
	KIND_EXIT = 2,       /* a process ended: user space forgets what it cached of it */
	KIND_TLS_CLIENT = 3, /* bytes of the client's first flight (struct payload_event) */
	KIND_TLS_SERVER = 4, /* the server's first bytes (struct payload_event) */
	KIND_DNS = 5,        /* a DNS answer's payload (struct payload_event) */
	KIND_EXEC = 6,       /* a process ran execve: its path and arguments (struct payload_event) */
	KIND_CONNECT_START = 7, /* a tracked connect's SYN is going out: caller and addresses; its outcome follows */
	KIND_OUTCOME = 8,       /* the outcome of a tracked connect (a struct header) */
	/* the first data of an established connect to a TLS port was no TLS
	 * handshake (a struct header, outcome 0) */
	KIND_PLAINTEXT = 9,
	KIND_MAX, /* the number of kinds; keep last */
};

/* What a connection that sent a ClientHello waits for. */
enum phase {
	PHASE_CLIENT_HELLO = 1, /* the rest of a ClientHello that spans segments */
	PHASE_SERVER_HELLO = 2, /* the server's first payload */
};

/* Where the kernel knew the outcome; user space maps it to a name. */
enum outcome {
	OUTCOME_ESTABLISHED = 1,
	/* closed before established: the reason is in err (sk_err, 0 when the caller closed) */
	OUTCOME_CLOSED = 2,
	/* connect(2) failed before a SYN was sent: err is its error when the
	 * syscall-exit tracepoint saw it, else 0 */
	OUTCOME_UNSENT = 3,
};

enum stat {
	STAT_RINGBUF_FULL = 0, /* bpf_ringbuf_reserve failed: an event lost */
	STAT_PENDING_FULL = 1, /* no room for a thread's record: a failure before the SYN would go unseen, and
				* where sock_ops cannot read the current task, so would the caller */
	STAT_EXIT_LOST = 2,    /* no room for a process exit: its cache entry ages out instead */
	STAT_PAYLOAD_LOST = 3, /* a TLS or DNS payload record lost: the ring buffer was full */
	STAT_EXEC_LOST = 4,    /* an execve not reported: a short-lived process may go without exe */
	/* a tracked connect's outcome lost: the ring buffer was full. Its start
	 * record, already read, waits in user space for nothing: counted here
	 * once, it is not counted again when it expires. */
	STAT_OUTCOME_LOST = 5,
	/* a plaintext record lost: the connect goes without its finding */
	STAT_PLAINTEXT_LOST = 6,
	STAT_MAX = 7,
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
	__u32 login_uid; /* the audit login uid; LOGIN_UID_UNSET when unset, or unknown to the kernel */
	__u8 tty;        /* the process has a controlling terminal */
	__u8 _pad[3];
};

/*
 * The start of every ring-buffer record: what kind it is, first, and the
 * fields most kinds carry. A KIND_OUTCOME or KIND_PLAINTEXT record is a
 * header alone.
 */
struct header {
	__u8 kind;     /* enum kind */
	__u8 outcome;  /* enum outcome: KIND_CONNECT, KIND_OUTCOME */
	__u16 family;  /* AF_INET or AF_INET6, for records with addresses */
	__s32 err;     /* KIND_CONNECT, KIND_OUTCOME: the error (OUTCOME_CLOSED: sk_err, 0 when the caller closed) */
	__u64 cookie;  /* socket cookie: joins every record of one connection */
	__u64 ts_ns;   /* when it happened, ns since boot */
};

/* A header, the caller and the addresses: KIND_CONNECT, KIND_CONNECT_START,
 * KIND_EXIT, and the start of every payload record. */
struct event {
	struct header h;
	struct caller caller;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host byte order */
	__u16 dport; /* host byte order */
	__u32 aux;   /* by kind: for KIND_EXEC, the parent's tgid */
};

/* Bytes copied from one packet at most, and of one ClientHello in all. */
#define PAYLOAD_MAX 4096
/* Of the server's first flight only the ServerHello is read: about 1.2 KiB
 * with a post-quantum key share. */
#define SERVER_HELLO_MAX 2048

/*
 * A struct event, then up to PAYLOAD_MAX bytes of payload. The ring buffer
 * record is only as long as the bytes copied.
 */
struct payload_event {
	struct event ev;
	__u16 offset; /* of these bytes in the flight: a ClientHello spanning segments comes in pieces */
	__u16 len;    /* bytes in data */
	__u16 want;   /* bytes of the flight wanted in all (the TLS record, capped) */
	__u8 more;    /* the TLS record is longer than what will be copied */
	__u8 proto;   /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 data[PAYLOAD_MAX];
};

/* A connection whose ClientHello is being read, from its first segment to
 * the server's answer. */
struct hello {
	__u32 next_seq; /* TCP sequence number of the next ClientHello byte */
	__u16 want;
	__u16 got;
	__u8 phase;
	__u8 _pad[3];
};

/* Referenced so that their BTF, and so their Go bindings, exist. */
const struct event *unused_event __attribute__((unused));
const struct payload_event *unused_payload_event __attribute__((unused));
const struct header *unused_header __attribute__((unused));
const enum outcome *unused_outcome __attribute__((unused));
const enum kind *unused_kind __attribute__((unused));
const enum stat *unused_stat __attribute__((unused));

struct dest {
	__u8 daddr[16];
	__u16 dport; /* host byte order */
	__u16 family;
	__u32 _pad;
};

/*
 * The connect(2) a thread made last, armed from connect4/6 until
 * TCP_CONNECT disarms it. The caller is taken once, there, for the start
 * record too: both run inside the same connect(2). A thread that connects
 * again reuses its record, so the common path allocates nothing.
 */
struct pending {
	struct caller caller;
	struct dest dest;
	__u64 cookie;
	__u8 armed;
	__u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* resized by the loader */
} events SEC(".maps");

/*
 * Connections whose ClientHello is being read, by socket cookie, until the
 * server answers or the connection closes. An LRU, as what an eviction
 * loses is one connection's ServerHello or the end of its ClientHello, not
 * an event.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	/* Per-CPU LRU lists: an insert takes no lock shared across CPUs. */
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, 32768); /* resized by the loader */
	__type(key, __u64);
	__type(value, struct hello);
} hellos SEC(".maps");

/*
 * Where a payload record is put together before it goes to the ring: one
 * slot per nesting level, as a softirq can run ingress on a CPU whose
 * egress or exec program it interrupted.
 */
#define SCRATCH_SLOTS 3
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCRATCH_SLOTS);
	__type(key, __u32);
	__type(value, struct payload_event);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scratch_depth SEC(".maps");

/*
 * The per-thread records: in task storage where every program that reads
 * them may use it (Linux 6.x; not 5.15 or 6.1), else in a hash by thread
 * id, whose entry goes when its thread exits. The loader shrinks the one
 * not used to a single entry.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pending);
} pendings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	/* Threads alive that have connected: about 10 MiB, preallocated, as
	 * 5.15's tracepoints may not use a hash that allocates. */
	__uint(max_entries, 65536); /* resized by the loader */
	__type(key, __u32);
	__type(value, struct pending);
} thread_pendings SEC(".maps");

/*
 * Sockets whose start record was lost (and counted), by cookie: another
 * program (a second callscope, in a rolling update) may still switch on
 * the STATE callback that brings their outcome, whose loss then is not
 * this instance's to count. Looked up only when an outcome is lost.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} lost_starts SEC(".maps");

/* The ports where TLS is expected, one bit each, set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} tls_ports SEC(".maps");

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

/*
 * What the loader found the kernel to allow, and attached. A program whose
 * feature is off loads as a no-op: the verifier skips what a constant
 * makes unreachable, helpers the kernel lacks included.
 */
/* connect4/6 arm the per-thread records. */
volatile const __u8 connect_hook = 1;
/* The per-thread records are in task storage, not thread_pendings. */
volatile const __u8 task_storage = 1;
/* sock_release reports a socket whose connect(2) sent no SYN. */
volatile const __u8 release_hook = 1;
/* sock_ops may read the current task (Linux 6.x; not 5.15 or 6.1): a
 * connect that connect4/6 did not see still gets its caller. */
volatile const __u8 sockops_current = 1;

/* Whether the syscall-exit tracepoint is attached, to report failures
 * before the SYN at once, with their error. */
volatile const __u8 syscall_errors = 0;

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
static __always_inline int emit_start(struct bpf_sock_ops *skops, struct bpf_sock *sk, __u64 cookie,
				      struct pending *p)
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

/*
 * The last thread of a process is exiting: tell user space, so that its
 * cache of process facts does not keep the dead. Only the tgid and start
 * time are sent; they are what the cache is keyed by.
 */
SEC("tracepoint/sched/sched_process_exit")
int process_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	/*
	 * do_exit() decrements signal->live before this tracepoint fires. Read
	 * first: the later it is read, the likelier two last threads exiting
	 * at once both see 0 (harmless: user space forgets a process twice).
	 */
	int live = BPF_CORE_READ(task, signal, live.counter);

	/* Every thread comes here as it exits: its last connect(2), if it
	 * failed before its SYN, is reported, and its record goes. */
	if (connect_hook) {
		struct pending *p = thread_pending(0);
		if (p && p->armed && release_hook)
			report_unsent(p, 0);
		if (p && !task_storage) {
			__u32 tid = (__u32)bpf_get_current_pid_tgid();
			bpf_map_delete_elem(&thread_pendings, &tid);
		}
	}
	if (live != 0)
		return 0;

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_EXIT_LOST);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->h.kind = KIND_EXIT;
	e->caller.tgid = bpf_get_current_pid_tgid() >> 32;
	e->caller.task_start = BPF_CORE_READ(task, group_leader, start_boottime);
	e->h.ts_ns = bpf_ktime_get_boot_ns();
	submit(e);
	return 0;
}

/* Packet parsing for the cgroup_skb programs: their data starts at L3. */
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define DNS_PORT 53

struct packet {
	__u32 payload; /* offset of the transport payload */
	__u32 len;     /* its length */
	__u32 seq;     /* TCP sequence number of its first byte */
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 proto;
	__u8 _pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline int parse_packet(struct __sk_buff *skb, struct packet *p)
{
	__u32 l4;
	__builtin_memset(p, 0, sizeof(*p));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 h[20];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			return -1;
		/* Only a datagram's first fragment holds its transport header. */
		if (((h[6] & 0x1f) | h[7]) != 0)
			return -1;
		l4 = (h[0] & 0xf) * 4;
		p->proto = h[9];
		p->family = AF_INET;
		__builtin_memcpy(p->saddr, &h[12], 4);
		__builtin_memcpy(p->daddr, &h[16], 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 h[40];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			return -1;
		l4 = 40; /* extension headers are not followed: rare on TCP and DNS */
		p->proto = h[6];
		p->family = AF_INET6;
		__builtin_memcpy(p->saddr, &h[8], 16);
		__builtin_memcpy(p->daddr, &h[24], 16);
	} else {
		return -1;
	}
	if (l4 < 20)
		return -1;
	if (p->proto == IPPROTO_TCP) {
		__u8 t[14];
		if (bpf_skb_load_bytes(skb, l4, t, sizeof(t)))
			return -1;
		p->sport = (t[0] << 8) | t[1];
		p->dport = (t[2] << 8) | t[3];
		p->seq = ((__u32)t[4] << 24) | ((__u32)t[5] << 16) | ((__u32)t[6] << 8) | t[7];
		p->payload = l4 + (t[12] >> 4) * 4;
	} else if (p->proto == IPPROTO_UDP) {
		__u8 u[4];
		if (bpf_skb_load_bytes(skb, l4, u, sizeof(u)))
			return -1;
		p->sport = (u[0] << 8) | u[1];
		p->dport = (u[2] << 8) | u[3];
		p->payload = l4 + 8;
	} else {
		return -1;
	}
	p->len = skb->len > p->payload ? skb->len - p->payload : 0;
	return 0;
}

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

/* The loader sets a missing weak kfunc's address to 0 (libbpf's macro, which
 * Debian's libbpf-dev may predate). */
#ifndef bpf_ksym_exists
#define bpf_ksym_exists(sym) (!!(sym))
#endif

/*
 * Kernels without bpf_cast_to_kern_ctx (before 6.3) give cgroup_skb no way
 * to a UDP socket's network namespace: sock_create keeps it on each UDP
 * socket as the socket is made, when the current task's namespace is the
 * socket's.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} udp_netns SEC(".maps");

/* sock_create is attached: udp_netns is kept. */
volatile const __u8 udp_netns_hook = 0;

SEC("cgroup/sock_create")
int sock_create(struct bpf_sock *sk)
{
	if (!udp_netns_hook || sk->type != SOCK_DGRAM || sk->protocol != IPPROTO_UDP)
		return 1;
	__u32 *ns = bpf_sk_storage_get(&udp_netns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (ns)
		*ns = bpf_get_current_task_btf()->nsproxy->net_ns->ns.inum;
	return 1;
}

/*
 * skb_netns is the network namespace of the socket receiving skb: the
 * namespace whose resolver asked. 0 when it cannot be told (a UDP socket
 * made before sock_create was attached, on a kernel before 6.3): names are
 * then shared across namespaces.
 */
static __always_inline __u32 skb_netns(struct __sk_buff *skb)
{
	if (bpf_ksym_exists(bpf_cast_to_kern_ctx)) {
		struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
		return BPF_CORE_READ(kskb, sk, __sk_common.skc_net.net, ns.inum);
	}
	struct bpf_sock *sk = skb->sk;
	if (!udp_netns_hook || !sk)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (tp)
		return ((struct sock *)tp)->__sk_common.skc_net.net->ns.inum;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 0;
	__u32 *ns = bpf_sk_storage_get(&udp_netns, sk, 0, 0);
	return ns ? *ns : 0;
}

/*
 * emit_payload copies n bytes of the packet from offset from into a payload
 * record. The record goes through a per-CPU scratch buffer so that the ring
 * holds only the bytes copied, not PAYLOAD_MAX for every record.
 */
static __always_inline struct payload_event *scratch_enter(void)
{
	__u32 zero = 0;
	__u32 *depth = bpf_map_lookup_elem(&scratch_depth, &zero);
	if (!depth)
		return NULL;
	__u32 slot = *depth;
	if (slot >= SCRATCH_SLOTS) {
		count(STAT_PAYLOAD_LOST);
		return NULL;
	}
	struct payload_event *e = bpf_map_lookup_elem(&scratch, &slot);
	if (e)
		*depth = slot + 1;
	return e;
}

static __always_inline void scratch_exit(void)
{
	__u32 zero = 0;
	__u32 *depth = bpf_map_lookup_elem(&scratch_depth, &zero);
	if (depth && *depth > 0)
		*depth -= 1;
}

static __always_inline void fill_payload(struct __sk_buff *skb, struct packet *p, struct payload_event *e, __u8 kind,
					 __u64 cookie, __u32 n, __u16 offset, __u16 want, __u8 more);

static __always_inline void emit_payload(struct __sk_buff *skb, struct packet *p, __u8 kind, __u64 cookie, __u32 n,
					 __u16 offset, __u16 want, __u8 more)
{
	if (n > PAYLOAD_MAX)
		n = PAYLOAD_MAX;
	if (n == 0)
		return;
	struct payload_event *e = scratch_enter();
	if (!e)
		return;
	fill_payload(skb, p, e, kind, cookie, n, offset, want, more);
	scratch_exit();
}

static __always_inline void fill_payload(struct __sk_buff *skb, struct packet *p, struct payload_event *e, __u8 kind,
					 __u64 cookie, __u32 n, __u16 offset, __u16 want, __u8 more)
{
	/*
	 * Restate 1 <= n <= PAYLOAD_MAX in a form the verifier follows: clang
	 * tests a copy of n above, so the bound would not reach the call.
	 */
	__u64 len = n - 1;
	asm volatile("%[len] &= %[mask]" : [len] "+r"(len) : [mask] "i"(PAYLOAD_MAX - 1));
	len += 1;
	if (bpf_skb_load_bytes(skb, p->payload, e->data, len))
		return;

	/*
	 * Of the caller, only the socket's cgroup, and for a DNS answer the
	 * namespace that asked: user space gives a TLS record the caller of
	 * the connect with the same cookie.
	 */
	__builtin_memset(&e->ev.caller, 0, sizeof(e->ev.caller));
	e->ev.caller.cgroup_id = bpf_skb_cgroup_id(skb);
	if (kind == KIND_DNS)
		e->ev.caller.netns = skb_netns(skb);
	set_header(&e->ev.h, kind, cookie, bpf_ktime_get_boot_ns());
	e->ev.h.family = p->family;
	e->ev.sport = p->sport;
	e->ev.dport = p->dport;
	__builtin_memcpy(e->ev.saddr, p->saddr, sizeof(e->ev.saddr));
	__builtin_memcpy(e->ev.daddr, p->daddr, sizeof(e->ev.daddr));
	e->ev.aux = 0;
	e->offset = offset;
	e->len = len;
	e->want = want;
	e->more = more;
	e->proto = p->proto;

	if (bpf_ringbuf_output(&events, e, sizeof(*e) - PAYLOAD_MAX + len, wakeup_flags()))
		count(STAT_PAYLOAD_LOST);
}

/*
 * tracked reports whether sock_ops tracks the TCP socket tp: an outbound
 * connect, on which TCP_CONNECT switched the STATE callback on. The flag is
 * read from the socket itself, so that the packets of every other socket
 * (accepted ones, listeners) cost no hash lookup.
 */
static __always_inline int tracked(struct tcp_sock *tp)
{
	return tp->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG;
}

static __always_inline int tls_port(__u16 port)
{
	__u32 key = port >> 6;
	__u64 *bits = bpf_map_lookup_elem(&tls_ports, &key);
	return bits && (*bits >> (port & 63)) & 1;
}

/* report_plaintext says a tracked connection's first data, to a port
 * where TLS is expected, was no TLS handshake. */
static __always_inline void report_plaintext(__u64 cookie)
{
	struct header *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_PLAINTEXT_LOST);
		return;
	}
	set_header(e, KIND_PLAINTEXT, cookie, bpf_ktime_get_boot_ns());
	submit(e);
}

/*
 * Data segments of a connection's first flights worth a look: a ClientHello
 * of PAYLOAD_MAX bytes spans 8 at the smallest MSS, and retransmissions
 * count too. A hello not complete by then never will be.
 */
#define FIRST_FLIGHT_SEGS 64

SEC("cgroup_skb/egress")
int egress(struct __sk_buff *skb)
{
	/*
	 * The fast path of every packet but a tracked connection's first data
	 * segments: the socket's own counters, no lookup. data_segs_out already
	 * counts this segment when it carries data; 0 means a SYN or a bare ACK.
	 */
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || !tracked(tp))
		return 1;
	__u32 segs = tp->data_segs_out;
	if (segs == 0 || segs > FIRST_FLIGHT_SEGS)
		return 1;

	__u64 cookie = bpf_get_socket_cookie(skb);
	struct hello *h = bpf_map_lookup_elem(&hellos, &cookie);
	if (h && h->phase != PHASE_CLIENT_HELLO)
		return 1;
	/* Only the first data can start a ClientHello: bytes_sent counts
	 * this segment's, and those of every segment sent before it. */
	if (!h && tp->bytes_sent > 0xffff)
		return 1;

	struct packet p;
	if (parse_packet(skb, &p) || p.proto != IPPROTO_TCP || p.len == 0)
		return 1;
	if (!h) {
		if (tp->bytes_sent != p.len)
			return 1;
		__u8 r[6];
		/* A TLS handshake record (type 22, version 3.x, its length)
		 * holding a ClientHello (handshake type 1). */
		if (p.len < sizeof(r) || bpf_skb_load_bytes(skb, p.payload, r, sizeof(r)) || r[0] != 0x16 || r[1] != 3 ||
		    r[5] != 1) {
			if (tls_port(p.dport))
				report_plaintext(cookie);
			return 1;
		}
		__u32 want = 5 + (((__u32)r[3] << 8) | r[4]);
		__u8 more = 0;
		if (want > PAYLOAD_MAX) {
			want = PAYLOAD_MAX;
			more = 1;
		}
		__u32 n = p.len < want ? p.len : want;
		emit_payload(skb, &p, KIND_TLS_CLIENT, cookie, n, 0, want, more);
		struct hello next = {.phase = PHASE_SERVER_HELLO};
		if (n < want) {
			next.phase = PHASE_CLIENT_HELLO;
			next.next_seq = p.seq + n;
			next.want = want;
			next.got = n;
		}
		bpf_map_update_elem(&hellos, &cookie, &next, BPF_ANY);
		return 1;
	}

	/* PHASE_CLIENT_HELLO: the next segment of a ClientHello. */
	if (p.seq != h->next_seq) {
		__s32 seen = (__s32)(h->next_seq - p.seq);
		if (seen <= 0) {
			/* A gap: user space reports the hello as truncated. */
			h->phase = PHASE_SERVER_HELLO;
			return 1;
		}
		if ((__u32)seen >= p.len)
			return 1; /* a retransmission of what was copied */
		/* A retransmission merged with new bytes: take the new ones. */
		p.payload += seen;
		p.len -= seen;
	}
	__u32 n = h->want > h->got ? h->want - h->got : 0;
	if (n > p.len)
		n = p.len;
	emit_payload(skb, &p, KIND_TLS_CLIENT, cookie, n, h->got, h->want, 0);
	h->got += n;
	h->next_seq += n;
	if (h->got >= h->want)
		h->phase = PHASE_SERVER_HELLO;
	return 1;
}

SEC("cgroup_skb/ingress")
int ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	struct packet p;
	__u64 cookie = 0;
	/* The peer's port, in network order in the upper half; 0 when not connected. */
	__u32 rport = skb->remote_port;
	__u32 dns = (__u32)bpf_htons(DNS_PORT) << 16;

	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		/*
		 * Only a tracked connection's first data segment in can be the
		 * server's first payload. The socket's counters say so without a
		 * lookup: segs_in and data_segs_in do not count this segment yet.
		 */
		if (tracked(tp) && ((struct sock *)tp)->__sk_common.skc_state == TCP_ESTABLISHED &&
		    tp->data_segs_in == 0 && tp->segs_in < FIRST_FLIGHT_SEGS) {
			cookie = bpf_get_socket_cookie(skb);
			struct hello *h = bpf_map_lookup_elem(&hellos, &cookie);
			if (h) {
				if (parse_packet(skb, &p) || p.proto != IPPROTO_TCP || p.len == 0)
					return 1;
				if (h->phase == PHASE_SERVER_HELLO)
					emit_payload(skb, &p, KIND_TLS_SERVER, cookie,
						     p.len < SERVER_HELLO_MAX ? p.len : SERVER_HELLO_MAX, 0, 0, 0);
				/*
				 * The server has spoken: its hello is read, or it did
				 * before the ClientHello was whole. Either way, done.
				 */
				bpf_map_delete_elem(&hellos, &cookie);
				return 1;
			}
		}
		/* TCP brings DNS answers only to a socket connected to port 53;
		 * a listener's packets are connections, not answers. */
		if (rport != dns)
			return 1;
	} else if (rport != 0 && rport != dns) {
		/* A UDP socket connected elsewhere gets nothing from port 53; an
		 * unconnected one, such as a resolver's, has its packets parsed. */
		return 1;
	}

	if (parse_packet(skb, &p) || p.sport != DNS_PORT || p.len == 0)
		return 1;
	if (!cookie)
		cookie = bpf_get_socket_cookie(skb);
	emit_payload(skb, &p, KIND_DNS, cookie, p.len, 0, 0, 0);
	return 1;
}

/* tracefs: events/sched/sched_process_exec/format */
struct exec_ctx {
	__u64 common;
	__u32 filename; /* __data_loc: offset in the low 16 bits, length in the high */
	__s32 pid;
	__s32 old_pid;
};

#define EXEC_PATH_MAX 256
#define EXEC_ARGS_MAX 1024

/*
 * A process ran execve: send its path and arguments, so that a process
 * gone before user space could read /proc still has an executable and a
 * command line. The record holds the path (NUL-terminated) at data[0] and
 * the arguments at data[EXEC_PATH_MAX]; offset and want give their lengths.
 */
static __always_inline void fill_exec(struct exec_ctx *ctx, struct payload_event *e);

SEC("tracepoint/sched/sched_process_exec")
int process_exec(struct exec_ctx *ctx)
{
	struct payload_event *e = scratch_enter();
	if (!e) {
		count(STAT_EXEC_LOST);
		return 0;
	}
	fill_exec(ctx, e);
	scratch_exit();
	return 0;
}

static __always_inline void fill_exec(struct exec_ctx *ctx, struct payload_event *e)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	__builtin_memset(&e->ev, 0, sizeof(e->ev));
	fill_caller(&e->ev.caller);
	e->ev.h.ts_ns = e->ev.caller.start_ns;
	e->ev.h.kind = KIND_EXEC;
	e->ev.aux = BPF_CORE_READ(task, real_parent, tgid);

	long n = bpf_probe_read_kernel_str(e->data, EXEC_PATH_MAX, (void *)ctx + (ctx->filename & 0xffff));
	e->offset = n > 0 ? n : 0;

	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long end = BPF_CORE_READ(task, mm, arg_end);
	__u64 args = end > start ? end - start : 0;
	e->more = args > EXEC_ARGS_MAX;
	if (args > EXEC_ARGS_MAX)
		args = EXEC_ARGS_MAX;
	__u64 copied = 0;
	if (args > 0) {
		/* Restated for the verifier, as in emit_payload. */
		__u64 len = args - 1;
		asm volatile("%[len] &= %[mask]" : [len] "+r"(len) : [mask] "i"(EXEC_ARGS_MAX - 1));
		len += 1;
		if (bpf_probe_read_user(e->data + EXEC_PATH_MAX, len, (void *)start) == 0)
			copied = len;
	}
	e->want = copied;
	e->len = EXEC_PATH_MAX + copied;
	e->proto = 0;

	/* copied is at most EXEC_ARGS_MAX: the record fits the scratch slot. */
	if (bpf_ringbuf_output(&events, e, sizeof(*e) - PAYLOAD_MAX + EXEC_PATH_MAX + copied, wakeup_flags()))
		count(STAT_EXEC_LOST);
}
